"""dnsd as hidden primary for real Knot, NSD and BIND secondaries on loopback, each with its own TSIG key.

What is shown, with the secondaries' refresh timers at the SOA's two hours (so only NOTIFY can explain
a change arriving): the first transfer (AXFR) to each; changes to the manifests file and through the
fake Kubernetes API reaching every secondary within 2 s as an IXFR (dnsd's transfer log names the
secondary's key and the result `incremental`), additions, deletions and changed records alike (Knot
refuses an IXFR whose diff is not exact); the AXFR fallback when the journal does not hold the
secondary's serial; and the same with `--workers 2`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rrset
import dns.tsigkeyring
import pytest

from tests.dnsd_process import DnsdProcess
from tests.fakekube import FakeKube, service
from tests.hierarchy import MissingTool, require
from tests.secondaries import Secondary, key_file, write_manifests
from tests.started_dnsd import free_port

ZONE = "xfr.test"
KINDS = ("knot", "nsd", "bind")
#: The acceptance bound for a change to reach every secondary.
PROPAGATION = 2.0


def _tools() -> None:
    try:
        for tool in ("knotd", "nsd", "named", "tsig-keygen"):
            require(tool)
    except MissingTool as exc:
        pytest.fail(str(exc))


def transfer_lines(proc: DnsdProcess, key: str, start: int = 0) -> list[str]:
    return [line for line in proc.lines[start:] if "transfer client=" in line and f"key={key}" in line]


class Setup:
    """Ports, keys and secondaries, and the dnsd flags that go with them."""

    def __init__(self, tmp_path: Path, kinds: tuple[str, ...] = KINDS, algorithms: tuple[str, ...] = ()) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.secondaries: list[Secondary] = []
        self.flags: list[str] = []
        for n, kind in enumerate(kinds):
            name = f"{kind}-key"
            algorithm = algorithms[n] if algorithms else "hmac-sha256"
            path, secret = key_file(tmp_path, name, algorithm)
            secondary = Secondary(kind, tmp_path / kind, ZONE, self.port, name, secret, algorithm=algorithm)
            self.secondaries.append(secondary)
            self.flags += ["--tsig-key-file", str(path), "--transfer-allow", f"127.0.0.0/8={name}",
                           "--notify", f"127.0.0.1:{secondary.port}={name}"]

    def dnsd(self, *extra: str) -> DnsdProcess:
        """dnsd on the port the secondaries know, with their keys, ACL entries and NOTIFY targets."""
        return DnsdProcess("--zone", ZONE, "--recursion", "off", "--nameserver", f"ns1.{ZONE}=2001:db8::53",
                           *self.flags, *extra, listen=(f"127.0.0.1:{self.port}",))

    def start_secondaries(self) -> None:
        for secondary in self.secondaries:
            secondary.start()

    def stop(self) -> None:
        for secondary in self.secondaries:
            secondary.stop()

    def wait_all(self, serial: int, timeout: float = 30.0) -> dict[str, float]:
        return {s.kind: s.wait_serial(serial, timeout) for s in self.secondaries}


def dnsd_serial(proc: DnsdProcess) -> int:
    reply = proc_query(proc, ZONE, "SOA")
    return int(reply.answer[0][0].serial)


def proc_query(proc: DnsdProcess, qname: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(qname, rdtype), proc.host, port=proc.port, timeout=2)


def wait_name(setup: Setup, qname: str, expected: set[str], started: float, timeout: float = 30.0) -> dict[str, float]:
    """Seconds from `started` until each secondary answers qname with exactly `expected`."""
    reached: dict[str, float] = {}
    deadline = started + timeout
    while len(reached) < len(setup.secondaries) and time.monotonic() < deadline:
        for secondary in setup.secondaries:
            if secondary.kind not in reached and secondary.addresses(qname) == expected:
                reached[secondary.kind] = time.monotonic() - started
        time.sleep(0.01)
    missing = [s for s in setup.secondaries if s.kind not in reached]
    if missing:
        raise AssertionError(f"{[s.kind for s in missing]} did not answer {qname} with {expected}:\n"
                             + "\n".join(s.log_text()[-3000:] for s in missing))
    return reached


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    _tools()
    s = Setup(tmp_path)
    yield s
    s.stop()


def _change_and_check(setup: Setup, proc: DnsdProcess, apply: object, qname: str, expected: set[str],
                      incremental: bool = True) -> None:
    mark = len(proc.lines)
    started = time.monotonic()
    apply()  # type: ignore[operator]
    reached = wait_name(setup, qname, expected, started)
    serial = dnsd_serial(proc)
    setup.wait_all(serial)
    for kind, seconds in reached.items():
        assert seconds < PROPAGATION, f"{kind} took {seconds:.2f} s: {reached}"
    for secondary in setup.secondaries:
        deadline = time.monotonic() + 10
        wanted = "result=incremental" if incremental else "result=full"
        while not any(wanted in line and "kind=ixfr" in line
                      for line in transfer_lines(proc, secondary.key_name, mark)):
            assert time.monotonic() < deadline, (
                f"no IXFR {wanted} for {secondary.kind}:\n" + "\n".join(proc.lines[mark:]))
            time.sleep(0.02)


def test_manifests_changes_reach_knot_nsd_and_bind_by_notify_and_ixfr(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    services = {f"svc{i}": f"2001:db8:42::{i:x}" for i in range(1, 40)}
    write_manifests(path, services)
    with setup.dnsd("--source", f"file:{path}") as proc:
        setup.start_secondaries()
        serial = dnsd_serial(proc)
        setup.wait_all(serial)
        for secondary in setup.secondaries:  # the first transfer of each: the whole zone
            lines = transfer_lines(proc, secondary.key_name)
            assert any("result=full" in line for line in lines), (secondary.kind, proc.output())
            assert secondary.addresses(f"svc7.default.svc.{ZONE}") == {"2001:db8:42::7"}

        # an addition
        services["added"] = "2001:db8:42::aaaa"
        _change_and_check(setup, proc, lambda: write_manifests(path, services), f"added.default.svc.{ZONE}",
                          {"2001:db8:42::aaaa"})
        # a changed address and a deletion in one serial: the diff must be exact for Knot
        services["svc3"] = "2001:db8:42::3333"
        del services["svc5"]
        _change_and_check(setup, proc, lambda: write_manifests(path, services), f"svc3.default.svc.{ZONE}",
                          {"2001:db8:42::3333"})
        for secondary in setup.secondaries:
            assert secondary.addresses(f"svc5.default.svc.{ZONE}") == set()
            assert secondary.query(f"svc5.default.svc.{ZONE}").rcode() == 3  # NXDOMAIN
        knot = next(s for s in setup.secondaries if s.kind == "knot")
        assert "IXFR, incoming" in knot.log_text() and "malformed" not in knot.log_text()


def test_kubernetes_changes_reach_every_secondary_by_ixfr(setup: Setup, tmp_path: Path) -> None:
    async def run() -> None:
        fake = FakeKube()
        await fake.start()
        try:
            for i in range(1, 20):
                fake.put(service("default", f"k{i}", [f"2001:db8:42::{i:x}"]))
            kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
            proc = setup.dnsd("--source", "kubernetes", "--kubeconfig", str(kubeconfig))
            await asyncio.to_thread(proc.start)
            try:
                await asyncio.to_thread(proc.wait_for_log, "synced .* services", 20)
                serial = await asyncio.to_thread(dnsd_serial, proc)
                assert serial == fake.rv  # the newest object's resourceVersion
                setup.start_secondaries()
                await asyncio.to_thread(setup.wait_all, serial)
                await asyncio.to_thread(
                    _change_and_check, setup, proc,
                    lambda: fake.put(service("default", "new", ["2001:db8:42::beef"])),
                    f"new.default.svc.{ZONE}", {"2001:db8:42::beef"})
                assert await asyncio.to_thread(dnsd_serial, proc) == fake.rv
                await asyncio.to_thread(
                    _change_and_check, setup, proc,
                    lambda: fake.delete("services", "default", "k2"),
                    f"k2.default.svc.{ZONE}", set())  # gone (it answered 2001:db8:42::2 until now)
                for secondary in setup.secondaries:
                    assert secondary.query(f"k2.default.svc.{ZONE}").rcode() == 3
            finally:
                await asyncio.to_thread(proc.stop)
        finally:
            await fake.stop()

    asyncio.run(run())


def test_ixfr_falls_back_to_axfr_when_the_journal_lacks_the_serial(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    services = {f"svc{i}": f"2001:db8:42::{i:x}" for i in range(1, 10)}
    write_manifests(path, services)
    with setup.dnsd("--source", f"file:{path}", "--ixfr-journal", "0") as proc:
        setup.start_secondaries()
        setup.wait_all(dnsd_serial(proc))
        services["late"] = "2001:db8:42::1a7e"
        _change_and_check(setup, proc, lambda: write_manifests(path, services), f"late.default.svc.{ZONE}",
                          {"2001:db8:42::1a7e"}, incremental=False)


def test_workers_answer_transfers_and_one_process_notifies(tmp_path: Path) -> None:
    _tools()
    setup = Setup(tmp_path, ("knot",))
    try:
        path = tmp_path / "cluster.yaml"
        services = {f"svc{i}": f"2001:db8:42::{i:x}" for i in range(1, 10)}
        write_manifests(path, services)
        with setup.dnsd("--source", f"file:{path}", "--workers", "2") as proc:
            setup.start_secondaries()
            first_serial = dnsd_serial(proc)
            setup.wait_all(first_serial)
            for n in range(3):
                services[f"w{n}"] = f"2001:db8:42::e{n}"
                _change_and_check(setup, proc, lambda: write_manifests(path, services), f"w{n}.default.svc.{ZONE}",
                                  {f"2001:db8:42::e{n}"})
            # Every process answers IXFR from the same journal: a dozen connections (spread over both by
            # SO_REUSEPORT) get the same three incremental steps.
            knot = setup.secondaries[0]
            ring = dns.tsigkeyring.from_text({knot.key_name: ("hmac-sha256", knot.secret)})
            answers = set()
            for _ in range(12):
                query = dns.message.make_query(ZONE, "IXFR")
                query.authority.append(dns.rrset.from_text(f"{ZONE}.", 0, "IN", "SOA",
                                                           f"ns1.{ZONE}. h.{ZONE}. {first_serial} 1 1 1 1"))
                query.use_tsig(ring, knot.key_name)
                reply = dns.query.tcp(query, "127.0.0.1", port=setup.port, timeout=5, one_rr_per_rrset=True)
                answers.add(tuple(rrset.to_text() for rrset in reply.answer))
            (answer,) = answers
            assert sum(1 for text in answer if " SOA " in text) == 2 + 3 * 2, answer  # ends + old/new per step
            notifies = [line for line in proc.lines if re.search(r"notify .* result=acknowledged", line)]
            serials = {re.search(r"serial=(\d+)", line).group(1) for line in notifies}  # type: ignore[union-attr]
            assert len(notifies) == len(serials), notifies  # one NOTIFY per serial: only one process sends
    finally:
        setup.stop()


def test_sha384_and_sha512_keys_work_with_every_secondary(tmp_path: Path) -> None:
    """Knot with hmac-sha512, NSD with hmac-sha384, BIND with hmac-sha512: first AXFR, then an IXFR."""
    _tools()
    setup = Setup(tmp_path, KINDS, ("hmac-sha512", "hmac-sha384", "hmac-sha512"))
    try:
        path = tmp_path / "cluster.yaml"
        services = {f"svc{i}": f"2001:db8:42::{i:x}" for i in range(1, 6)}
        write_manifests(path, services)
        with setup.dnsd("--source", f"file:{path}") as proc:
            setup.start_secondaries()
            setup.wait_all(dnsd_serial(proc))
            services["sha"] = "2001:db8:42::5a"
            _change_and_check(setup, proc, lambda: write_manifests(path, services), f"sha.default.svc.{ZONE}",
                              {"2001:db8:42::5a"})
    finally:
        setup.stop()
