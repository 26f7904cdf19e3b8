"""Aggressive NSEC (RFC 8198) end to end: a random-subdomain flood of a signed victim zone is answered
from dnsd's validated cache, without reaching the victim's server.

The signed hierarchy (tests/signed_hierarchy.py, 127.54.0.0/16) gets two extra victim zones, one
NSEC and one NSEC3 (Knot-signed), each delegated to a counting proxy (tests/counting_proxy.py) in
front of its Knot, so that the test knows how many queries the victim received. The real dnsd
process iterates from the hierarchy's root with the root key as trust anchor; the flood is unique
random names asked with DO=1 by dnspython, which checks rcode, AD and the proof records; the
signatures of synthesized proofs are verified with dnspython against the victim's DNSKEY, and a
validating Unbound used as a stub in front of dnsd must accept them as secure.
Controls: with `--dnssec-validation off` or a negative trust anchor over the victim, every flood
name reaches the victim (so the counting itself is proven to see the queries).
"""

from __future__ import annotations

import os
import random
import socket
import string
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.counting_proxy import CountingProxy
from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.hierarchy import require
from tests.signed_hierarchy import VICTIM_BACKENDS, VICTIMS, Signed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the signed hierarchy binds port 53 on loopback")

ZONE_ARGS = ("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}")
FLOOD = 300
WARMUP = 10


@pytest.fixture(scope="module")
def signed() -> Iterator[tuple[Signed, dict[str, CountingProxy]]]:
    h = Signed(extra=VICTIMS, backends=VICTIM_BACKENDS)
    proxies: dict[str, CountingProxy] = {}
    try:
        for zone, (public, _, _) in VICTIMS.items():
            proxies[zone] = CountingProxy(public, VICTIM_BACKENDS[zone]).start()
        h.start()
        yield h, proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()
        h.stop()


def _dnsd(h: Signed, *extra: str) -> DnsdProcess:
    return DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", h.root_hints,
                       "--trust-anchor", h.anchor_file, "--dnssec-validation", "on", *extra, http="127.0.0.1:0")


def ask(proc: DnsdProcess, name: str, qtype: str = "A") -> dns.message.Message:
    return proc.query(name, qtype, rd=True, edns=0, want_dnssec=True, timeout=8)


def random_names(zone: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{''.join(rng.choices(string.ascii_lowercase + string.digits, k=12))}.{zone}" for _ in range(n)]


def flood(proc: DnsdProcess, names: list[str]) -> list[dns.message.Message]:
    """The names asked 8 at a time (a flood, not a benchmark: the point is uniqueness, not rate)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: ask(proc, n), names))


def verify_proof(reply: dns.message.Message, keys: dns.rrset.RRset) -> None:
    """Every NSEC/NSEC3 and SOA RRset of the authority section verifies with the zone's keys."""
    sigs = {(r.name, r.covers): r for r in reply.authority if r.rdtype == dns.rdatatype.RRSIG}
    checked = 0
    for rrset in reply.authority:
        if rrset.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.SOA):
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], {keys.name: keys})
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("zone", list(VICTIMS))
def test_flood_of_signed_zone_is_answered_from_validated_ranges(
        signed: tuple[Signed, dict[str, CountingProxy]], zone: str) -> None:
    h, proxies = signed
    proxy = proxies[zone]
    proof_type = dns.rdatatype.NSEC3 if "nsec3" in zone else dns.rdatatype.NSEC
    with _dnsd(h) as proc:
        keys_reply = ask(proc, zone, "DNSKEY")
        assert keys_reply.flags & dns.flags.AD
        keys = keys_reply.find_rrset(keys_reply.answer, dns.name.from_text(zone), dns.rdataclass.IN,
                                     dns.rdatatype.DNSKEY)
        names = random_names(zone, FLOOD + WARMUP, seed=len(zone))
        # the first few names teach dnsd the ranges (NSEC3: a handful of hashed ranges)
        for name in names[:WARMUP]:
            reply = ask(proc, name)
            assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AD, reply
        before = proxy.total
        aggressive_before = proc.metric("dnsd_aggressive_answers_total", kind="nxdomain")
        replies = flood(proc, names[WARMUP:])
        reached = proxy.total - before
        for reply in replies:
            assert reply.rcode() == dns.rcode.NXDOMAIN, reply
            assert reply.flags & dns.flags.AD, reply
            assert any(r.rdtype == proof_type for r in reply.authority), reply
        assert reached <= FLOOD * 0.2, f"{reached} of {FLOOD} flood queries reached the victim"
        synthesized = proc.metric("dnsd_aggressive_answers_total", kind="nxdomain") - aggressive_before
        assert synthesized >= FLOOD * 0.8
        for reply in replies[:: FLOOD // 10]:
            verify_proof(reply, keys)
        # the victim's real names still resolve, securely
        reply = ask(proc, f"www.{zone}")
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD
        assert rdata_texts(reply, "A") == [VICTIMS[zone][2].split()[-1]]
        # NODATA: once www's own record is cached (a TXT query), other absent types come from it
        assert ask(proc, f"www.{zone}", "TXT").flags & dns.flags.AD
        before = proxy.total
        reply = ask(proc, f"www.{zone}", "MX")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer and reply.flags & dns.flags.AD
        assert proxy.total == before
        assert proc.metric("dnsd_aggressive_answers_total", kind="nodata") >= 1
        # a DO=0 client gets the bare negative answer: SOA only, AD since it asked with AD
        plain = dns.message.make_query(names[-1], "A", use_edns=0, want_dnssec=False)
        plain.flags |= dns.flags.RD | dns.flags.AD
        reply = dns.query.udp(plain, "127.0.0.1", port=proc.port, timeout=8)
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AD
        assert {r.rdtype for r in reply.authority} == {dns.rdatatype.SOA}


@pytest.mark.parametrize("extra", [("--dnssec-validation", "off"),
                                   ("--negative-trust-anchor", "victim-nsec.test")], ids=["off", "nta"])
def test_no_aggressive_answers_without_validation(
        signed: tuple[Signed, dict[str, CountingProxy]], extra: tuple[str, str]) -> None:
    h, proxies = signed
    proxy = proxies["victim-nsec.test."]
    names = random_names("victim-nsec.test.", 40, seed=len(extra[0]))
    with _dnsd(h, *extra) as proc:
        ask(proc, names[0])  # the delegation is learned
        before = proxy.total
        replies = flood(proc, names[1:])
        deadline = time.monotonic() + 5
        while proxy.total - before < len(names) - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.AD for r in replies)
        assert proxy.total - before >= len(names) - 1
        assert proc.metric("dnsd_aggressive_answers_total") == 0


def _unbound_stub(workdir: Path, port: int, anchor: str, upstream_port: int) -> str:
    """A validating Unbound that forwards everything to dnsd: it judges dnsd's synthesized proofs itself."""
    return f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: "{workdir}/unbound.log"
    verbosity: 1
    trust-anchor-file: "{anchor}"
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    aggressive-nsec: no
    qname-minimisation: no
    num-threads: 1
    so-reuseport: no
    local-zone: "test." nodefault
    val-log-level: 2
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{upstream_port}
remote-control:
    control-enable: no
"""


@pytest.mark.parametrize("zone", list(VICTIMS))
def test_unbound_as_stub_validates_the_synthesized_answers(
        signed: tuple[Signed, dict[str, CountingProxy]], zone: str, tmp_path: Path) -> None:
    """A validating Unbound forwarding to dnsd accepts dnsd's synthesized NXDOMAINs as secure (AD, no
    SERVFAIL): the proofs are complete and their signatures good by an independent validator."""
    h, _ = signed
    with _dnsd(h) as proc:
        names = random_names(zone, 30, seed=7 + len(zone))
        for name in names[:WARMUP]:
            ask(proc, name)
        before = proc.metric("dnsd_aggressive_answers_total", kind="nxdomain")
        port = _free_udp_port()
        (tmp_path / "unbound.conf").write_text(_unbound_stub(tmp_path, port, h.anchor_file, proc.port))
        unbound = subprocess.Popen([require("unbound"), "-d", "-c", str(tmp_path / "unbound.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_udp(port)
            for name in names[WARMUP:]:
                query = dns.message.make_query(name, "A", want_dnssec=True, use_edns=0)
                reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=10)
                log = (tmp_path / "unbound.log").read_text(errors="replace")
                assert reply.rcode() == dns.rcode.NXDOMAIN, f"{reply}\n{log[-3000:]}"
                assert reply.flags & dns.flags.AD, f"{reply}\n{log[-3000:]}"
        finally:
            unbound.terminate()
            unbound.wait(timeout=10)
        # dnsd answered Unbound's questions from its ranges
        assert proc.metric("dnsd_aggressive_answers_total", kind="nxdomain") - before >= len(names) - WARMUP


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_udp(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    query = dns.message.make_query("test.", "SOA")
    while True:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=1)
            return
        except (OSError, dns.exception.DNSException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
