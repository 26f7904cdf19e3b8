"""The signer in-process with a simulated clock: key timing, rollovers, refresh, incremental NSEC3.

Every signature is checked with the validator's own verification (`dnsd.dnssec.crypto.verify` over
`canonical.signed_data`), and the NSEC3 chain against a chain built from scratch, so these fail if a
rollover step signs with the wrong key, publishes the wrong DNSKEY or CDS set, a refresh is skipped,
or an incremental insert or delete leaves a next-hash pointer wrong.
"""

from __future__ import annotations

from pathlib import Path

import dnsd.config
from dnsd.dnssec import DNSKEY, NSEC3, RRSIG, canonical, crypto, keys, records
from dnsd.dnssec.nsec3 import hash_name
from dnsd.dnssec.signer import CDS, REFRESH, VALIDITY, Signer, rdata_wire
from dnsd.kube.model import Port, ServiceRecord
from dnsd.wire import text_to_wire
from dnsd.zone import AAAA, ZoneIndex

ZONE = "roll.test"
T0 = 1_800_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def make_zone() -> ZoneIndex:
    config = dnsd.config.from_mapping({"zone": ZONE, "recursion": "off"})
    zone = ZoneIndex(config)
    zone.mark_synced()
    return zone


def svc(name: str, address: str) -> ServiceRecord:
    return ServiceRecord("default", name, False, (address,), None, (Port("http", "tcp", 80),), False, True, None)


def key(flags: int, **timing: int) -> keys.Key:
    made = keys.generate(ZONE, crypto.ECDSAP256SHA256, flags, now=T0 - 86400)
    made.publish = made.activate = T0 - 86400
    for field, value in timing.items():
        setattr(made, field, value)
    return made


def sig_tags(signer: Signer, zone: ZoneIndex, name: str, rtype: int) -> set[int]:
    """Key tags of the RRSIGs over one RRset, each verified against the published DNSKEY RRset."""
    dnskeys = {crypto.key_tag(r): records.dnskey(r) for r in zone.rrset(ZONE, DNSKEY)[1]}  # type: ignore[index,arg-type]
    _ttl, rdatas = zone.rrset(name, rtype)  # type: ignore[misc]
    wire = [rdata_wire(rtype, r) for r in rdatas]
    tags = set()
    for sig in signer._sigs[(name, rtype)]:
        parsed = records.rrsig(sig)
        assert parsed.key_tag in dnskeys, "signed by a key that is not published"
        data = canonical.signed_data(parsed, text_to_wire(name), rtype, 1, wire)
        assert crypto.verify(dnskeys[parsed.key_tag], parsed.signature, data)
        assert parsed.inception <= signer.clock() <= parsed.expiration
        tags.add(parsed.key_tag)
    return tags


def published(zone: ZoneIndex) -> set[int]:
    return {crypto.key_tag(r) for r in zone.rrset(ZONE, DNSKEY)[1]}  # type: ignore[index,arg-type]


def test_zsk_prepublish_rollover_by_timing() -> None:
    clock = Clock()
    zone = make_zone()
    zone.put_service(svc("web", "2001:db8::1"))
    ksk, old = key(257), key(256, inactive=T0 + 2000, delete=T0 + 4000)
    new = key(256, publish=T0 + 1000, activate=T0 + 2000)
    signer = Signer(zone, [ksk, old, new], clock)
    name = f"web.default.svc.{ZONE}"
    assert published(zone) == {ksk.tag, old.tag} and sig_tags(signer, zone, name, AAAA) == {old.tag}
    assert sig_tags(signer, zone, ZONE, DNSKEY) == {ksk.tag}
    clock.now = T0 + 1000  # new ZSK published, not yet signing
    signer.tick()
    assert published(zone) == {ksk.tag, old.tag, new.tag} and sig_tags(signer, zone, name, AAAA) == {old.tag}
    clock.now = T0 + 2000  # new signs, old still published for cached signatures
    signer.tick()
    assert published(zone) == {ksk.tag, old.tag, new.tag} and sig_tags(signer, zone, name, AAAA) == {new.tag}
    clock.now = T0 + 4000
    signer.tick()
    assert published(zone) == {ksk.tag, new.tag} and sig_tags(signer, zone, name, AAAA) == {new.tag}


def test_ksk_double_signature_rollover_moves_cds(tmp_path: Path) -> None:
    clock = Clock()
    zone = make_zone()
    zsk, old = key(256), key(257)
    keys.write(zsk, tmp_path)
    keys.write(old, tmp_path)
    signer = Signer(zone, keys.load_dir(tmp_path), clock)
    cds = {records.ds(r).key_tag for r in zone.rrset(ZONE, CDS)[1]}  # type: ignore[index,arg-type]
    assert cds == {old.tag}
    new = key(257)  # added as files: published and signing the DNSKEY RRset at once (double signature)
    keys.write(new, tmp_path)
    old.inactive, old.delete = T0 + 1000, T0 + 2000
    keys.write(old, tmp_path)
    signer.tick(keys.load_dir(tmp_path))
    assert published(zone) == {zsk.tag, old.tag, new.tag}
    assert sig_tags(signer, zone, ZONE, DNSKEY) == {old.tag, new.tag}
    assert {records.ds(r).key_tag for r in zone.rrset(ZONE, CDS)[1]} == {old.tag, new.tag}  # type: ignore[index,arg-type]
    clock.now = T0 + 1000
    signer.tick(keys.load_dir(tmp_path))
    assert sig_tags(signer, zone, ZONE, DNSKEY) == {new.tag}
    assert {records.ds(r).key_tag for r in zone.rrset(ZONE, CDS)[1]} == {new.tag}  # type: ignore[index,arg-type]
    clock.now = T0 + 2000
    signer.tick(keys.load_dir(tmp_path))
    assert published(zone) == {zsk.tag, new.tag}


def test_signatures_are_refreshed_before_they_expire() -> None:
    clock = Clock()
    zone = make_zone()
    zone.put_service(svc("web", "2001:db8::1"))
    signer = Signer(zone, [key(257)], clock)
    name = f"web.default.svc.{ZONE}"
    first = records.rrsig(signer._sigs[(name, AAAA)][0]).expiration
    assert first == T0 + VALIDITY and signer.next_expiry == first
    assert signer.tick() == 0  # nothing is near its expiry
    clock.now = T0 + VALIDITY - REFRESH + 1
    assert signer.tick(budget=1) == 1  # bounded per tick
    while signer.tick(budget=5):
        pass
    assert records.rrsig(signer._sigs[(name, AAAA)][0]).expiration == int(clock.now) + VALIDITY
    sig_tags(signer, zone, name, AAAA)
    assert signer.next_expiry is not None and signer.next_expiry > first


def _chain_from_scratch(signer: Signer, zone: ZoneIndex) -> dict[bytes, tuple[bytes, frozenset[int]]]:
    names = [n for n in [*zone.names(), *zone._below] if zone.exists(n) or n == ZONE]
    hashes = sorted({hash_name(text_to_wire(n), b"", 0): n for n in names}.items())
    out = {}
    for i, (digest, name) in enumerate(hashes):
        types = set(zone.types_at(name)) | ({6} if name == ZONE else set())
        out[digest] = (hashes[(i + 1) % len(hashes)][0], frozenset(types | {RRSIG} if types else types))
    return out


def test_nsec3_chain_stays_exact_through_inserts_and_deletes() -> None:
    clock = Clock()
    zone = make_zone()
    signer = Signer(zone, [key(257)], clock)
    for i in range(30):
        zone.put_service(svc(f"s{i}", f"2001:db8::{i + 1:x}"))
    for i in range(0, 30, 3):
        zone.delete_service("default", f"s{i}")
    chain = signer._chains[ZONE]
    expected = _chain_from_scratch(signer, zone)
    assert set(chain.records) == set(expected)
    for digest, (owner, rdata, sigs) in chain.records.items():
        parsed = records.nsec3(rdata)
        assert (parsed.next_hash, parsed.types) == expected[digest]
        assert (parsed.iterations, parsed.salt, parsed.flags) == (0, b"", 0)  # RFC 9276
        dnskey = records.dnskey(zone.rrset(ZONE, DNSKEY)[1][0])  # type: ignore[index,arg-type]
        sig = records.rrsig(sigs[0])
        assert crypto.verify(dnskey, sig.signature, canonical.signed_data(sig, text_to_wire(owner), NSEC3, 1, [rdata]))


def test_bind_private_key_with_leading_zero_octets_dropped_reads(tmp_path: Path) -> None:
    """BIND writes an ECDSA private value without its leading zero octets (31 bytes one time in 256)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    scalar = int.from_bytes(b"\x00" + b"\x5a" * 31, "big")
    private = ec.derive_private_key(scalar, ec.SECP256R1())
    made = keys.Key(ZONE, 257, crypto.ECDSAP256SHA256, private, keys._public_bytes(crypto.ECDSAP256SHA256, private))
    base = keys.write(made, tmp_path)
    path = Path(f"{base}.private")
    text = path.read_text().replace(base64.b64encode(scalar.to_bytes(32, "big")).decode(),
                                    base64.b64encode(scalar.to_bytes(31, "big")).decode())
    path.write_text(text)
    assert keys.read(path).tag == made.tag
