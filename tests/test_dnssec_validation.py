"""The validating resolver against a signed loopback hierarchy (tests/signed_hierarchy.py).

Each case is asked of the real dnsd process (iterate mode, the hierarchy's root key as its only trust
anchor) and of a validating Unbound on the same hierarchy: both must give the same rcode and AD bit,
and dnsd's Extended DNS Error is asserted where the case has one. Then the behaviours Unbound is not
asked about: CD=1, DO=1 returning the signatures and proofs, negative trust anchors, the fast path
keeping AD, DNS64 per RFC 6147 5.5, and the validation metric.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.signed_hierarchy import UNBOUND, Signed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the signed hierarchy binds port 53 on loopback")

ZONE_ARGS = ("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}")
NOERROR, NXDOMAIN, SERVFAIL = dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL


@pytest.fixture(scope="module")
def signed() -> Iterator[Signed]:
    h = Signed().start()
    yield h
    h.stop()


def _dnsd(signed: Signed, *extra: str) -> DnsdProcess:
    return DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", signed.root_hints,
                       "--trust-anchor", signed.anchor_file, "--dnssec-validation", "on", *extra,
                       http="127.0.0.1:0")


@pytest.fixture(scope="module")
def dnsd(signed: Signed) -> Iterator[DnsdProcess]:
    with _dnsd(signed) as proc:
        yield proc


def ask(host: str, port: int, name: str, qtype: str = "A", *, do: bool = True, cd: bool = False,
        ad: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, want_dnssec=do, use_edns=0)
    query.flags |= (dns.flags.CD if cd else 0) | (dns.flags.AD if ad else 0)
    return dns.query.udp(query, host, port=port, timeout=8, ignore_trailing=True) if False else \
        dns.query.tcp(query, host, port=port, timeout=8)


def ede(reply: dns.message.Message) -> list[int]:
    return [opt.code for opt in reply.options if isinstance(opt, dns.edns.EDEOption)]


#: (name, type, rcode, AD, dnsd's EDE codes)
CASES = [
    ("www.nsec.test", "A", NOERROR, True, []),                 # secure, ECDSA P-256, NSEC zone
    ("nx.nsec.test", "A", NXDOMAIN, True, []),                 # NSEC name error
    ("txt.nsec.test", "A", NOERROR, True, []),                 # NSEC no data
    ("x.y.wild.nsec.test", "A", NOERROR, True, []),            # wildcard expansion, NSEC proof
    ("x.wild.nsec.test", "TXT", NOERROR, True, []),            # wildcard no data
    ("www.nsec3.test", "A", NOERROR, True, []),                # NSEC3 zone
    ("nx.nsec3.test", "A", NXDOMAIN, True, []),                # NSEC3 name error
    ("www.nsec3.test", "TXT", NOERROR, True, []),              # NSEC3 no data
    ("x.wild.nsec3.test", "A", NOERROR, True, []),             # wildcard expansion, NSEC3 proof
    ("www.unsigned.nsec.test", "A", NOERROR, False, []),       # insecure delegation proven by NSEC
    ("www.insecure.test", "A", NOERROR, False, []),            # insecure delegation proven by NSEC3
    ("nx.insecure.test", "A", NXDOMAIN, False, []),
    ("www.unsigned.optout.test", "A", NOERROR, False, []),     # insecure by NSEC3 opt-out
    ("www.bogus.test", "A", SERVFAIL, False, [6]),             # corrupted signature
    ("www.expired.test", "A", SERVFAIL, False, [7]),           # signatures expired in 2020
    ("www.nokey.test", "A", SERVFAIL, False, [9]),             # DS matching no key
    ("www.iter.test", "A", NOERROR, True, []),                 # 200 NSEC3 iterations: data still signed
    ("nx.iter.test", "A", NXDOMAIN, False, [27]),              # ... but the denial is insecure
    ("cname.nsec.test", "A", NOERROR, False, []),              # CNAME from a signed into an unsigned zone
    ("www.rsa.test", "A", NOERROR, True, []),                  # RSASHA256
    ("www.ed.test", "A", NOERROR, True, []),                   # Ed25519
    ("test", "DNSKEY", NOERROR, True, []),
    ("nsec.test", "DS", NOERROR, True, []),
    ("insecure.test", "DS", NOERROR, True, []),                # the denial of the DS itself is secure
]


@pytest.mark.parametrize(("name", "qtype", "rcode", "ad", "codes"), CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_same_verdict_as_unbound(dnsd: DnsdProcess, name: str, qtype: str, rcode: int, ad: bool,
                                 codes: list[int]) -> None:
    reference = ask(UNBOUND, 53, name, qtype)
    ours = ask(dnsd.host, dnsd.port, name, qtype)
    assert (reference.rcode(), bool(reference.flags & dns.flags.AD)) == (rcode, ad), "Unbound disagrees with the case"
    assert (ours.rcode(), bool(ours.flags & dns.flags.AD)) == (rcode, ad)
    assert ede(ours) == codes
    if rcode == NOERROR and qtype == "A" and name != "cname.nsec.test" and not name.endswith(".txt"):
        assert sorted(rdata_texts(ours, "A")) == sorted(rdata_texts(reference, "A"))
