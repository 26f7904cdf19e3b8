"""`dnsd check` and the `dnsd_delegation_ok` gauge against a loopback delegation (tests/check_hierarchy.py).

Knot serves the root and `test.`; `test.` delegates one child per case, each written the way the case
needs (consistent, DS missing, DS of another key, NS and glue wrong, a DS for a zone dnsd does not
sign, no delegation at all). Keys are made by `dnsd keygen` itself, and the DS it printed is what the
check must ask for. The real `python -m dnsd check` runs as a subprocess and its exit status and
output are asserted; the gauge is read from a running dnsd's /metrics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from dnsd import check
from dnsd.config import from_mapping
from dnsd.dnssec import keys as dnssec_keys
from tests.check_hierarchy import DEEP, HOSTILE, ROOT, SILENT, TLD, TLD2, CheckHierarchy
from tests.dnsd_process import EXAMPLE_MANIFESTS, REPO, DnsdProcess
from tests.hierarchy import MissingTool, free_loopback

GLUE = "127.55.0.10"
OTHER_GLUE = "127.55.0.11"


def _port53_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("the check hierarchy binds port 53 on loopback: run the tests as root")
    for address in (ROOT, TLD, TLD2, DEEP):
        if not free_loopback(address):
            pytest.skip(f"port 53 on {address} cannot be bound")


@dataclass
class Case:
    zone: str
    keys: Path | None  # --dnssec-keys, None: not signed
    ds: str  # the DS line `dnsd keygen` printed for the key in `keys`


def _keygen(zone: str, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "dnsd", "keygen", zone, "--dir", str(directory)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()[0]


@pytest.fixture(scope="module")
def delegation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CheckHierarchy, dict[str, Case]]]:
    _port53_or_skip()
    base = tmp_path_factory.mktemp("check-keys")
    cases: dict[str, Case] = {}
    for name in ("good", "nods", "wrongds", "timed", "split"):
        zone = f"{name}.test"
        cases[name] = Case(zone, base / name, _keygen(zone, base / name))
    other = _keygen("wrongds.test", base / "elsewhere")  # a key dnsd does not have
    # good.test: a successor KSK published now but active only in ten days (a pre-published rollover):
    # the parent must not need its DS yet
    successor = dnssec_keys.generate("timed.test")
    successor.activate = int(time.time()) + 10 * 86400
    dnssec_keys.write(successor, base / "timed")
    cases["unsigned"] = Case("unsigned.test", None, "")
    cases["badns"] = Case("badns.test", None, "")
    cases["none"] = Case("none.test", None, "")
    # every zone that the gauge test signs, in one key directory
    both = base / "both"
    both.mkdir()
    for name in ("good", "wrongds"):
        for path in (base / name).iterdir():
            (both / path.name).write_bytes(path.read_bytes())
    delegations = ""
    for name in ("good", "nods", "wrongds", "unsigned", "timed"):
        delegations += f"{name} NS ns1.{name}.test.\nns1.{name} A {GLUE}\n"
    delegations += cases["good"].ds + "\n" + cases["timed"].ds + "\n" + other + "\n"
    delegations += "unsigned.test. IN DS 12345 13 2 " + "AB" * 32 + "\n"
    delegations += f"badns NS ns1.badns.test.\nbadns NS ns2.badns.test.\nns1.badns A {OTHER_GLUE}\nns2.badns A {GLUE}\n"
    # split.test: the first server of test. has its DS, the second (a secondary behind) not yet
    delegations += f"split NS ns1.split.test.\nns1.split A {GLUE}\n"
    second = delegations
    delegations += cases["split"].ds + "\n"
    # c.deep.test: consistent on the one live server of deep.test., whose other server is down
    cases["deep"] = Case("c.deep.test", None, "")
    hierarchy = CheckHierarchy(delegations, second, deep=f"c NS ns1.c.deep.test.\nns1.c A {GLUE}\n",
                               mid=f"c NS ns1.c.mid.deep.test.\nns1.c A {GLUE}\n")
    cases["mid"] = Case("c.mid.deep.test", None, "")
    try:
        hierarchy.start()
    except MissingTool as exc:
        pytest.skip(str(exc))
    try:
        yield hierarchy, cases
    finally:
        hierarchy.stop()


def _flags(hierarchy: CheckHierarchy, case: Case, *extra: str, hints: str | None = None) -> list[str]:
    flags = ["--zone", case.zone, "--source", f"file:{EXAMPLE_MANIFESTS}", "--nameserver",
             f"ns1.{case.zone}={GLUE}", "--publish-networks", "127.55.0.0/16",
             "--root-hints", hints or hierarchy.hints_file()]
    if case.keys is not None:
        flags += ["--dnssec-keys", str(case.keys)]
    return flags + list(extra)


def _check(flags: list[str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "dnsd", "check", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.returncode, done.stdout + done.stderr


def test_consistent_delegation_exits_0_with_ok_lines(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    case = cases["good"]
    status, out = _check(_flags(hierarchy, case))
    assert status == 0, out
    ds = case.ds.split(" IN DS ", 1)[1]
    assert f"; good.test.: parent zone test., servers ns1.nic.test. ({TLD}), ns2.nic.test. ({TLD2})" in out
    assert "OK good.test. NS: parent has ns1.good.test.; dnsd has ns1.good.test." in out
    assert f"OK good.test. glue ns1.good.test.: parent has {GLUE}; dnsd has {GLUE}" in out
    assert f"OK good.test. DS: parent has {ds}; dnsd has {ds}" in out
    assert "MISMATCH" not in out and "MISSING" not in out and "records for the parent" not in out


def test_missing_ds_exits_1_with_the_ds_keygen_printed(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    case = cases["nods"]
    status, out = _check(_flags(hierarchy, case))
    assert status == 1, out
    assert f"MISSING nods.test. DS: parent has none; dnsd has {case.ds.split(' IN DS ', 1)[1]}" in out
    lines = out.splitlines()
    fix = lines[lines.index("; records for the parent zone test. to hold for nods.test.:") + 1:]
    assert fix == [case.ds]  # NS and glue agree: only the DS is to be added, exactly as keygen printed it
    assert "OK nods.test. NS" in out and "OK nods.test. glue" in out


def test_ds_of_another_key_exits_1(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    case = cases["wrongds"]
    status, out = _check(_flags(hierarchy, case))
    assert status == 1, out
    mismatch = [line for line in out.splitlines() if line.startswith("MISMATCH wrongds.test. DS: parent has ")]
    assert len(mismatch) == 1, out
    assert mismatch[0].endswith(f"; dnsd has {case.ds.split(' IN DS ', 1)[1]}")
    assert out.splitlines()[-1] == case.ds


def test_wrong_ns_and_glue_exit_1_with_the_ns_and_glue_to_paste(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    case = cases["badns"]
    status, out = _check(_flags(hierarchy, case))
    assert status == 1, out
    assert "MISMATCH badns.test. NS: parent has ns1.badns.test., ns2.badns.test.; dnsd has ns1.badns.test." in out
    assert f"MISMATCH badns.test. glue ns1.badns.test.: parent has {OTHER_GLUE}; dnsd has {GLUE}" in out
    assert "OK badns.test. DS: parent has none; dnsd has none (the zone is not signed)" in out
    assert out.splitlines()[-2:] == ["badns.test. IN NS ns1.badns.test.", f"ns1.badns.test. IN A {GLUE}"]


def test_parent_servers_that_disagree_are_reported_in_groups(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    case = cases["split"]
    status, out = _check(_flags(hierarchy, case))
    assert status == 1, out
    lines = out.splitlines()
    ds = case.ds.split(" IN DS ", 1)[1]
    first = lines.index(f"; parent servers ns1.nic.test. ({TLD}):")
    second = lines.index(f"; parent servers ns2.nic.test. ({TLD2}):")
    assert f"OK split.test. DS: parent has {ds}; dnsd has {ds}" in lines[first:second]
    assert f"MISSING split.test. DS: parent has none; dnsd has {ds}" in lines[second:]
    assert lines[-1] == case.ds


def test_a_parent_server_down_is_reported_but_the_others_decide(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    status, out = _check(_flags(hierarchy, cases["deep"]))
    assert status == 0, out
    assert f"; c.deep.test.: parent zone deep.test., servers ns1.deep.test. ({DEEP}), ns2.deep.test. ({SILENT})" in out
    assert "OK c.deep.test. NS: parent has ns1.c.deep.test.; dnsd has ns1.c.deep.test." in out
    assert (f"UNREACHABLE c.deep.test. parent server ns2.deep.test. ({SILENT}): c.deep.test. NS query failed "
            "(unreachable)") in out


def test_the_parent_zone_is_named_by_its_soa(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    """The servers of deep.test. also serve mid.deep.test., which holds the delegation: that is the parent."""
    hierarchy, cases = delegation
    status, out = _check(_flags(hierarchy, cases["mid"]))
    assert status == 0, out
    assert out.startswith(f"; c.mid.deep.test.: parent zone mid.deep.test., servers ns1.deep.test. ({DEEP})"), out


def test_ds_for_a_zone_dnsd_does_not_sign_is_a_mismatch(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    status, out = _check(_flags(hierarchy, cases["unsigned"]))
    assert status == 1, out
    assert ("MISMATCH unsigned.test. DS: parent has 12345 13 2 " + "AB" * 32
            + "; dnsd has no DNSSEC key (the zone is not signed: remove the DS)") in out
    assert "; (no DS record: delete the parent's DS records of unsigned.test.)" in out


def test_no_delegation_at_all_is_missing(delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    status, out = _check(_flags(hierarchy, cases["none"]))
    assert status == 1, out
    assert "MISSING none.test. NS: parent has no delegation; dnsd has ns1.none.test." in out
    assert "MISSING none.test. glue ns1.none.test.: parent has none; dnsd has 127.55.0.10" in out
    assert out.splitlines()[-2:] == ["none.test. IN NS ns1.none.test.", f"ns1.none.test. IN A {GLUE}"]


def test_key_timing_a_prepublished_successor_needs_no_ds_yet(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    """Two KSKs in the directory, one active only in ten days: the parent holds the active one's DS only."""
    hierarchy, cases = delegation
    case = cases["timed"]
    assert case.keys is not None and len(list(case.keys.glob("*.private"))) == 2
    status, out = _check(_flags(hierarchy, case))
    assert status == 0, out
    assert f"OK timed.test. DS: parent has {case.ds.split(' IN DS ', 1)[1]}" in out


def test_every_zone_is_checked_and_one_bad_zone_fails_the_run(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    flags = _flags(hierarchy, cases["good"], "--zone", "none.test")
    status, out = _check(flags)
    assert status == 1, out
    assert "OK good.test. DS" in out and "MISSING none.test. NS" in out


def test_unreachable_parent_exits_1_with_a_clear_message(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    status, out = _check(_flags(hierarchy, cases["good"], hints=hierarchy.hints_file(SILENT)))
    assert status == 1, out
    assert out.strip() == ("UNREACHABLE good.test.: cannot check the delegation: no server of . answered "
                           f"(a.root-servers.test. ({SILENT}): good.test. NS query failed (unreachable))")


class _HostileRoot:
    """A 'root server' on HOSTILE:53 (UDP and TCP) whose answers are garbage of several kinds, in turn."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOSTILE, 53))
        self.udp.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        count = 0
        while not self.stopping:
            try:
                data, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            count += 1
            self.udp.sendto(self._reply(data, count), peer)

    @staticmethod
    def _reply(data: bytes, count: int) -> bytes:
        kind = count % 4
        if kind == 0:
            return b"\x00" * 3  # shorter than a header
        if kind == 1:  # the question echoed, then a record whose owner is a pointer past the end
            return data[:2] + b"\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:].split(b"\x00\x00\x29")[0] \
                + b"\xc0\xff"
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        if kind == 2:  # well formed, but a referral to a name that is not on the way
            response.authority.append(dns.rrset.from_text("evil.", 3600, "IN", "NS", "ns1.evil."))
        else:  # well formed, but the wrong ID
            response.id ^= 0xFFFF
        return response.to_wire()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.udp.close()


def test_garbage_from_the_root_is_a_clear_finding_not_a_traceback(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    if not free_loopback(HOSTILE):
        pytest.skip(f"port 53 on {HOSTILE} cannot be bound")
    root = _HostileRoot()
    try:
        status, out = _check(_flags(hierarchy, cases["good"], hints=hierarchy.hints_file(HOSTILE)))
    finally:
        root.close()
    assert status == 1, out
    assert out.startswith("UNREACHABLE good.test.: cannot check the delegation: "), out
    assert len(out.strip().splitlines()) == 1, out


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    status, out = _check(["--source", f"file:{EXAMPLE_MANIFESTS}"])
    assert status == 2 and "configuration error" in out and "zone" in out, out
    status, out = _check(["--zone", "good.test", "--source", f"file:{EXAMPLE_MANIFESTS}",
                          "--dnssec-keys", str(tmp_path)])
    assert status == 2 and f"no K*.private files in {tmp_path}" in out, out
    (tmp_path / "hints").write_text("garbage\n")
    status, out = _check(["--zone", "good.test", "--source", f"file:{EXAMPLE_MANIFESTS}",
                          "--root-hints", str(tmp_path / "hints")])
    assert status == 2 and "root hints line 1" in out, out


def test_expected_glue_follows_the_publication_policy() -> None:
    """Without --publish-networks private glue is withheld from the Internet, so the parent should not hold it."""
    config = from_mapping({"zone": ["c2.k8s.ooo"], "nameserver": ["ns1.c2.k8s.ooo=10.0.0.53,2001:db8::53"],
                           "reverse_zone": ["10.96.0.0/16", "2001:db8:42::/48"]})
    wants = check.expected(config, None)
    assert [w.zone for w in wants] == ["c2.k8s.ooo", "2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa"]
    assert wants[0].glue == {"ns1.c2.k8s.ooo": ("2001:db8::53",)}
    assert wants[0].unpublished == {"ns1.c2.k8s.ooo": ("10.0.0.53",)}
    findings = check.compare(wants[0], check.ParentView(("ns1.c2.k8s.ooo",),
                                                        {"ns1.c2.k8s.ooo": ("10.0.0.53", "2001:db8::53")}))
    assert [f.status for f in findings] == ["OK", "MISMATCH", "OK"]
    assert findings[1].line("c2.k8s.ooo") == ("MISMATCH c2.k8s.ooo. glue ns1.c2.k8s.ooo.: parent has 10.0.0.53, "
                                              "2001:db8::53; dnsd has 2001:db8::53")


# ---- the periodic check in the server ---------------------------------------------------------------------


def test_gauge_is_1_for_a_consistent_delegation_and_0_for_a_wrong_ds(
        delegation: tuple[CheckHierarchy, dict[str, Case]]) -> None:
    hierarchy, cases = delegation
    keys = cases["good"].keys
    assert keys is not None
    flags = ["--zone", "good.test", "--zone", "wrongds.test", "--source", f"file:{EXAMPLE_MANIFESTS}",
             "--nameserver", f"ns1.good.test={GLUE}", "--publish-networks", "127.55.0.0/16",
             "--root-hints", hierarchy.hints_file(), "--dnssec-keys", str(keys.parent / "both"),
             "--delegation-check-interval", "1", "--recursion", "iterate"]
    with DnsdProcess(*flags, http="127.0.0.1:0") as proc:
        deadline = time.monotonic() + 60
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            samples = {labels["zone"]: value for labels, value in proc.metric_samples("dnsd_delegation_ok")}
            if len(samples) == 2:
                break
            time.sleep(0.2)
        assert samples == {"good.test": 1.0, "wrongds.test": 0.0}, proc.output()
        good = proc.wait_for_log(r"delegation of good\.test\. agrees with the parent zone test\.")
        assert "INFO" in good
        bad = proc.wait_for_log(r"delegation of wrongds\.test\. disagrees with its parent")
        assert "WARNING" in bad and "MISMATCH wrongds.test. DS" in bad
        assert cases["wrongds"].ds in bad  # the fix, as keygen printed it
        # logged once per change, not once per run: a few more runs add no line
        time.sleep(3)
        assert sum("delegation of wrongds.test." in line for line in proc.lines) == 1, proc.output()
        assert proc.query("good.test", "SOA").rcode() == 0  # never a readiness or serving condition


@pytest.mark.parametrize("mode", ["interval-0", "forward-mode"])
def test_no_periodic_check_when_off_or_forwarding(delegation: tuple[CheckHierarchy, dict[str, Case]],
                                                 mode: str) -> None:
    """With interval 1 the first check is done within about a second (the test above); here none is:
    turned off, or in forward mode without --root-hints (there is no root to walk from)."""
    hierarchy, cases = delegation
    flags = ["--zone", "good.test", "--source", f"file:{EXAMPLE_MANIFESTS}", "--nameserver", f"ns1.good.test={GLUE}",
             "--publish-networks", "127.55.0.0/16", "--dnssec-keys", str(cases["good"].keys)]
    if mode == "interval-0":
        flags += ["--root-hints", hierarchy.hints_file(), "--delegation-check-interval", "0"]
    else:
        flags += ["--recursion", "forward", "--forwarder", SILENT, "--delegation-check-interval", "1"]
    with DnsdProcess(*flags, http="127.0.0.1:0") as proc:
        time.sleep(4)
        assert proc.metric_samples("dnsd_delegation_ok") == []
        assert "delegation of" not in proc.output()


def test_ds_follows_key_timing_and_any_digest_type() -> None:
    """After a KSK rollover the parent should drop the old key's DS; a SHA-384 DS of the right key is fine."""
    now = time.time()
    old = dnssec_keys.generate("c2.k8s.ooo", now=now - 30 * 86400)
    old.inactive = int(now - 86400)  # retired yesterday, still published until its Delete time
    old.delete = int(now + 86400)
    new = dnssec_keys.generate("c2.k8s.ooo", now=now - 10 * 86400)
    config = from_mapping({"zone": ["c2.k8s.ooo"], "nameserver": ["ns1.c2.k8s.ooo=2001:db8::53"]})
    want = check.expected(config, [old, new], now)[0]
    assert [text for *_, text in want.ds] == [new.ds_text()]
    view = check.ParentView(("ns1.c2.k8s.ooo",), {"ns1.c2.k8s.ooo": ("2001:db8::53",)})
    view.ds = (old.ds_rdata(), new.ds_rdata())
    findings = check.compare(want, view)
    assert findings[-1].status == "MISMATCH"
    assert check.fix_records(want, findings) == [new.ds_text()]
    view.ds = (new.ds_rdata(4),)
    assert [f.status for f in check.compare(want, view)] == ["OK", "OK", "OK"]
