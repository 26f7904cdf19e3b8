"""Unit tests of the RFC 8198 range logic (`dnsd.recursor.aggressive`): which names a cached NSEC or
NSEC3 range proves absent, in RFC 4034 6.1 canonical order (the RFC's own example ordering, case
folding, the last NSEC wrapping round to the apex) and NSEC3 hash order (the last record wrapping
round to the first), with wildcards, empty non-terminals, delegations, opt-out, expiry and the memory
bound. The proofs are not re-verified here (the validator judged them before `learn`); the end-to-end
tests against signed Knot zones are in tests/test_recursor_aggressive_flood.py.
"""

from __future__ import annotations

import base64

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from dnsd.dnssec import nsec3
from dnsd.recursor.aggressive import AggressiveCache
from dnsd.recursor.cache import Answer
from dnsd.recursor.message import NOERROR, NXDOMAIN, RR, key

SECURE, INSECURE = 1, 2
IN = dns.rdataclass.IN
SIG = "AAAA" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wire(name: str) -> bytes:
    return dns.name.from_text(name).to_wire()


def rr(owner: str, rtype: str, text: str, ttl: int = 3600) -> RR:
    rdtype = dns.rdatatype.from_text(rtype)
    rdata = dns.rdata.from_text(IN, rdtype, text).to_wire(canonicalize=True)
    return RR(wire(owner), int(rdtype), 1, ttl, rdata)


def rrsig(owner: str, covered: str, signer: str, original_ttl: int = 3600, expiration: str = "20401231000000",
          ttl: int = 3600) -> RR:
    labels = len(dns.name.from_text(owner).labels) - 1
    return rr(owner, "RRSIG", f"{covered} 13 {labels} {original_ttl} {expiration} 20200101000000 1 {signer} {SIG}",
              ttl)


def soa(zone: str, ttl: int = 3600, minimum: int = 300) -> list[RR]:
    return [rr(zone, "SOA", f"ns.{zone} host.{zone} 1 1800 900 604800 {minimum}", ttl), rrsig(zone, "SOA", zone)]


def nsec_answer(zone: str, chain: list[tuple[str, str, str]], *, security: int = SECURE, rcode: int = NXDOMAIN,
                ttl: int = 3600, soa_minimum: int = 300) -> Answer:
    authority = soa(zone, minimum=soa_minimum)
    for owner, next_name, types in chain:
        authority += [rr(owner, "NSEC", f"{next_name} {types}", ttl), rrsig(owner, "NSEC", zone)]
    return Answer(rcode, (), tuple(authority), security)


#: RFC 4034 6.1's example, in canonical order, as the existing names of zone example.
RFC_ORDER = ["example.", "a.example.", "yljkjljk.a.example.", "Z.a.example.", "zABC.a.EXAMPLE.", "z.example.",
             "\\001.z.example.", "*.z.example.", "\\200.z.example."]
RFC_TYPES = {"example.": "SOA NS RRSIG NSEC", "*.z.example.": "A RRSIG NSEC", "Z.a.example.": "A RRSIG NSEC"}


def rfc_chain(only: set[str] | None = None) -> list[tuple[str, str, str]]:
    out = []
    for i, owner in enumerate(RFC_ORDER):
        if only is None or owner in only:
            out.append((owner, RFC_ORDER[(i + 1) % len(RFC_ORDER)], RFC_TYPES.get(owner, "TXT RRSIG NSEC")))
    return out


def names(answer: Answer) -> set[tuple[str, int]]:
    return {(dns.name.from_wire(r.owner, 0)[0].to_text().lower(), r.rtype) for r in answer.authority}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rfc(clock: Clock) -> AggressiveCache:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec_answer("example.", rfc_chain()))
    return cache


def test_rfc_order_name_errors_between_labels_and_after_the_last_nsec(rfc: AggressiveCache) -> None:
    # b.a.example. sorts between a.example. and yljkjljk.a.example.; *.a.example. right after a.example.
    found = rfc.answer(wire("b.a.example."), 1)
    assert found is not None and found.rcode == NXDOMAIN and found.security == SECURE
    assert ("a.example.", 47) in names(found) and ("example.", 6) in names(found)
    # zz.a.example. lies after zABC.a.EXAMPLE. (case folded) and before z.example.
    found = rfc.answer(wire("ZZ.a.example."), 1)
    assert found is not None and found.rcode == NXDOMAIN
    assert ("zabc.a.example.", 47) in names(found)
    # zzz.example. sorts after \200.z.example., the last NSEC, which wraps round to the apex; the
    # wildcard *.example. is covered by the apex's NSEC
    found = rfc.answer(wire("zzz.example."), 28)
    assert found is not None and found.rcode == NXDOMAIN
    assert {("\\200.z.example.", 47), ("example.", 47)} <= names(found)
    assert all(r.ttl == 300 for r in found.authority)  # SOA MINIMUM bounds every record (RFC 9077)


def test_rfc_order_nodata_exact_match_case_folded(rfc: AggressiveCache) -> None:
    found = rfc.answer(wire("z.A.EXAMPLE."), 16)  # Z.a.example. has A only
    assert found is not None and found.rcode == NOERROR and not found.answer
    assert ("z.a.example.", 47) in names(found)
    assert rfc.answer(wire("Z.a.example."), 1) is None  # the type exists: not ours to answer
    assert rfc.answer(wire("Z.a.example."), 255) is None  # ANY at an existing name: its records, upstream
    found = rfc.answer(wire("b.a.example."), 255)  # ANY at a name that does not exist: NXDOMAIN
    assert found is not None and found.rcode == NXDOMAIN
    assert rfc.answer(wire("example."), 6) is None


def test_wildcard_between_octet_labels(rfc: AggressiveCache) -> None:
    # \002.z.example. lies between \001.z and *.z (0x2a): the wildcard *.z.example. exists, so the
    # name is not absent: NODATA for a type the wildcard lacks, nothing for one it has
    found = rfc.answer(wire("\\002.z.example."), 16)
    assert found is not None and found.rcode == NOERROR
    assert ("*.z.example.", 47) in names(found)
    assert rfc.answer(wire("\\002.z.example."), 1) is None


def test_empty_non_terminal_is_nodata_never_nxdomain(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec_answer("ent.", [("ent.", "x.b.ent.", "SOA NS RRSIG NSEC"),
                                     ("x.b.ent.", "ent.", "A RRSIG NSEC")]))
    found = cache.answer(wire("b.ent."), 1)
    assert found is not None and found.rcode == NOERROR
    found = cache.answer(wire("c.ent."), 1)
    assert found is not None and found.rcode == NXDOMAIN


def test_cname_and_delegation_records_prove_nothing_below(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec_answer("example.", [("example.", "alias.example.", "SOA NS RRSIG NSEC"),
                                         ("alias.example.", "sub.example.", "CNAME RRSIG NSEC"),
                                         ("sub.example.", "example.", "NS RRSIG NSEC")]))
    assert cache.answer(wire("alias.example."), 1) is None            # CNAME: the target decides
    assert cache.answer(wire("x.sub.example."), 1) is None            # below a delegation: the child's
    assert cache.answer(wire("sub.example."), 1) is None              # the parent's NSEC says nothing of A
    found = cache.answer(wire("sub.example."), 43)                    # but denies the DS
    assert found is not None and found.rcode == NOERROR
    assert cache.answer(wire("example."), 43) is None                 # a zone's apex never denies its DS


def test_missing_wildcard_proof_or_range_goes_upstream(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    # only the range over b.a.example.: the wildcard *.a.example. lies in a.example.'s range, not cached
    cache.learn(nsec_answer("example.", rfc_chain({"yljkjljk.a.example."})))
    assert cache.answer(wire("yz.a.example."), 1) is None
    assert cache.answer(wire("b.a.example."), 1) is None              # not covered by a cached range
    assert cache.answer(wire("other."), 1) is None                    # another zone


def test_only_secure_answers_are_learned_and_ranges_expire(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec_answer("example.", rfc_chain(), security=INSECURE))
    assert len(cache) == 0 and cache.answer(wire("b.a.example."), 1) is None
    cache.learn(nsec_answer("example.", rfc_chain(), ttl=120, soa_minimum=600))
    found = cache.answer(wire("b.a.example."), 1)
    assert found is not None and max(r.ttl for r in found.authority) == 120  # min(NSEC TTL, SOA minimum)
    clock.now += 121
    assert cache.answer(wire("b.a.example."), 1) is None


def test_expired_signature_or_signer_of_another_zone_is_not_kept(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    authority = [*soa("example."), rr("a.example.", "NSEC", "c.example. A RRSIG NSEC"),
                 rrsig("a.example.", "NSEC", "example.", expiration="20200102000000"),
                 rr("c.example.", "NSEC", "example. A RRSIG NSEC"), rrsig("c.example.", "NSEC", "other.")]
    cache.learn(Answer(NXDOMAIN, (), tuple(authority), SECURE))
    assert len(cache) == 0


def test_memory_is_bounded(clock: Clock) -> None:
    cache = AggressiveCache(max_ranges=50, clock=clock)
    for zone in range(20):
        apex = f"z{zone}."
        chain = [(apex, f"n000.{apex}", "SOA NS RRSIG NSEC")]
        chain += [(f"n{i:03d}.{apex}", f"n{i + 1:03d}.{apex}", "A RRSIG NSEC") for i in range(9)]
        cache.learn(nsec_answer(apex, chain))
        assert len(cache) <= 50
    assert cache.answer(wire("n001a.z19."), 1) is not None   # the latest zone is kept
    assert cache.answer(wire("n001a.z0."), 1) is None        # the least recently used went


# ---- NSEC3 ------------------------------------------------------------------------------------

def _b32(digest: bytes) -> str:
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


def nsec3_answer(zone: str, existing: dict[str, str], *, opt_out: bool = False,
                 skip: set[str] = frozenset()) -> tuple[Answer, list[bytes]]:  # type: ignore[assignment]
    """A full NSEC3 chain (no salt, no extra iterations) for `existing` (name -> types), sorted by hash."""
    hashed = sorted((nsec3.hash_name(key(wire(n)), b"", 0), n) for n in existing)
    authority = soa(zone)
    for i, (h, n) in enumerate(hashed):
        if n in skip:
            continue
        following = hashed[(i + 1) % len(hashed)][0]
        owner = f"{_b32(h)}.{zone}"
        flags = 1 if opt_out else 0
        authority += [rr(owner, "NSEC3", f"1 {flags} 0 - {_b32(following)} {existing[n]}"),
                      rrsig(owner, "NSEC3", zone)]
    return Answer(NXDOMAIN, (), tuple(authority), SECURE), [h for h, _ in hashed]


NSEC3_ZONE = {"example.": "SOA NS RRSIG DNSKEY NSEC3PARAM", "www.example.": "A RRSIG",
              "*.w.example.": "A RRSIG", "w.example.": ""}


def test_nsec3_name_error_and_hash_order_wrap_round(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    answer, hashes = nsec3_answer("example.", NSEC3_ZONE)
    cache.learn(answer)
    assert len(cache) == 4
    # a name whose hash sorts before the first owner hash is covered by the last record (wrap-round)
    before_first = next(f"n{i}.example." for i in range(1000)
                        if nsec3.hash_name(key(wire(f"n{i}.example.")), b"", 0) < hashes[0])
    after_last = next(f"n{i}.example." for i in range(1000)
                      if nsec3.hash_name(key(wire(f"n{i}.example.")), b"", 0) > hashes[-1])
    for name in (before_first, after_last, "x.y.z.example."):
        found = cache.answer(wire(name), 1)
        assert found is not None and found.rcode == NXDOMAIN and found.security == SECURE, name
        assert f"{_b32(hashes[-1])}.example." in {n for n, t in names(found) if t == 50} or name == "x.y.z.example."


def test_nsec3_nodata_wildcard_and_empty_non_terminal(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec3_answer("example.", NSEC3_ZONE)[0])
    found = cache.answer(wire("www.example."), 16)
    assert found is not None and found.rcode == NOERROR
    assert cache.answer(wire("www.example."), 1) is None
    assert cache.answer(wire("www.example."), 255) is None
    found = cache.answer(wire("w.example."), 1)  # empty non-terminal: its own NSEC3, no types
    assert found is not None and found.rcode == NOERROR
    found = cache.answer(wire("q.w.example."), 16)  # the wildcard *.w.example. lacks TXT
    assert found is not None and found.rcode == NOERROR
    assert cache.answer(wire("q.w.example."), 1) is None  # it has A: the expansion comes from upstream


def test_nsec3_opt_out_and_partial_chains_go_upstream(clock: Clock) -> None:
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec3_answer("example.", NSEC3_ZONE, opt_out=True)[0])
    assert cache.answer(wire("nx.example."), 1) is None  # opt-out: an unsigned delegation may hide there
    cache = AggressiveCache(clock=clock)
    cache.learn(nsec3_answer("example.", NSEC3_ZONE, skip={"example."})[0])
    assert cache.answer(wire("nx.example."), 1) is None  # no closest encloser match cached


def test_validator_rejects_an_nxdomain_proof_that_shows_the_name_exists() -> None:
    """The validator's NXDOMAIN check (and so what `learn` can ever be given): an NSEC covering the name
    whose next name lies below it proves an empty non-terminal, so it cannot prove a name error."""
    from dnsd.dnssec import records
    from dnsd.dnssec.nsec import nxdomain
    from dnsd.recursor.validator import nsec_shows_existence

    def n(owner: str, next_name: str, types: frozenset[int] = frozenset({1, 46, 47})) -> tuple[bytes, records.Nsec]:
        return wire(owner), records.Nsec(wire(next_name), types)

    ent = [n("ent.", "x.b.ent.", frozenset({2, 6, 46, 47})), n("x.b.ent.", "ent.")]
    assert nxdomain(ent, wire("b.ent."), wire("ent."))  # the nsec module alone accepts it
    assert nsec_shows_existence(ent, wire("B.ent."))
    assert not nsec_shows_existence(ent, wire("c.ent."))
    assert nsec_shows_existence([n("www.ent.", "x.ent.")], wire("www.ent."))  # its own NSEC
