"""The signed zones, checked by independent validators: Unbound (AD) and BIND's `dnssec-verify`.

dnsd signs `sig.test` and its reverse zone with keys from `--dnssec-keys`: a CSK from `dnsd keygen`
(ECDSAP256SHA256, then ED25519) or a KSK and a ZSK made by BIND's `dnssec-keygen`. Unbound runs on a
free loopback port with a `stub-zone` for each zone pointing at dnsd and the DS records that the key
tool printed as its only trust anchors, so an answer with AD is one that Unbound validated from that
DS down: positive answers, SRV, PTR in the reverse zone, NXDOMAIN and NODATA (NSEC3 proofs), empty
non-terminals, and answers after a change of the manifests file. `dnssec-verify -z` checks an AXFR of
the signed zone before and after a change, and DO=0 answers are compared byte for byte with those of
an unsigned dnsd serving the same file.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from tests.dnsd_process import REPO, DnsdProcess
from tests.secondaries import write_manifests
from tests.started_dnsd import free_port

ZONE = "sig.test"
NETWORK = "2001:db8:42::/48"
REVERSE = "2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
SERVICES = {"web": "2001:db8:42::1", "api": "2001:db8:42::2"}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test installs unbound and bind9-utils)")
    return path


def _keys(kind: str, directory: Path) -> list[str]:
    """Keys for both zones; returns the DS records (zone-file text) for Unbound's trust anchor."""
    directory.mkdir()
    anchors: list[str] = []
    for zone in (ZONE, REVERSE):
        if kind == "bind":
            for extra in (["-f", "KSK"], []):
                subprocess.run([_tool("dnssec-keygen"), "-q", "-K", str(directory), "-a", "ECDSAP256SHA256",
                                *extra, zone], check=True, capture_output=True)
            ksk = next(p for p in directory.glob(f"K{zone}.+013+*.key") if " 257 " in p.read_text())
            ds = subprocess.run([_tool("dnssec-dsfromkey"), "-2", str(ksk)], check=True, capture_output=True,
                                text=True).stdout
            anchors.append(ds.strip())
        else:
            out = subprocess.run([sys.executable, "-m", "dnsd", "keygen", zone, "--algorithm", kind, "--dir",
                                  str(directory)], check=True, capture_output=True, text=True, cwd=REPO).stdout
            ds_line, dnskey_line = out.strip().splitlines()
            assert " IN DS " in ds_line and " 2 " in ds_line and " IN DNSKEY 257 3 " in dnskey_line
            anchors.append(ds_line)
    return anchors


class Signed:
    """A signed dnsd, an unsigned twin on the same file, and Unbound validating the signed one."""

    def __init__(self, dnsd: DnsdProcess, plain: DnsdProcess, resolver_port: int, manifests: Path) -> None:
        self.dnsd, self.plain, self.resolver_port, self.manifests = dnsd, plain, resolver_port, manifests

    def resolve(self, qname: str, qtype: str) -> dns.message.Message:
        query = dns.message.make_query(qname, qtype, want_dnssec=True)
        return dns.query.udp(query, "127.0.0.1", port=self.resolver_port, timeout=5)


@pytest.fixture(scope="module", params=["ecdsap256sha256", "ed25519", "bind"])
def signed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    work = tmp_path_factory.mktemp(f"signed-{request.param}")
    anchors = _keys(request.param, work / "keys")
    (work / "anchors").write_text("\n".join(anchors) + "\n")
    manifests = work / "cluster.yaml"
    write_manifests(manifests, SERVICES)
    common = ("--zone", ZONE, "--reverse-zone", NETWORK, "--recursion", "off", "--source", f"file:{manifests}")
    dnsd = DnsdProcess(*common, "--dnssec-keys", str(work / "keys"), "--transfer-allow", "127.0.0.1/32",
                       http="127.0.0.1:0")
    plain = DnsdProcess(*common)
    try:
        dnsd.start()
        plain.start()
        with unbound_for(work, dnsd.port, (ZONE, REVERSE)) as port:
            yield Signed(dnsd, plain, port, manifests)
    finally:
        dnsd.stop()
        plain.stop()


@contextlib.contextmanager
def unbound_for(work: Path, dnsd_port: int, zones: tuple[str, ...], outgoing: str = "",
                name: str = "unbound") -> Iterator[int]:
    """Unbound on a free port, stub zones to dnsd, `work/anchors` as its only trust anchors; its port.

    `outgoing`: the source address of its queries to dnsd (127.0.0.2 is the Internet for a dnsd with
    `--allow-recursion 127.0.0.1/32`); `name` tells the files of two Unbounds in one directory apart.
    """
    port = free_port()
    interface = f"    outgoing-interface: {outgoing}\n" if outgoing else ""
    stubs = "".join(f"stub-zone:\n    name: \"{zone}\"\n    stub-addr: 127.0.0.1@{dnsd_port}\n" for zone in zones)
    # The cache holds answers for a second at most, so that a change in the zone is seen at once.
    (work / f"{name}.conf").write_text(f"""server:
    interface: 127.0.0.1
{interface}    port: {port}
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: "{work}/{name}.pid"
    use-syslog: no
    logfile: "{work}/{name}.log"
    verbosity: 1
    module-config: "validator iterator"
    trust-anchor-file: "{work}/anchors"
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    access-control: 127.0.0.0/8 allow
    so-reuseport: no
    val-log-level: 2
    local-zone: "test." nodefault
    local-zone: "8.b.d.0.1.0.0.2.ip6.arpa." nodefault
{stubs}remote-control:
    control-enable: no
""")
    unbound = subprocess.Popen([_tool("unbound"), "-d", "-c", str(work / f"{name}.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                dns.query.udp(dns.message.make_query(zones[0], "SOA"), "127.0.0.1", port=port, timeout=1)
                break
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline or unbound.poll() is not None:
                    pytest.fail(f"unbound did not answer:\n{(work / f'{name}.log').read_text(errors='replace')}")
                time.sleep(0.1)
        yield port
    finally:
        unbound.terminate()
        try:
            unbound.wait(5)
        except subprocess.TimeoutExpired:
            unbound.kill()


def _validated(setup: Signed, qname: str, qtype: str, rcode: int = dns.rcode.NOERROR) -> dns.message.Message:
    reply = setup.resolve(qname, qtype)
    assert reply.rcode() == rcode, reply.to_text()
    assert reply.flags & dns.flags.AD, f"not validated:\n{reply.to_text()}"
    return reply


def test_positive_answers_validate(signed: Signed) -> None:
    reply = _validated(signed, "web.default.svc." + ZONE, "AAAA")
    assert [rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.AAAA] == [
        "2001:db8:42::1"]
    reply = _validated(signed, "_http._tcp.web.default.svc." + ZONE, "SRV")
    assert "0 100 80 web.default.svc.sig.test." in reply.to_text()
    reply = _validated(signed, ZONE, "DNSKEY")
    assert reply.answer


def test_ptr_in_the_reverse_zone_validates(signed: Signed) -> None:
    reply = _validated(signed, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR")
    assert "web.default.svc.sig.test." in reply.to_text()


def test_denials_validate(signed: Signed) -> None:
    reply = _validated(signed, "nope." + ZONE, "A", dns.rcode.NXDOMAIN)
    assert not reply.answer
    templates = signed.dnsd.metric("dnsd_fast_path_answers_total", kind="template")
    for i in range(5):  # names of one zone and type: each denial needs its own NSEC3 proof
        _validated(signed, f"flood{i}." + ZONE, "A", dns.rcode.NXDOMAIN)
    for i in range(20):  # the fast path's DO=1 denials: the template's SOA, the name's NSEC3 proof
        _validated(signed, f"fast{i}.default.svc." + ZONE, "AAAA", dns.rcode.NXDOMAIN)
        _validated(signed, f"x{i}.web.default.svc." + ZONE, "A", dns.rcode.NXDOMAIN)
    _validated(signed, "api.default.svc." + ZONE, "TXT")  # NODATA, twice: the second from the template
    _validated(signed, "api.default.svc." + ZONE, "MX")
    assert signed.dnsd.metric("dnsd_fast_path_answers_total", kind="template") - templates >= 40
    _validated(signed, "deep.nope.default.svc." + ZONE, "AAAA", dns.rcode.NXDOMAIN)
    reply = _validated(signed, "web.default.svc." + ZONE, "TXT")  # NODATA
    assert not reply.answer
    reply = _validated(signed, "default.svc." + ZONE, "A")  # an empty non-terminal: NODATA
    assert not reply.answer


def test_do_answers_carry_signatures_and_do0_answers_are_unchanged(signed: Signed) -> None:
    answer = signed.dnsd.query("web.default.svc." + ZONE, "AAAA", want_dnssec=True, edns=0)
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in answer.answer)
    denial = signed.dnsd.query("nope." + ZONE, "AAAA", want_dnssec=True, edns=0)
    assert {rrset.rdtype for rrset in denial.authority} >= {dns.rdatatype.NSEC3, dns.rdatatype.RRSIG}
    for qname, qtype, edns in (("web.default.svc." + ZONE, "AAAA", 0), ("nope." + ZONE, "A", 0),
                               ("_http._tcp.api.default.svc." + ZONE, "SRV", -1), ("default.svc." + ZONE, "A", 0),
                               ("web.default.svc." + ZONE, "TXT", 0), (ZONE, "NS", -1)):
        wire = dns.message.make_query(qname, qtype, use_edns=edns).to_wire()
        replies = []
        for server in (signed.dnsd, signed.plain):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(wire, ("127.0.0.1", server.port))
                replies.append(sock.recv(65535))
        assert replies[0] == replies[1], (qname, qtype)


def _axfr_verifies(setup: Signed, work: Path) -> dns.zone.Zone:
    zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=setup.dnsd.port, timeout=10))
    path = work / "axfr.zone"
    zone.to_file(str(path), relativize=False)
    result = subprocess.run([_tool("dnssec-verify"), "-z", "-o", ZONE, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return zone


def test_changes_are_signed_and_validate(signed: Signed, tmp_path: Path) -> None:
    _axfr_verifies(signed, tmp_path)
    _validated(signed, "new.default.svc." + ZONE, "AAAA", dns.rcode.NXDOMAIN)
    write_manifests(signed.manifests, {**SERVICES, "new": "2001:db8:42::3"})
    deadline = time.monotonic() + 30
    while True:
        reply = signed.resolve("new.default.svc." + ZONE, "AAAA")
        if reply.rcode() == dns.rcode.NOERROR and reply.answer:
            break
        assert time.monotonic() < deadline, reply.to_text()
        time.sleep(0.2)
    assert reply.flags & dns.flags.AD
    _validated(signed, "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR")
    zone = _axfr_verifies(signed, tmp_path)
    assert zone.get_rdataset("new.default.svc." + ZONE + ".", "AAAA") is not None
    write_manifests(signed.manifests, SERVICES)  # and away again: the NSEC3 chain closes over the gap
    deadline = time.monotonic() + 30
    while signed.resolve("new.default.svc." + ZONE, "AAAA").rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _validated(signed, "new.default.svc." + ZONE, "AAAA", dns.rcode.NXDOMAIN)
    _axfr_verifies(signed, tmp_path)


def test_signer_metrics(signed: Signed) -> None:
    assert signed.dnsd.metric("dnsd_dnssec_signatures_total") > 0
    assert signed.dnsd.metric("dnsd_dnssec_next_expiry_timestamp_seconds") > time.time() + 13 * 86400
    assert signed.dnsd.metric("dnsd_dnssec_key_state", zone=ZONE, state="active") >= 1


def test_compact_denial_is_refused_until_it_exists(tmp_path: Path) -> None:
    _keys("ecdsap256sha256", tmp_path / "keys")
    result = subprocess.run([sys.executable, "-m", "dnsd", "--zone", ZONE, "--recursion", "off", "--source",
                             f"file:{tmp_path / 'none.yaml'}", "--listen", "127.0.0.1:0", "--http", "off",
                             "--dnssec-keys", str(tmp_path / "keys"), "--dnssec-denial", "compact"],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 3 and "compact" in result.stderr


def test_zsk_and_ksk_rollovers_by_adding_files_keep_unbound_validating(tmp_path: Path) -> None:
    """A ZSK pre-publish rollover and then a KSK double-signature rollover, done only by writing key files
    with timing metadata (the signer reads the directory every 0.2 s here), with Unbound validating every
    answer throughout, and CDS showing both KSKs during the double signature and the new one after.

    The parent's DS change is a fresh Unbound trusting only the new DS, started while both KSKs sign."""
    from dnsd.dnssec import keys

    keydir = tmp_path / "keys"
    keydir.mkdir()
    now = int(time.time())
    ksk = keys.generate(ZONE, flags=keys.KSK_FLAGS, now=now - 3600)
    zsk = keys.generate(ZONE, flags=keys.ZSK_FLAGS, now=now - 3600)
    for key in (ksk, zsk):
        keys.write(key, keydir)
    (tmp_path / "anchors").write_text(ksk.ds_text() + "\n")
    manifests = tmp_path / "cluster.yaml"
    write_manifests(manifests, SERVICES)
    name = "web.default.svc." + ZONE
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{manifests}", "--dnssec-keys",
                     str(keydir), env={"DNSD_SIGNER_TICK": "0.2"}) as dnsd:

        def signers(qname: str, qtype: str) -> set[int]:
            reply = dnsd.query(qname, qtype, want_dnssec=True, edns=0)
            return {rd.key_tag for rrset in reply.answer if rrset.rdtype == dns.rdatatype.RRSIG for rd in rrset}

        def published() -> set[int]:
            return {dns.dnssec.key_id(rd) for rrset in dnsd.query(ZONE, "DNSKEY").answer for rd in rrset}

        def validate_until(port: int, done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 30
            while not done():
                for qname, qtype in ((name, "AAAA"), (ZONE, "DNSKEY"), ("nope." + ZONE, "A")):
                    reply = dns.query.udp(dns.message.make_query(qname, qtype, want_dnssec=True), "127.0.0.1",
                                          port=port, timeout=5)
                    assert reply.flags & dns.flags.AD and reply.rcode() in (0, 3), (what, reply.to_text())
                assert time.monotonic() < deadline, what
                time.sleep(0.1)

        with unbound_for(tmp_path, dnsd.port, (ZONE,)) as port:
            assert signers(name, "AAAA") == {zsk.tag}
            start = int(time.time())
            new_zsk = keys.generate(ZONE, flags=keys.ZSK_FLAGS, now=start)
            new_zsk.activate = start + 3
            zsk.inactive, zsk.delete = start + 3, start + 6
            keys.write(zsk, keydir)
            keys.write(new_zsk, keydir)
            validate_until(port, lambda: signers(name, "AAAA") == {new_zsk.tag}, "ZSK activation")
            validate_until(port, lambda: zsk.tag not in published(), "old ZSK removed")
            start = int(time.time())
            new_ksk = keys.generate(ZONE, flags=keys.KSK_FLAGS, now=start)
            keys.write(new_ksk, keydir)
            validate_until(port, lambda: signers(ZONE, "DNSKEY") == {ksk.tag, new_ksk.tag}, "double signature")
            cds = dnsd.query(ZONE, "CDS")
            assert {rd.key_tag for rrset in cds.answer for rd in rrset} == {ksk.tag, new_ksk.tag}
        (tmp_path / "anchors").write_text(new_ksk.ds_text() + "\n")  # the parent now holds the new DS
        with unbound_for(tmp_path, dnsd.port, (ZONE,)) as port:
            start = int(time.time())
            ksk.inactive, ksk.delete = start + 2, start + 4
            keys.write(ksk, keydir)
            validate_until(port, lambda: signers(ZONE, "DNSKEY") == {new_ksk.tag}, "old KSK retired")
            validate_until(port, lambda: ksk.tag not in published(), "old KSK deleted")
            cds = dnsd.query(ZONE, "CDS")
            assert {rd.key_tag for rrset in cds.answer for rd in rrset} == {new_ksk.tag}
