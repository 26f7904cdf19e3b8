"""The zone signer: RRSIGs and the NSEC3 chain, kept current per change of the zone index.

It sits on the event flow after the zone index (ARCHITECTURE.md): the index reports the owner
names each change touched (`ZoneIndex.subscribe`) and the new serial (`subscribe_serial`); the
signer then re-signs exactly the RRsets of those names whose content changed, and updates the
NSEC3 chain of their zone by touching the name and its predecessor only (an insert or delete
changes one "next hashed owner" field), so the cost of an event is proportional to the event,
and a query never signs anything: answers (`augment`) only copy pre-made RRSIG and NSEC3 rdata.

DNSKEY, CDS, CDNSKEY (RFC 7344) and NSEC3PARAM are ordinary RRsets of the apex, put into the index
through `ZoneIndex.put_extra`, so that transfers, the journal and DO=0 answers to those types see
them like any other data. NSEC3 follows RFC 9276: SHA-1, 0 extra iterations, empty salt, no
opt-out. Signatures are valid from an hour back (clock skew) for `VALIDITY` (Knot's 14 days).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dnsd.dnssec import DNSKEY, NSEC3, NSEC3PARAM, RRSIG
from dnsd.dnssec.keys import Key
from dnsd.dnssec.nsec3 import b32, hash_name
from dnsd.dnssec.records import encode_type_bitmap
from dnsd.wire import NXDOMAIN, Response, text_to_wire
from dnsd.zone import SOA, SRV, Rdata, ZoneApex, ZoneIndex

CDS, CDNSKEY = 59, 60
#: Signature validity and refresh (Knot's defaults: 14 days, refreshed 7 days before expiry).
VALIDITY = 14 * 86400
REFRESH = 7 * 86400
INCEPTION_OFFSET = 3600
#: NSEC3PARAM of RFC 9276: SHA-1, flags 0, 0 iterations, empty salt.
NSEC3PARAM_RDATA = b"\x01\x00\x00\x00\x00"
_NSEC3_HEAD = b"\x01\x00\x00\x00\x00\x14"  # algorithm 1, no opt-out, 0 iterations, no salt, 20-octet hash


def rdata_wire(rtype: int, rdata: Any) -> bytes:
    """Uncompressed wire rdata of one record as the zone index holds it."""
    if isinstance(rdata, bytes):
        return rdata
    if isinstance(rdata, str):
        return text_to_wire(rdata)
    if rtype == SRV:
        priority, weight, port, target = rdata
        return struct.pack("!HHH", priority, weight, port) + text_to_wire(target)
    if rtype == SOA:
        mname, rname, serial, refresh, retry, expire, minimum = rdata
        return text_to_wire(mname) + text_to_wire(rname) + struct.pack("!IIIII", serial, refresh, retry,
                                                                        expire, minimum)
    raise ValueError(f"no wire form for type {rtype}")


def _identity(key: Key) -> tuple[object, ...]:
    """A key with its timing: a key file whose times were edited counts as changed."""
    return key.dnskey_rdata, key.flags, key.publish, key.activate, key.inactive, key.delete


@dataclass(slots=True)
class _Chain:
    """One zone's NSEC3 chain: sorted owner hashes, and per hash its name, types, rdata, RRSIGs."""

    apex: str
    hashes: list[bytes] = field(default_factory=list)
    names: dict[bytes, str] = field(default_factory=dict)
    types: dict[bytes, frozenset[int]] = field(default_factory=dict)
    records: dict[bytes, tuple[str, bytes, tuple[bytes, ...]]] = field(default_factory=dict)  # owner, rdata, sigs
    #: per hash, the NSEC3 RR and its RRSIGs pre-encoded for the fast path (`Signer.denial_wire`): the
    #: owner's first label with its length octet, the owner label's text, the NSEC3's type, class, TTL
    #: and rdata, and each RRSIG's; their encoded length and record count. Owner names after the first
    #: label are pointers, filled in per reply
    wire: dict[bytes, tuple[bytes, str, bytes, tuple[bytes, ...], int, int]] = field(default_factory=dict)
    #: moves on every insert and delete of a hash: what `enclosers` entries are checked against
    version: int = 0
    #: closest encloser -> (version, its matching NSEC3's hash, the hash of the NSEC3 covering its
    #: wildcard): the part of an NXDOMAIN proof fixed per encloser, found once per chain version
    enclosers: dict[str, tuple[int, bytes | None, bytes]] = field(default_factory=dict)


class Signer:
    """Signs every served zone that has keys in `keys`; see the module docstring."""

    def __init__(self, zone: ZoneIndex, keys: list[Key], clock: Callable[[], float] = time.time) -> None:
        self.zone = zone
        self.clock = clock
        self.keys = keys
        self.apexes = {apex.name: apex for apex in zone.apexes if any(k.zone == apex.name for k in keys)}
        self._sigs: dict[tuple[str, int], tuple[bytes, ...]] = {}
        self._signed: dict[str, dict[int, tuple[int, tuple[Rdata, ...]]]] = {}
        self._chains = {name: _Chain(name) for name in self.apexes}
        self._hash_of: dict[str, bytes] = {}
        self.signatures_made = 0
        self.on_resign: Callable[[set[str]], None] | None = None  # the handler's cache invalidation
        # (expiration, name, rtype) in signing order, which is expiry order: what `tick` refreshes.
        self._expiries: deque[tuple[int, str, int]] = deque()
        self._window = (0, 0)
        self._set_window()
        self._key_state = self._state()
        for apex in self.apexes:
            zone.put_extra(("dnssec", apex), self._apex_records(apex))
        zone.subscribe(self.changed)
        zone.subscribe_serial(self._serial_moved)
        self.changed(set(zone.names()))
        self._serial_moved()

    # ---- keys ------------------------------------------------------------------------------------

    def _set_window(self) -> None:
        now = int(self.clock())
        self._window = (now - INCEPTION_OFFSET, now + VALIDITY)

    def _state(self) -> tuple[tuple[int, bool, bool], ...]:
        """Which keys are published and active now: when this changes, the apex and every RRSIG do."""
        now = self.clock()
        return tuple((k.tag, k.published(now), k.active(now)) for k in self.keys)

    def tick(self, keys: list[Key] | None = None, budget: int = 2000) -> int:
        """Periodic work (about once a minute): key timing and rollovers, then signature refresh.

        `keys` is the key directory read again, so that a rollover is done by adding key files (their
        Publish/Activate/Inactive/Delete times then take effect here). When the published or active
        set changes, the apex RRsets (DNSKEY, CDS, CDNSKEY) are replaced and everything is re-signed
        with the new signing keys. Otherwise at most `budget` RRsets whose signatures expire within
        `REFRESH` are re-signed, oldest first, so that refreshing a large zone is spread over many
        ticks instead of stalling answers. Returns the number of RRsets re-signed.
        """
        if keys is not None and [_identity(k) for k in keys] != [_identity(k) for k in self.keys]:
            self.keys = keys
            self._key_state = ()
        self._set_window()
        state = self._state()
        if state != self._key_state:
            self._key_state = state
            return self._resign_all()
        horizon = int(self.clock()) + REFRESH
        names: set[str] = set()
        done = 0
        while self._expiries and self._expiries[0][0] < horizon and done < budget:
            expiration, name, rtype = self._expiries.popleft()
            done += self._refresh_one(name, rtype, expiration, names)
        if names and self.on_resign is not None:
            self.on_resign(names)
        return done

    def _refresh_one(self, name: str, rtype: int, expiration: int, names: set[str]) -> int:
        apex = self._apex_of(name) if rtype != NSEC3 else name.split(".", 1)[1]
        if apex is None or apex not in self.apexes:
            return 0
        if rtype == NSEC3:
            chain = self._chains[apex]
            try:
                digest = base64.b32hexdecode(name.split(".", 1)[0].upper())
            except ValueError:
                return 0
            if digest not in chain.records:
                return 0
            self._resign_nsec3(chain, digest)
        elif rtype == SOA:
            self._serial_moved(self.apexes[apex])
        else:
            rrset = self._signed.get(name, {}).get(rtype)
            if rrset is None:
                return 0
            self._sigs[(name, rtype)] = self._sign(apex, name, rtype, rrset[0], rrset[1])
        names.add(name)
        return 1

    def _resign_all(self) -> int:
        for apex in self.apexes:
            self.zone.put_extra(("dnssec", apex), self._apex_records(apex))
        self._signed.clear()
        self._sigs.clear()
        self._expiries.clear()
        names = set(self.zone.names())
        self.changed(names)
        self._serial_moved()
        count = 0
        for chain in self._chains.values():
            for digest in chain.hashes:
                self._resign_nsec3(chain, digest)
                count += 1
        if self.on_resign is not None:
            self.on_resign(names)
        return count + len(names)

    def _zone_keys(self, apex: str) -> list[Key]:
        return [k for k in self.keys if k.zone == apex]

    def _signing_keys(self, apex: str, rtype: int) -> list[Key]:
        """KSK/CSK for the DNSKEY, CDS and CDNSKEY RRsets; ZSKs for the rest (CSKs when no ZSK)."""
        now = self.clock()
        active = [k for k in self._zone_keys(apex) if k.active(now)]
        if rtype in (DNSKEY, CDS, CDNSKEY):
            return [k for k in active if k.sep] or active
        return [k for k in active if not k.sep] or active

    def _apex_records(self, apex: str) -> dict[str, dict[int, tuple[int, tuple[Rdata, ...]]]]:
        now = self.clock()
        ttl = self.zone.config.ttl
        published = [k for k in self._zone_keys(apex) if k.published(now)]
        parent = [k for k in published if k.sep and k.active(now)]
        records: dict[int, tuple[int, tuple[Rdata, ...]]] = {
            DNSKEY: (ttl, tuple(k.dnskey_rdata for k in published)),
            NSEC3PARAM: (0, (NSEC3PARAM_RDATA,)),  # RFC 5155 4: TTL 0 is common (Knot, BIND)
        }
        if parent:
            records[CDS] = (ttl, tuple(k.ds_rdata() for k in parent))
            records[CDNSKEY] = (ttl, tuple(k.dnskey_rdata for k in parent))
        return {apex: records}

    # ---- signing -----------------------------------------------------------------------------------

    def _sign(self, apex: str, name: str, rtype: int, ttl: int, rdatas: tuple[Any, ...]) -> tuple[bytes, ...]:
        owner = text_to_wire(name)
        wire = [rdata_wire(rtype, r) for r in rdatas]
        inception, expiration = self._window
        sigs = tuple(k.sign(owner, rtype, ttl, wire, inception, expiration) for k in self._signing_keys(apex, rtype))
        self.signatures_made += len(sigs)
        if sigs:
            expiries = self._expiries
            expiries.append((expiration, name, rtype))
            if len(expiries) > 4 * len(self._sigs) + 4096:
                self._compact()
        return sigs

    def _compact(self) -> None:
        """Drop superseded entries (an RRset signed again later, or gone) from the refresh queue."""
        seen: set[tuple[str, int]] = set()
        kept: list[tuple[int, str, int]] = []
        for entry in reversed(self._expiries):
            key = (entry[1], entry[2])
            if key not in seen:
                seen.add(key)
                kept.append(entry)
        self._expiries = deque(reversed(kept))

    @property
    def next_expiry(self) -> int | None:
        """The earliest expiration among the signatures served (for the metric)."""
        return self._expiries[0][0] if self._expiries else None

    def _apex_of(self, name: str) -> str | None:
        found = self.zone.find_apex(name)
        if found is None or found.name not in self.apexes:
            return None
        return found.name

    def changed(self, names: set[str]) -> None:
        """Re-sign the changed RRsets of `names` and update the NSEC3 chain (a zone subscriber)."""
        touched: set[str] = set()
        for name in names:
            apex = self._apex_of(name)
            if apex is None:
                continue
            touched.add(name)
            present = self.zone.rrsets_at(name)
            signed = self._signed.get(name)
            if signed is None:
                if not present:
                    continue
                signed = self._signed[name] = {}
            for rtype in [t for t in signed if t not in present]:
                del signed[rtype]
                self._sigs.pop((name, rtype), None)
            for rtype, rrset in present.items():
                if signed.get(rtype) == rrset:
                    continue
                signed[rtype] = rrset
                self._sigs[(name, rtype)] = self._sign(apex, name, rtype, rrset[0], rrset[1])
            if not signed:
                del self._signed[name]
            # Ancestors up to the apex may have become (or stopped being) empty non-terminals.
            parts = name.split(".")
            for i in range(1, len(parts)):
                ancestor = ".".join(parts[i:])
                touched.add(ancestor)
                if ancestor == apex:
                    break
        # The chain first, then each NSEC3 record it needs signed once: a batch that inserts many names
        # (the first full state) would otherwise sign a predecessor again for every name inserted after it.
        pending: dict[str, set[bytes]] = {}
        for name in touched:
            apex = self._apex_of(name)
            if apex is not None:
                self._update_chain(self._chains[apex], name, pending.setdefault(apex, set()))
        for apex, digests in pending.items():
            chain = self._chains[apex]
            for digest in digests:
                if digest in chain.names:
                    self._resign_nsec3(chain, digest)

    def _serial_moved(self, zone: ZoneApex | None = None, serial: int | None = None) -> None:
        """A zone's SOA (synthesized by the index, not stored) is re-signed for its new serial (None: every zone)."""
        for apex, found in self.apexes.items():
            if zone is None or zone.name == apex:
                soa = self.zone.soa_rdata(found)
                self._sigs[(apex, SOA)] = self._sign(apex, apex, SOA, self.zone.config.ttl, (soa,))

    # ---- NSEC3 -------------------------------------------------------------------------------------

    def _nsec3_ttl(self) -> int:
        return min(self.zone.config.ttl, self.zone.config.negative_ttl)  # RFC 9077

    def _update_chain(self, chain: _Chain, name: str, pending: set[bytes]) -> None:
        """Insert, remove or retype `name`'s hash; the NSEC3 records to sign again go to `pending`."""
        digest = self._hash_of.get(name)
        exists = self.zone.exists(name) or name == chain.apex
        if not exists:
            if digest is None:
                return
            del self._hash_of[name]
            i = bisect.bisect_left(chain.hashes, digest)
            del chain.hashes[i]
            chain.version += 1
            del chain.names[digest]
            del chain.types[digest]
            chain.records.pop(digest, None)  # (not signed yet when it came in this same batch)
            chain.wire.pop(digest, None)
            pending.discard(digest)
            if chain.hashes:
                pending.add(chain.hashes[(i - 1) % len(chain.hashes)])
            return
        types = set(self.zone.types_at(name))
        if name == chain.apex:
            types.add(SOA)
        if types:
            types.add(RRSIG)
        frozen = frozenset(types)
        if digest is None:
            digest = hash_name(text_to_wire(name), b"", 0)
            self._hash_of[name] = digest
            i = bisect.bisect_left(chain.hashes, digest)
            chain.hashes.insert(i, digest)
            chain.version += 1
            chain.names[digest] = name
            chain.types[digest] = frozen
            pending.add(digest)
            if len(chain.hashes) > 1:
                pending.add(chain.hashes[(i - 1) % len(chain.hashes)])
        elif chain.types.get(digest) != frozen:
            chain.types[digest] = frozen
            pending.add(digest)

    def _resign_nsec3(self, chain: _Chain, digest: bytes) -> None:
        i = bisect.bisect_left(chain.hashes, digest)
        following = chain.hashes[(i + 1) % len(chain.hashes)]
        rdata = _NSEC3_HEAD + following + encode_type_bitmap(chain.types[digest])
        label = b32(digest).decode()
        owner = label + "." + chain.apex
        ttl = self._nsec3_ttl()
        sigs = self._sign(chain.apex, owner, NSEC3, ttl, (rdata,))
        chain.records[digest] = (owner, rdata, sigs)
        head = bytes((len(label),)) + label.encode()
        nsec3 = struct.pack("!HHIH", NSEC3, 1, ttl, len(rdata)) + rdata
        signed = tuple(struct.pack("!HHIH", RRSIG, 1, ttl, len(sig)) + sig for sig in sigs)
        size = len(head) + 2 + len(nsec3) + sum(len(sig) + 2 for sig in signed)
        chain.wire[digest] = (head, label, nsec3, signed, size, 1 + len(signed))

    def _matching(self, chain: _Chain, name: str) -> bytes | None:
        digest = self._hash_of.get(name)
        return digest if digest is not None and digest in chain.records else None

    def _covering(self, chain: _Chain, name: str) -> bytes | None:
        if not chain.hashes:
            return None
        digest = hash_name(text_to_wire(name), b"", 0)
        i = bisect.bisect_right(chain.hashes, digest) - 1
        return chain.hashes[i % len(chain.hashes)]

    # ---- answers -----------------------------------------------------------------------------------

    def augment(self, response: Response, qname: str) -> None:
        """Add RRSIGs to every signed RRset of `response` and the NSEC3 proofs of a denial (DO=1)."""
        final = qname
        for _owner, rtype, _ttl, rdata in response.answer:
            if rtype == 5 and isinstance(rdata, str):
                final = rdata
        apex = self._apex_of(final)
        if apex is not None and not any(r[0] == final and r[1] != 5 for r in response.answer):
            chain = self._chains[apex]
            if response.rcode == NXDOMAIN:
                digests = self._denial(chain, final, True)
            elif response.rcode == 0 and response.authority and response.authority[0][1] == SOA:
                digests = self._denial(chain, final, False)
            else:
                digests = []
            for digest in digests:
                self._add_nsec3(chain, digest, response)
        response.answer = list(self._with_sigs(response.answer))
        response.authority = list(self._with_sigs(response.authority))
        response.additional = list(self._with_sigs(response.additional))

    def _denial(self, chain: _Chain, qname: str, nxdomain: bool, qname_wire: bytes | None = None) -> list[bytes]:
        """The hashes of the NSEC3 records that deny `qname`, in the order answers carry them.

        NXDOMAIN (RFC 5155 7.2.2): the closest encloser matched, the next closer name and the wildcard
        at the encloser covered, each once. NODATA (7.2.3): the name's own NSEC3. The slow path
        (`augment`) and the fast path (`denial_wire`) both take them from here, so they agree.
        """
        if not nxdomain:
            found = self._matching(chain, qname)
            return [] if found is None else [found]
        apex = chain.apex
        encloser = apex
        exists = self.zone.exists
        start = 0  # where the next closer name starts: in the text, and (plain names) in the wire form
        dot = qname.find(".")
        while dot >= 0:
            candidate = qname[dot + 1 :]
            if candidate == apex or exists(candidate):
                encloser = candidate
                break
            start = dot + 1
            dot = qname.find(".", start)
        else:
            start = 0
        hashes = chain.hashes
        if not hashes:
            return []
        if qname_wire is not None:  # the caller's lower-case wire form of the plain name: a suffix of it
            next_hash = hashlib.sha1(qname_wire[start:], usedforsecurity=False).digest()
        else:
            next_hash = hash_name(text_to_wire(qname[start:]), b"", 0)
        count = len(hashes)
        fixed = chain.enclosers.get(encloser)
        if fixed is None or fixed[0] != chain.version:
            if len(chain.enclosers) >= 65_536:
                chain.enclosers.clear()
            wildcard = hash_name(text_to_wire("*." + encloser), b"", 0)
            fixed = chain.enclosers[encloser] = (chain.version, self._matching(chain, encloser),
                                                 hashes[(bisect.bisect_right(hashes, wildcard) - 1) % count])
        _, match, wildcard_cover = fixed
        cover = hashes[(bisect.bisect_right(hashes, next_hash) - 1) % count]
        digests = [match] if match is not None else []
        if cover not in digests:
            digests.append(cover)
        if wildcard_cover not in digests:
            digests.append(wildcard_cover)
        return digests

    def _add_nsec3(self, chain: _Chain, digest: bytes, response: Response) -> None:
        owner, rdata, sigs = chain.records[digest]
        ttl = self._nsec3_ttl()
        response.authority.append((owner, NSEC3, ttl, rdata))
        response.authority.extend((owner, RRSIG, ttl, sig) for sig in sigs)

    def denial_wire(self, apex: str, qname: str, nxdomain: bool, apex_at: int, at: int,
                    qname_wire: bytes | None = None) -> tuple[bytes, int] | None:
        """The NSEC3 records (with RRSIGs) denying `qname`, encoded as the slow path's encoder writes
        them at offset `at` of a reply whose question holds the apex's labels at `apex_at`; and how
        many records that is. For the fast path's DO=1 NXDOMAIN and NODATA (`handler.SignedDenial`).

        Owner names are compressed as `wire.encode` compresses them: the hash label, then a pointer
        to the apex in the question; each RRSIG's owner a pointer to its NSEC3's. None when the query
        name itself ends in one of these owner names (the encoder would point into the question
        there): the slow path answers such a name. A query never signs: the records and signatures
        are the ones `_resign_nsec3` encoded when the chain last changed, so this is hashing (the
        next closer and the wildcard), two bisects and a join.
        """
        chain = self._chains.get(apex)
        if chain is None:
            return b"", 0
        to_apex = (0xC000 | apex_at).to_bytes(2)
        parts: list[bytes] = []
        count = 0
        wire = chain.wire
        for digest in self._denial(chain, qname, nxdomain, qname_wire):
            label, text, nsec3, sigs, size, records = wire[digest]
            if at >= 0x4000 or text in qname:
                # The encoder no longer remembers names this far in; or the question may hold this
                # owner name (then the encoder points into it): either way the slow path answers.
                return None
            to_owner = (0xC000 | at).to_bytes(2)
            parts += (label, to_apex, nsec3, to_owner, to_owner.join(sigs)) if sigs else (label, to_apex, nsec3)
            at += size
            count += records
        return b"".join(parts), count

    def _with_sigs(self, records: list) -> Iterator:  # type: ignore[type-arg]
        sigs = self._sigs
        for i, record in enumerate(records):
            yield record
            owner, rtype = record[0], record[1]
            if rtype in (RRSIG, NSEC3):
                continue
            following = records[i + 1] if i + 1 < len(records) else None
            if following is not None and following[0] == owner and following[1] == rtype:
                continue  # the RRSIGs follow the last record of their RRset
            for sig in sigs.get((owner, rtype), ()):
                yield owner, RRSIG, record[2], sig

    # ---- transfers ---------------------------------------------------------------------------------

    def transfer_records(self, apex: ZoneApex, rtype_records: Iterator[tuple[str, int, int, object]]
                         ) -> Iterator[tuple[str, int, int, object]]:
        """The zone's records with their RRSIGs, then the NSEC3 chain (for AXFR)."""
        if apex.name not in self.apexes:
            yield from rtype_records
            return
        pending: list[tuple[str, int, int, object]] = []
        for record in rtype_records:
            if pending and (pending[-1][0], pending[-1][1]) != (record[0], record[1]):
                yield from self._with_sigs(pending)
                pending = []
            pending.append(record)
        if pending:
            yield from self._with_sigs(pending)
        chain = self._chains[apex.name]
        ttl = self._nsec3_ttl()
        for digest in chain.hashes:
            owner, rdata, sigs = chain.records[digest]
            yield owner, NSEC3, ttl, rdata
            for sig in sigs:
                yield owner, RRSIG, ttl, sig

    def soa_signatures(self, apex: str) -> tuple[bytes, ...]:
        return self._sigs.get((apex, SOA), ())
