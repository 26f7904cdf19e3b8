"""Unit tests of dnsd.dnssec and the validator's pure parts: signatures made by dnspython (an
independent implementation) verified by dnsd for every supported algorithm, canonical form, key
tags and DS digests against the real root keys, NSEC/NSEC3 proofs with the RFC 5155 vectors, the
KeyTrap bounds, and trust anchor files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from dnsd.dnssec import canonical, crypto, nsec, nsec3, records
from dnsd.recursor import validator
from dnsd.recursor.cache import Answer
from dnsd.recursor.chain import ResolveError
from dnsd.recursor.message import RR, to_wire

NOW = int(time.time())


def _private(algorithm: int) -> object:
    if algorithm in (8, 10):
        return rsa.generate_private_key(65537, 2048)
    if algorithm == 13:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == 14:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == 15:
        return ed25519.Ed25519PrivateKey.generate()
    return ed448.Ed448PrivateKey.generate()


def _wire(rdata: dns.rdata.Rdata) -> bytes:
    return rdata.to_wire()


def _signed(algorithm: int, rrset: dns.rrset.RRset, lifetime: int = 3600,
            inception: int | None = None) -> tuple[records.Dnskey, records.Rrsig]:
    private = _private(algorithm)
    key = dns.dnssec.make_dnskey(private.public_key(), algorithm, flags=257)  # type: ignore[attr-defined]
    sig = dns.dnssec.sign(rrset, private, dns.name.from_text("example."), key,  # type: ignore[arg-type]
                          inception=inception if inception is not None else NOW - 60, lifetime=lifetime)
    return records.dnskey(_wire(key)), records.rrsig(_wire(sig))


@pytest.mark.parametrize("algorithm", [8, 10, 13, 14, 15, 16])
def test_dnspython_signatures_verify(algorithm: int) -> None:
    rrset = dns.rrset.from_text("WWW.Example.", 300, "IN", "MX", "10 MAIL.Example.", "20 b.example.")
    key, sig = _signed(algorithm, rrset)
    owner = rrset.name.to_wire()
    rdatas = [_wire(r) for r in rrset]  # case as given: the canonical form lower-cases MX targets
    assert b"MAIL" in rdatas[0] or b"MAIL" in rdatas[1]
    assert crypto.usable(key)
    assert crypto.verify(key, sig.signature, canonical.signed_data(sig, owner, 15, 1, rdatas))
    # any change to the data breaks it
    forged = [rdatas[0], rdatas[1].replace(b"\x01b", b"\x01c")]
    assert not crypto.verify(key, sig.signature, canonical.signed_data(sig, owner, 15, 1, forged))
    assert not crypto.verify(key, sig.signature[:-1] + bytes([sig.signature[-1] ^ 1]),
                             canonical.signed_data(sig, owner, 15, 1, rdatas))


def test_wildcard_signature_covers_the_wildcard_owner() -> None:
    rrset = dns.rrset.from_text("*.wild.example.", 300, "IN", "A", "192.0.2.1")
    key, sig = _signed(13, rrset)
    assert sig.labels == 2
    expanded = to_wire("a.b.wild.example")
    data = canonical.signed_data(sig, expanded, 1, 1, [_wire(r) for r in rrset])
    assert crypto.verify(key, sig.signature, data)
    assert canonical.signing_owner(expanded, 2) == to_wire("*.wild.example")
    assert canonical.signing_owner(to_wire("*.wild.example"), 2) == to_wire("*.wild.example")


def test_validity_window_uses_serial_arithmetic() -> None:
    rrset = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1")
    _, sig = _signed(13, rrset, lifetime=100, inception=NOW - 1000)
    assert validator._in_window(sig, NOW) == validator.EDE_EXPIRED
    _, future = _signed(13, rrset, lifetime=3600, inception=NOW + 600)
    assert validator._in_window(future, NOW) == validator.EDE_NOT_YET_VALID
    _, good = _signed(13, rrset)
    assert validator._in_window(good, NOW) is None


def test_root_key_tags_and_ds_match_debian_dns_root_data() -> None:
    key_file, ds_file = Path("/usr/share/dns/root.key"), Path("/usr/share/dns/root.ds")
    if not key_file.exists() or not ds_file.exists():
        pytest.skip("Debian's dns-root-data is not installed (scripts/test installs it)")
    keys = {a.owner: a for a in validator.parse_anchors(key_file.read_text())}[b"\x00"].keys
    system = validator.parse_anchors(ds_file.read_text())
    bundled = validator.load_anchors([])
    assert [sorted(a.ds, key=lambda d: d.key_tag) for a in bundled] == \
        [sorted(a.ds, key=lambda d: d.key_tag) for a in system]
    assert {crypto.key_tag(k) for k in keys} == {20326, 38696} == {d.key_tag for d in bundled[0].ds}
    for ds in bundled[0].ds:
        assert any(crypto.ds_digest(b"\x00", k, ds.digest_type) == ds.digest for k in keys)
    assert all(crypto.usable(records.dnskey(k)) for k in keys)


def test_anchor_files(tmp_path: Path) -> None:
    path = tmp_path / "anchors"
    path.write_text("""; a comment
example. 3600 IN DS 1234 13 2 ( 0011 2233 )
example. IN DNSKEY 257 3 13 (
    mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ== )
""")
    [anchor] = validator.load_anchors([str(path)])
    assert anchor.owner == to_wire("example")
    assert anchor.ds[0] == records.Ds(1234, 13, 2, bytes.fromhex("00112233"))
    assert records.dnskey(anchor.keys[0]).algorithm == 13
    (tmp_path / "empty").write_text("; nothing\n")
    with pytest.raises(validator.AnchorError, match="no DS or DNSKEY"):
        validator.load_anchors([str(tmp_path / "empty")])
    with pytest.raises(validator.AnchorError):
        validator.load_anchors([str(tmp_path / "missing")])
    (tmp_path / "bad").write_text(". DS 1 8 2 XYZ\n")
    with pytest.raises(validator.AnchorError, match="cannot parse"):
        validator.load_anchors([str(tmp_path / "bad")])


def test_canonical_rdata_lowercase_list() -> None:
    """RFC 4034 6.2 with RFC 6840 5.1: MX/SRV/SOA targets fold, NSEC's next name keeps its case."""
    mx = b"\x00\x0a" + to_wire("MAIL.Example")
    assert canonical.canonical_rdata(15, mx) == b"\x00\x0a" + to_wire("mail.example")
    nsec_rdata = to_wire("Next.Example") + records.encode_type_bitmap({1, 46, 47})
    assert canonical.canonical_rdata(47, nsec_rdata) == nsec_rdata
    txt = b"\x05HeLLo"
    assert canonical.canonical_rdata(16, txt) == txt
    naptr = b"\x00\x01\x00\x02\x01U\x03E2U\x00" + to_wire("X.Example")
    assert canonical.canonical_rdata(35, naptr).endswith(to_wire("x.example"))
    with pytest.raises(records.FormatError):
        canonical.canonical_rdata(15, b"\x00")


def test_canonical_order() -> None:
    """RFC 4034 6.1's example order."""
    names = ["example", "a.example", "yljkjljk.a.example", "Z.a.example", "zABC.a.EXAMPLE", "z.example",
             "\\001.z.example", "*.z.example", "\\200.z.example"]
    wires = [to_wire(n) for n in names]
    assert sorted(wires, key=canonical.order_key) == wires


def test_nsec3_hash_vectors_of_rfc5155_appendix_a() -> None:
    salt = bytes.fromhex("aabbccdd")
    assert nsec3.b32(nsec3.hash_name(to_wire("example"), salt, 12)) == b"0p9mhaveqvm6t7vbl5lop2u3t2rp3tom"
    assert nsec3.b32(nsec3.hash_name(to_wire("a.example"), salt, 12)) == b"35mthgpgcu1qg68fab165klnsnk3dpvl"


def test_nsec_proofs() -> None:
    zone = to_wire("example")
    proof = [
        (to_wire("example"), records.Nsec(to_wire("a.example"), frozenset({2, 6, 46, 47, 48}))),
        (to_wire("a.example"), records.Nsec(to_wire("x.y.example"), frozenset({1, 46, 47}))),
        (to_wire("x.y.example"), records.Nsec(to_wire("example"), frozenset({2, 46, 47}))),  # a delegation
    ]
    assert nsec.covers(to_wire("a.example"), to_wire("x.y.example"), to_wire("b.example"))
    assert nsec.covers(to_wire("x.y.example"), to_wire("example"), to_wire("z.example"))  # wraps at the end
    assert not nsec.covers(to_wire("a.example"), to_wire("x.y.example"), to_wire("a.example"))
    assert nsec.nxdomain(proof, to_wire("b.example"), zone)
    assert not nsec.nxdomain(proof, to_wire("a.example"), zone)
    assert nsec.nodata(proof, to_wire("a.example"), 16, zone)
    assert not nsec.nodata(proof, to_wire("a.example"), 1, zone)
    assert nsec.nodata(proof, to_wire("y.example"), 1, zone)  # an empty non-terminal
    # the parent's NSEC at a delegation proves no DS, but nothing about the child's own types
    assert nsec.nodata(proof, to_wire("x.y.example"), 43, zone)
    assert not nsec.nodata(proof, to_wire("x.y.example"), 1, zone)
    assert nsec.ds_status(proof, to_wire("x.y.example")) == nsec.INSECURE_CUT
    assert nsec.ds_status(proof, to_wire("a.example")) == nsec.NOT_A_CUT
    assert nsec.ds_status(proof, to_wire("b.example")) == nsec.NONEXISTENT
    # nor can the delegation's NSEC deny names below the cut
    assert not nsec.nxdomain(proof, to_wire("deep.x.y.example"), zone)
    assert nsec.wildcard_answer(proof, to_wire("b.example"))
    assert not nsec.wildcard_answer(proof, to_wire("a.example"))


def _nsec3_record(owner_name: str, next_name: str, types: set[int], zone: str = "example",
                  flags: int = 0, iterations: int = 12) -> tuple[bytes, bytes]:
    salt = bytes.fromhex("aabbccdd")
    owner = nsec3.b32(nsec3.hash_name(to_wire(owner_name), salt, iterations))
    nxt = nsec3.hash_name(to_wire(next_name), salt, iterations)
    rdata = bytes((1, flags)) + iterations.to_bytes(2, "big") + bytes((len(salt),)) + salt + bytes((len(nxt),)) \
        + nxt + records.encode_type_bitmap(types)
    return bytes((len(owner),)) + owner + to_wire(zone), rdata


def test_nsec3_proofs_and_iteration_limit() -> None:
    # the names of RFC 5155 appendix A, chained in hash order
    names = ["example", "a.example", "ai.example", "ns1.example", "ns2.example", "w.example", "*.w.example",
             "x.w.example", "y.w.example", "x.y.w.example", "xx.example"]
    ordered = sorted(names, key=lambda n: nsec3.hash_name(to_wire(n), bytes.fromhex("aabbccdd"), 12))
    chain_records = [_nsec3_record(n, ordered[(i + 1) % len(ordered)], {1}) for i, n in enumerate(ordered)]
    chain = nsec3.Chain(to_wire("example"), chain_records)
    assert nsec3.nxdomain(chain, to_wire("a.c.x.w.example")) == nsec3.PROVEN  # RFC 5155 B.1
    assert nsec3.nxdomain(chain, to_wire("z.w.example")) == nsec3.FAILED  # *.w.example exists
    assert nsec3.nxdomain(chain, to_wire("nothere.example")) == nsec3.PROVEN
    assert nsec3.nodata(chain, to_wire("ns1.example"), 16) == nsec3.PROVEN
    assert nsec3.nodata(chain, to_wire("ns1.example"), 1) == nsec3.FAILED
    assert nsec3.wildcard_answer(chain, to_wire("z.w.example"), 2) == nsec3.PROVEN
    assert nsec3.ds_status(chain, to_wire("ns1.example")) == nsec3.NOT_A_CUT
    many = nsec3.Chain(to_wire("example"), [_nsec3_record("example", "a.example", {1}, iterations=51)])
    assert many.too_many_iterations and not many.entries
    assert nsec3.nxdomain(many, to_wire("nothere.example")) == nsec3.FAILED


def test_nsec3_hash_budget() -> None:
    chain = nsec3.Chain(to_wire("example"), [_nsec3_record("example", "a.example", {1})])
    deep = to_wire(".".join(["l"] * 100) + ".example")
    with pytest.raises(nsec3.HashBudgetExceeded):
        chain.closest_encloser(deep)
    assert chain.hashes == nsec3.MAX_HASHES + 1


def test_keytrap_bounds_signature_work() -> None:
    """Many keys sharing a tag and many signatures: at most MAX_SIGS x MAX_KEYS checks for one RRset,
    and the per-query budget ends the work (CVE-2023-50387)."""
    rrset = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1")
    key, sig = _signed(13, rrset)
    bad = records.rrsig(sig.rdata[: -len(sig.signature)] + bytes(len(sig.signature)))
    keys = tuple((sig.key_tag, key) for _ in range(50))
    zone = validator.ZoneKeys(to_wire("example"), validator.SECURE, keys)
    v = validator.Validator([], [], _unreachable)
    work = validator.Work(verifications=1000)
    ok, ede, _ = v._verify(to_wire("www.example"), 1, [b"\xc0\x00\x02\x01"], [bad] * 50, zone, work)
    assert not ok and ede == validator.EDE_BOGUS
    assert 1000 - work.verifications == validator.MAX_SIGS_PER_RRSET * validator.MAX_KEYS_PER_TAG
    small = validator.Work()
    for _ in range(validator.MAX_VERIFICATIONS // 32):  # 32 checks each: the budget is used up
        v._verify(to_wire("www.example"), 1, [b"\xc0\x00\x02\x01"], [bad] * 50, zone, small)
    with pytest.raises(validator.WorkExceeded):
        v._verify(to_wire("www.example"), 1, [b"\xc0\x00\x02\x01"], [bad] * 50, zone, small)
    good, _, _ = v._verify(to_wire("www.example"), 1, [b"\xc0\x00\x02\x01"], [sig], zone, validator.Work())
    assert good


async def _unreachable(name: bytes, qtype: int) -> Answer:
    raise ResolveError("unreachable")


def test_unreachable_keys_are_bogus_and_ntas_insecure() -> None:
    anchor = validator.Anchor(b"\x00", (records.Ds(1, 13, 2, bytes(32)),))
    v = validator.Validator([anchor], [to_wire("nta.example")], _unreachable)
    answer = Answer(0, (RR(to_wire("www.example"), 1, 1, 60, b"\x01\x02\x03\x04"),))
    judged = asyncio.run(v.validate(to_wire("www.example"), 1, answer))
    assert judged.security == validator.BOGUS and judged.ede == validator.EDE_NO_REACHABLE_AUTHORITY
    nta = asyncio.run(v.validate(to_wire("a.nta.example"), 1, Answer(0, (
        RR(to_wire("a.nta.example"), 1, 1, 60, b"\x01\x02\x03\x04"),))))
    assert nta.security == validator.INSECURE
    outside = validator.Validator([validator.Anchor(to_wire("other"), (records.Ds(1, 13, 2, bytes(32)),))], [],
                                  _unreachable)
    assert asyncio.run(outside.validate(to_wire("www.example"), 1, answer)).security == validator.INSECURE


def test_unsupported_algorithms_make_a_zone_insecure() -> None:
    v = validator.Validator([], [], _unreachable)
    sha1_only = asyncio.run(v._keys(to_wire("example"), [records.Ds(1, 5, 2, bytes(32))], set(),
                                    validator.Work(), 60))
    assert sha1_only.state == validator.INSECURE and sha1_only.ede == validator.EDE_UNSUPPORTED_ALGORITHM
    gost = asyncio.run(v._keys(to_wire("example"), [records.Ds(1, 13, 3, bytes(32))], set(), validator.Work(), 60))
    assert gost.state == validator.INSECURE and gost.ede == validator.EDE_UNSUPPORTED_DIGEST


def test_record_parsers_reject_malformed_rdata() -> None:
    for parse, data in ((records.dnskey, b"\x01\x01\x03"), (records.rrsig, bytes(18)), (records.ds, b"\x00"),
                        (records.nsec, b"\x03abc"), (records.nsec3, b"\x01\x00\x00\x01\x05ab"),
                        (records.nsec3param, b"\x01\x00\x00\x01\x02a")):
        with pytest.raises(records.FormatError):
            parse(data)
    with pytest.raises(records.FormatError):
        records.type_bitmap(b"\x00\x21" + bytes(33))  # a window longer than 32 octets
    with pytest.raises(records.FormatError):
        records.type_bitmap(b"\x01\x01\x80\x00\x01\x80")  # windows out of order
    assert records.type_bitmap(records.encode_type_bitmap({1, 28, 46, 65, 256, 32769})) == \
        frozenset({1, 28, 46, 65, 256, 32769})
    assert records.label_count(to_wire("*.a.example")) == 2
    _ = dns.rdataclass.IN, dns.rdatatype.A  # (imported for the signing helpers)


def test_validated_ttls_are_capped_by_the_signature() -> None:
    """RFC 4035 5.3.3: no longer than the RRSIG's original TTL nor past its expiration."""
    private = ec.generate_private_key(ec.SECP256R1())
    key = dns.dnssec.make_dnskey(private.public_key(), 13, flags=257)
    origin = dns.name.from_text("example.")
    keys = dns.rrset.from_text("example.", 300, "IN", "DNSKEY", key.to_text())
    a = dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1")
    key_sig = dns.dnssec.sign(keys, private, origin, key, lifetime=3600)
    a_sig = dns.dnssec.sign(a, private, origin, key, lifetime=100)

    async def fetch(name: bytes, qtype: int) -> Answer:
        return Answer(0, (RR(keys.name.to_wire(), 48, 1, 300, key.to_wire()),
                          RR(keys.name.to_wire(), 46, 1, 300, key_sig.to_wire())))

    v = validator.Validator([validator.Anchor(origin.to_wire(), (), (key.to_wire(),))], [], fetch)
    owner = a.name.to_wire()
    answer = Answer(0, (RR(owner, 1, 1, 3600, a[0].to_wire()), RR(owner, 46, 1, 3600, a_sig.to_wire())))
    judged = asyncio.run(v.validate(owner, 1, answer))
    assert judged.security == validator.SECURE
    assert [rr.ttl for rr in judged.answer] == [60, 60]  # the original TTL, not the 3600 served
    short = Answer(0, (RR(owner, 1, 1, 50, a[0].to_wire()), RR(owner, 46, 1, 50, a_sig.to_wire())))
    assert [rr.ttl for rr in asyncio.run(v.validate(owner, 1, short)).answer] == [50, 50]


def test_oversized_dnskey_rrsets_are_refused_unparsed() -> None:
    many = tuple(RR(to_wire("example"), 48, 1, 300, b"\x01\x01\x03\x0d" + bytes([i]) * 64)
                 for i in range(validator.MAX_DNSKEYS + 1))

    async def fetch(name: bytes, qtype: int) -> Answer:
        return Answer(0, many)

    v = validator.Validator([], [], fetch)
    zone = asyncio.run(v._keys(to_wire("example"), [records.Ds(1, 13, 2, bytes(32))], set(), validator.Work(), 60))
    assert zone.state == validator.BOGUS and zone.ede == validator.EDE_BOGUS
