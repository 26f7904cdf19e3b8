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
    return dns.query.tcp(query, host, port=port, timeout=8)  # TCP: DO=1 answers may exceed 1232 octets


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
    ("nx.expired.test", "A", SERVFAIL, False, [7]),            # a denial with expired signatures
    ("b-only.bogus.test", "TXT", SERVFAIL, False, [6]),        # a denial whose NSEC signature is broken
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


def test_cd_returns_bogus_data_unvalidated(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd.host, dnsd.port, "www.bogus.test", cd=True)
    assert reply.rcode() == NOERROR
    assert not reply.flags & dns.flags.AD
    assert reply.flags & dns.flags.CD
    assert rdata_texts(reply, "A") == ["192.0.2.90"]
    # and without CD the same cached data is still refused
    again = ask(dnsd.host, dnsd.port, "www.bogus.test")
    assert again.rcode() == SERVFAIL and ede(again) == [6]


def test_do_returns_signatures_and_proofs(dnsd: DnsdProcess) -> None:
    positive = ask(dnsd.host, dnsd.port, "www.nsec.test")
    assert {dns.rdatatype.A, dns.rdatatype.RRSIG} == {rrset.rdtype for rrset in positive.answer}
    negative = ask(dnsd.host, dnsd.port, "nx.nsec.test")
    types = {rrset.rdtype for rrset in negative.authority}
    assert {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG} <= types
    nsec3 = ask(dnsd.host, dnsd.port, "nx.nsec3.test")
    assert dns.rdatatype.NSEC3 in {rrset.rdtype for rrset in nsec3.authority}
    wildcard = ask(dnsd.host, dnsd.port, "x.y.wild.nsec.test")  # the proof that x.y does not exist
    assert dns.rdatatype.NSEC in {rrset.rdtype for rrset in wildcard.authority}


def test_ad_needs_do_or_ad_in_the_query(dnsd: DnsdProcess) -> None:
    """RFC 6840 5.7-5.8: AD for a DO=0 query only when it set AD itself; no DNSSEC records for DO=0."""
    plain = ask(dnsd.host, dnsd.port, "www.nsec.test", do=False)
    assert plain.rcode() == NOERROR and not plain.flags & dns.flags.AD
    assert {rrset.rdtype for rrset in plain.answer} == {dns.rdatatype.A}
    asking = ask(dnsd.host, dnsd.port, "www.nsec.test", do=False, ad=True)
    assert asking.flags & dns.flags.AD
    assert {rrset.rdtype for rrset in asking.answer} == {dns.rdatatype.A}
    negative = ask(dnsd.host, dnsd.port, "nx.nsec.test", do=False, ad=True)
    assert negative.rcode() == NXDOMAIN and negative.flags & dns.flags.AD
    assert {rrset.rdtype for rrset in negative.authority} == {dns.rdatatype.SOA}
    insecure = ask(dnsd.host, dnsd.port, "www.insecure.test", do=False, ad=True)
    assert not insecure.flags & dns.flags.AD


def test_cached_answers_keep_their_state_on_the_fast_path(dnsd: DnsdProcess) -> None:
    first = ask(dnsd.host, dnsd.port, "www.rsa.test", "A")
    judged = dnsd.metric("dnsd_dnssec_validations_total", result="secure")
    hits = dnsd.metric("dnsd_queries_total", source="cache")
    for _ in range(3):
        udp = dns.query.udp(dns.message.make_query("www.rsa.test", "A", want_dnssec=True, use_edns=0),
                            dnsd.host, port=dnsd.port, timeout=8)
        assert udp.flags & dns.flags.AD
        assert udp.answer == first.answer
    assert dnsd.metric("dnsd_queries_total", source="cache") >= hits + 3
    assert dnsd.metric("dnsd_dnssec_validations_total", result="secure") == judged  # judged once
    assert ede(ask(dnsd.host, dnsd.port, "www.expired.test")) == [7]  # judged (unless an earlier test did)
    bogus = dnsd.metric("dnsd_dnssec_validations_total", result="bogus")
    for _ in range(2):
        assert ede(ask(dnsd.host, dnsd.port, "www.expired.test")) == [7]
    assert dnsd.metric("dnsd_dnssec_validations_total", result="bogus") == bogus  # bogus is cached too
    assert not ask(dnsd.host, dnsd.port, "www.insecure.test").flags & dns.flags.AD
    assert dnsd.metric("dnsd_dnssec_validations_total", result="insecure") >= 1


def test_negative_trust_anchor(signed: Signed) -> None:
    with _dnsd(signed, "--negative-trust-anchor", "bogus.test") as proc:
        reply = ask(proc.host, proc.port, "www.bogus.test")
        assert reply.rcode() == NOERROR and not reply.flags & dns.flags.AD
        assert rdata_texts(reply, "A") == ["192.0.2.90"]
        still = ask(proc.host, proc.port, "www.expired.test")
        assert still.rcode() == SERVFAIL
        secure = ask(proc.host, proc.port, "www.nsec.test")
        assert secure.flags & dns.flags.AD


def test_validation_off_passes_everything(signed: Signed) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", signed.root_hints,
                     "--dnssec-validation", "off") as proc:
        reply = ask(proc.host, proc.port, "www.bogus.test")
        assert reply.rcode() == NOERROR and not reply.flags & dns.flags.AD


def test_the_bundled_root_anchor_rejects_a_fake_root(signed: Signed) -> None:
    """Without --trust-anchor the real root's KSKs are the anchor: this hierarchy's root is a fake."""
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", signed.root_hints,
                     "--dnssec-validation", "on") as proc:
        reply = ask(proc.host, proc.port, "www.nsec.test")
        assert reply.rcode() == SERVFAIL
        assert ede(reply) == [9]  # no DNSKEY of the fake root matches the root's DS


# ---- DNS64 with validation (RFC 6147 5.5) ---------------------------------------------------------

SYNTHESIZED = "64:ff9b::102:30b"  # 1.2.3.11 under the well-known prefix


def test_dns64_do0_synthesizes_after_validating(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd.host, dnsd.port, "a-only.nsec.test", "AAAA", do=False)
    assert reply.rcode() == NOERROR
    assert rdata_texts(reply, "AAAA") == [SYNTHESIZED]
    assert not reply.flags & dns.flags.AD
    assert ede(reply) == [29]  # Synthesized
    assert {rrset.rdtype for rrset in reply.answer} == {dns.rdatatype.AAAA}


def test_dns64_do1_synthesizes_from_a_validated_a_with_ad(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd.host, dnsd.port, "a-only.nsec.test", "AAAA", do=True)
    assert rdata_texts(reply, "AAAA") == [SYNTHESIZED]
    assert reply.flags & dns.flags.AD  # 5.5 case 2: the A and the AAAA denial were both secure
    assert ede(reply) == [29]
    assert dns.rdatatype.RRSIG not in {rrset.rdtype for rrset in reply.answer}


def test_dns64_do1_cd1_gets_no_synthesis(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd.host, dnsd.port, "a-only.nsec.test", "AAAA", do=True, cd=True)
    assert reply.rcode() == NOERROR
    assert rdata_texts(reply, "AAAA") == []  # the validating stub sees the real (signed) NODATA
    assert dns.rdatatype.NSEC in {rrset.rdtype for rrset in reply.authority}


def test_dns64_insecure_name_is_synthesized_without_ad(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd.host, dnsd.port, "www.insecure.test", "AAAA", do=True)
    assert rdata_texts(reply, "AAAA") == ["64:ff9b::102:346"]
    assert not reply.flags & dns.flags.AD


@pytest.mark.parametrize("name", ["a-only.bogus.test", "b-only.bogus.test"])
def test_dns64_bogus_is_servfail_ede6(dnsd: DnsdProcess, name: str) -> None:
    """a-only: the negative AAAA is fine but the A is bogus; b-only: the A is fine but the negative
    AAAA answer is bogus, which must stop the synthesis before the A is even used."""
    for do in (False, True):
        reply = ask(dnsd.host, dnsd.port, name, "AAAA", do=do)
        assert reply.rcode() == SERVFAIL
        assert ede(reply) == [6]
    assert rdata_texts(ask(dnsd.host, dnsd.port, "b-only.bogus.test", "A"), "A") == ["1.2.3.92"]


def test_dns64_only_excluded_addresses_and_no_a_is_nodata(dnsd: DnsdProcess) -> None:
    """RFC 6147 5.1.4: an answer of excluded (here IPv4-mapped) addresses only counts as empty; with
    no A to synthesize from, the answer is NODATA, not the mapped address (BIND does the same)."""
    for do in (False, True):
        reply = ask(dnsd.host, dnsd.port, "mapped-only.nsec.test", "AAAA", do=do)
        assert reply.rcode() == NOERROR
        assert rdata_texts(reply, "AAAA") == []
        assert dns.rdatatype.RRSIG not in {rrset.rdtype for rrset in reply.answer}


FORWARD_CASES = [c for c in CASES if c[0] in (
    "www.nsec.test", "nx.nsec3.test", "x.y.wild.nsec.test", "www.insecure.test", "www.unsigned.optout.test",
    "www.bogus.test", "www.expired.test", "www.nokey.test", "cname.nsec.test", "www.ed.test")]


def test_forward_mode_validates_too(signed: Signed) -> None:
    """Forwarding to a resolver (with CD=1, so that it hands over even what it finds bogus), dnsd still
    judges every answer itself, with the same verdicts as iterating."""
    with DnsdProcess(*ZONE_ARGS, "--recursion", "forward", "--forwarder", UNBOUND,
                     "--trust-anchor", signed.anchor_file, "--dnssec-validation", "on") as proc:
        for name, qtype, rcode, ad, codes in FORWARD_CASES:
            reply = ask(proc.host, proc.port, name, qtype)
            assert (name, reply.rcode(), bool(reply.flags & dns.flags.AD), ede(reply)) == (name, rcode, ad, codes)


def test_any_query_is_not_servfail(dnsd: DnsdProcess) -> None:
    """The iterator answers ANY with an empty NOERROR (RFC 8482 lets it); validation keeps it so."""
    reply = ask(dnsd.host, dnsd.port, "www.ed.test", "ANY")
    assert reply.rcode() == NOERROR and not reply.flags & dns.flags.AD


def test_concurrent_queries_share_one_judgement(dnsd: DnsdProcess) -> None:
    import asyncio

    import dns.asyncquery

    before = sum(dnsd.metric("dnsd_dnssec_validations_total", result=r) for r in ("secure", "insecure", "bogus"))

    async def burst() -> list[dns.message.Message]:
        query = dns.message.make_query("together.wild.nsec.test", "A", want_dnssec=True, use_edns=0)
        return await asyncio.gather(*(dns.asyncquery.udp(query, dnsd.host, port=dnsd.port, timeout=8)
                                      for _ in range(20)))

    replies = asyncio.run(burst())
    assert all(r.rcode() == NOERROR and r.flags & dns.flags.AD for r in replies)
    after = sum(dnsd.metric("dnsd_dnssec_validations_total", result=r) for r in ("secure", "insecure", "bogus"))
    assert after == before + 1
