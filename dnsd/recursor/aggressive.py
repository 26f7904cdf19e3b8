"""Aggressive use of the DNSSEC-validated cache (RFC 8198): negative answers synthesized from cached
NSEC and NSEC3 ranges.

Why: a random-subdomain flood against a signed zone asks names that never repeat, so the answer
cache never hits and every query would reach the victim's servers. One validated NXDOMAIN, though,
proves a whole range of names absent; kept, it answers every later name in the range without an
upstream query (Unbound's `aggressive-nsec`, on by default there too).

What is kept (`learn`): only the authority section of a negative answer that the validator judged
secure as a whole (never insecure, bogus or unchecked data: those never reach `learn`), per zone
(the SOA owner, which must also be the signer of every record kept): the NSEC or NSEC3 records with
their RRSIGs, and the zone's SOA with its RRSIG for the answers made from them. A record lives for
min(its TTL, its RRSIG's original TTL, the SOA's TTL and MINIMUM, the RRSIG's remaining validity)
(RFC 8198 section 5, RFC 9077 section 3), counted on the monotonic clock. Memory is bounded: at most
`MAX_RANGES_PER_ZONE` records per zone (expired ones are dropped first, then the zone starts over) and
`max_ranges` in all (the least recently used zone goes first).

What is answered (`answer`): the deepest cached zone holding the name decides; the few records a
proof needs are picked from the sorted ranges (RFC 4034 6.1 canonical order for NSEC, hash order
for NSEC3, the last record wrapping round to the first) and the proof itself is checked by the same
functions the validator uses (`dnsd.dnssec.nsec`, `dnsd.dnssec.nsec3`), so a synthesized answer
proves exactly what an upstream one would have to. NXDOMAIN needs the name covered and the wildcard
at its closest encloser covered (NSEC3: closest encloser matched, next closer covered, no opt-out);
NODATA needs the name's own record without the type and without CNAME (or an empty non-terminal, or
a matching wildcard without the type). Anything the ranges cannot prove (an existing wildcard that
has the type, a name below a delegation, a range not seen yet) returns None: the query goes upstream.
Negative trust anchors and `--dnssec-validation off` are the caller's to check (the validator knows
both). Answers are counted in `dnsd_aggressive_answers_total{kind,proof}`.

Cost: a flood's names differ but fall into a handful of ranges, and what a pair of ranges proves
depends only on the records, the closest encloser, whether the name is an empty non-terminal (NSEC)
or which ranges cover the next closer name (NSEC3), and the type; so each outcome is worked out once
by the proof functions and remembered per zone (`MAX_MEMO`, dropped when a record changes), as are
the NSEC3 hashes of ancestors. A synthesized answer costs about 25 µs here (one NSEC3 hash of the
name, a sort key, two bisections, dictionary lookups), not the 140 µs of re-running the proof.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnsd import metrics
from dnsd.dnssec import NSEC, NSEC3, RRSIG, nsec, nsec3, records
from dnsd.dnssec.canonical import from_labels, labels, order_key
from dnsd.dnssec.records import FormatError
from dnsd.recursor.cache import Answer
from dnsd.recursor.message import NOERROR, NXDOMAIN, RR, SOA, key, soa_minimum

#: Records kept per zone: a flood teaches at most one or two new ranges per query, and a real zone's
#: chain is rarely longer than this where it matters.
MAX_RANGES_PER_ZONE = 10_000
#: Records kept in all (each is a few hundred bytes with its RRSIG).
MAX_RANGES = 100_000
#: Names deeper than this below their zone are not tried (each label may cost an NSEC3 hash).
MAX_DEPTH = 16
#: Remembered proof outcomes and ancestor hashes per zone (cleared when full).
MAX_MEMO = 4096
#: NSEC sort keys are label tuples (RFC 4034 6.1), NSEC3 ones hashes: each zone holds one kind.
SortKey = Any
_ANY = 255
_SECURE = 1  # validator.SECURE (the validator imports this package's cache; no import cycle here)


@dataclass(slots=True)
class _Range:
    owner: bytes
    record: records.Nsec | records.Nsec3
    rrs: tuple[RR, ...]  # the NSEC/NSEC3 record and its RRSIGs
    expires: float
    sort_key: SortKey = None
    next_key: SortKey = None  # the sort key of the next name (NSEC) or the next hash (NSEC3)

    def covers(self, k: SortKey) -> bool:
        """Whether `k` lies strictly inside owner..next (the last range wraps round to the first)."""
        o, n = self.sort_key, self.next_key
        return bool(o < k < n) if o < n else bool(k > o or k < n)


@dataclass(slots=True)
class _Zone:
    apex: bytes
    kind: int  # NSEC or NSEC3
    params: tuple[int, bytes] | None = None  # NSEC3 (iterations, salt)
    soa: tuple[RR, ...] = ()
    soa_expires: float = 0.0
    sort_keys: list[SortKey] = field(default_factory=list)
    ranges: dict[SortKey, _Range] = field(default_factory=dict)
    #: proof outcomes already worked out (see `AggressiveCache._nsec`), and NSEC3 hashes of ancestors
    memo: dict[tuple[object, ...], int | None] = field(default_factory=dict)
    hashes: dict[bytes, bytes] = field(default_factory=dict)

    def put(self, sort_key: SortKey, entry: _Range, now: float) -> int:
        """Add or refresh one range; returns how many ranges were added (1) or removed (negative)."""
        old = self.ranges.get(sort_key)
        if old is not None:
            if old.record != entry.record:
                self.memo.clear()  # the zone changed: outcomes worked out from the old record go
            self.ranges[sort_key] = entry
            return 0
        removed = 0
        if len(self.ranges) >= MAX_RANGES_PER_ZONE:
            removed = self.purge(now)
            if len(self.ranges) >= MAX_RANGES_PER_ZONE:
                removed -= len(self.ranges)
                self.ranges.clear()
                self.sort_keys.clear()
        bisect.insort(self.sort_keys, sort_key)
        self.ranges[sort_key] = entry
        return 1 + removed

    def purge(self, now: float) -> int:
        """Drop expired ranges; returns minus the number dropped."""
        dead = [k for k, r in self.ranges.items() if r.expires <= now]
        for k in dead:
            del self.ranges[k]
        if dead:
            self.sort_keys = sorted(self.ranges)
        return -len(dead)

    def before(self, sort_key: SortKey, now: float) -> _Range | None:
        """The live range at or before `sort_key` in the zone's order, wrapping round to the last."""
        if not self.sort_keys:
            return None
        i = bisect.bisect_right(self.sort_keys, sort_key) - 1
        found = self.ranges[self.sort_keys[i]]  # i == -1: the last range (it may wrap round)
        return found if found.expires > now else None


class AggressiveCache:
    """Validated NSEC/NSEC3 ranges per zone; see the module docstring."""

    def __init__(self, max_ranges: int = MAX_RANGES, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.max_ranges = max_ranges
        self.clock = clock
        self.wall = wall
        self.size = 0
        self._zones: OrderedDict[bytes, _Zone] = OrderedDict()
        self._counters = {(rcode, kind): metrics.AGGRESSIVE_ANSWERS.labels(
            kind="nxdomain" if rcode == NXDOMAIN else "nodata", proof="nsec" if kind == NSEC else "nsec3")
            for rcode in (NOERROR, NXDOMAIN) for kind in (NSEC, NSEC3)}

    def __len__(self) -> int:
        return self.size

    # ---- learning -----------------------------------------------------------------------------

    def learn(self, answer: Answer) -> None:
        """Keep the proof of a negative answer that the validator judged secure (see above)."""
        if answer.security != _SECURE or answer.answer or answer.rcode not in (NOERROR, NXDOMAIN):
            return
        soa = next((rr for rr in answer.authority if rr.rtype == SOA), None)
        if soa is None:
            return
        apex = key(soa.owner)
        now, wall = self.clock(), self.wall()
        sigs: dict[tuple[bytes, int], list[tuple[RR, records.Rrsig]]] = {}
        for rr in answer.authority:
            if rr.rtype != RRSIG:
                continue
            try:
                sig = records.rrsig(rr.rdata)
            except FormatError:
                continue
            if key(sig.signer) == apex:
                sigs.setdefault((key(rr.owner), sig.type_covered), []).append((rr, sig))
        soa_sigs = sigs.get((apex, SOA))
        if not soa_sigs:
            return
        try:
            cap = min(soa.ttl, soa_minimum(soa.rdata))
        except (IndexError, ValueError, struct.error):  # a short SOA rdata
            return
        soa_life = _lifetime([soa], soa_sigs, cap, wall)
        if soa_life <= 0:
            return
        zone: _Zone | None = None
        for rr in answer.authority:
            if rr.rtype not in (NSEC, NSEC3) or not nsec.is_subdomain(rr.owner, apex):
                continue
            owner = key(rr.owner)
            covering = sigs.get((owner, rr.rtype))
            if not covering:
                continue
            parsed = _parse(rr, apex)
            if parsed is None:
                continue
            sort_key, record = parsed
            life = _lifetime([rr], covering, cap, wall)
            if life <= 0:
                continue
            if zone is None:
                zone = self._zone(apex, rr.rtype, record)
                if zone is None:
                    return
            if zone.kind != rr.rtype or (isinstance(record, records.Nsec3)
                                         and zone.params != (record.iterations, record.salt)):
                continue  # one chain per zone: records of another flavour or parameter set are not mixed
            next_key = (order_key(key(record.next_name)) if isinstance(record, records.Nsec)
                        else record.next_hash)
            entry = _Range(owner, record, (rr, *(s for s, _ in covering)), now + life, sort_key, next_key)
            self.size += zone.put(sort_key, entry, now)
        if zone is None:
            return
        if now + soa_life >= zone.soa_expires:
            zone.soa = (soa, *(s for s, _ in soa_sigs))
            zone.soa_expires = now + soa_life
        while self.size > self.max_ranges and self._zones:
            _, oldest = self._zones.popitem(last=False)
            self.size -= len(oldest.ranges)

    def _zone(self, apex: bytes, kind: int, record: records.Nsec | records.Nsec3) -> _Zone | None:
        zone = self._zones.get(apex)
        params = (record.iterations, record.salt) if isinstance(record, records.Nsec3) else None
        if zone is None or zone.kind != kind or zone.params != params:
            if zone is not None:  # the zone changed flavour or NSEC3 parameters: start over
                self.size -= len(zone.ranges)
            zone = self._zones[apex] = _Zone(apex, kind, params)
        self._zones.move_to_end(apex)
        return zone

    # ---- answering ----------------------------------------------------------------------------

    def answer(self, qname: bytes, qtype: int) -> Answer | None:
        """A secure NXDOMAIN or NODATA for (qname, qtype) from the cached ranges, or None."""
        if not self._zones:
            return None
        name = key(qname)
        zone = None
        offset = depth = 0
        while True:  # each suffix of a wire name is the wire form of an ancestor
            zone = self._zones.get(name[offset:])
            if zone is not None or offset >= len(name) or not name[offset]:
                break
            offset += 1 + name[offset]
            depth += 1
        if zone is not None and depth > MAX_DEPTH:
            return None
        if zone is None or (qtype == nsec.DS and name == zone.apex):
            return None  # a zone's own records say nothing about its DS, which its parent holds
        now = self.clock()
        if zone.soa_expires <= now:
            return None
        found = self._nsec(zone, name, qtype, now) if zone.kind == NSEC else self._nsec3(zone, name, qtype, now)
        if found is None:
            return None
        rcode, used = found
        if rcode == NOERROR and qtype == _ANY:
            return None  # no type bitmap lacks "ANY": an existing name's records come from upstream
        self._zones.move_to_end(zone.apex)
        expires = min(zone.soa_expires, *(r.expires for r in used))
        ttl = max(1, int(expires - now))
        authority = [rr._replace(ttl=ttl) for rr in zone.soa]
        seen: set[bytes] = set()
        for r in used:
            if r.owner not in seen:
                seen.add(r.owner)
                authority += [rr._replace(ttl=ttl) for rr in r.rrs]
        self._counters[(rcode, zone.kind)].inc()
        return Answer(rcode, (), tuple(authority), _SECURE)

    def _nsec(self, zone: _Zone, name: bytes, qtype: int, now: float) -> tuple[int, list[_Range]] | None:
        """NSEC: the range at or before the name, and the one at or before the wildcard at its closest
        encloser. Which of them prove what depends only on the two records, the closest encloser,
        whether the name is an empty non-terminal and the type, so the outcome is worked out once per
        such key with `dnsd.dnssec.nsec` (the validator's own functions) and remembered: a flood of
        random names under one range costs a sort key, two bisections and a dictionary lookup each."""
        nk = order_key(name)
        first = zone.before(nk, now)
        if first is None or not isinstance(first.record, records.Nsec):
            return None
        record = first.record
        if first.sort_key == nk:  # the name's own record
            if nsec.nodata([(first.owner, record)], name, qtype, zone.apex):
                return NOERROR, [first]
            return None
        if not first.covers(nk):
            return None
        o, n = first.sort_key, first.next_key
        if ((nsec.NS in record.types and nsec.SOA not in record.types) or nsec.DNAME in record.types) \
                and nk[:len(o)] == o:
            return None  # below a delegation or a DNAME: the parent's record proves nothing there
        ce = max(_common(nk, o), _common(nk, n), key=len)
        ent = len(n) > len(nk) and n[:len(nk)] == nk  # the next name lies below: an empty non-terminal
        wildcard = zone.before((*ce, b"*"), now)
        used = [first] if wildcard is None or wildcard is first else [first, wildcard]
        memo_key = (o, None if wildcard is None else wildcard.sort_key, ce, ent, qtype)
        if memo_key in zone.memo:
            rcode = zone.memo[memo_key]
        else:
            proof = [(r.owner, r.record) for r in used]
            rcode = None
            if nsec.nodata(proof, name, qtype, zone.apex):  # type: ignore[arg-type]
                rcode = NOERROR
            elif not ent and nsec.nxdomain(proof, name, zone.apex):  # type: ignore[arg-type]
                rcode = NXDOMAIN
            if len(zone.memo) >= MAX_MEMO:
                zone.memo.clear()
            zone.memo[memo_key] = rcode
        return None if rcode is None else (rcode, used)

    def _nsec3(self, zone: _Zone, name: bytes, qtype: int, now: float) -> tuple[int, list[_Range]] | None:
        """NSEC3: closest encloser by hashing the ancestors (their hashes remembered per zone), the
        ranges at or before the next closer's and the wildcard's hashes; the outcome, worked out by
        `dnsd.dnssec.nsec3` on a chain of just those records, is remembered per ranges, closest
        encloser, which ranges cover the next closer, and type."""
        if zone.params is None:
            return None
        iterations, salt = zone.params
        parts = labels(name)
        depth = len(parts) - len(labels(zone.apex))

        def hashed(n: bytes, keep: bool = True) -> bytes:
            found = zone.hashes.get(n)
            if found is None:
                found = nsec3.hash_name(n, salt, iterations)
                if keep:
                    if len(zone.hashes) >= MAX_MEMO:
                        zone.hashes.clear()
                    zone.hashes[n] = found
            return found

        def live(h: bytes) -> _Range | None:
            found = zone.ranges.get(h)
            return found if found is not None and found.expires > now else None

        own_hash = hashed(name, keep=False)  # flood names never repeat: not worth remembering
        own = live(own_hash)
        if own is not None:
            used = [own]
            memo_key: tuple[object, ...] | None = None
        else:
            for i in range(1, depth + 1):
                ancestor = from_labels(parts[i:])
                ce = live(hashed(ancestor))
                if ce is not None:
                    nc_hash = own_hash if i == 1 else hashed(from_labels(parts[i - 1:]))
                    next_closer = zone.before(nc_hash, now)
                    wild_hash = hashed(b"\x01*" + ancestor)
                    wildcard = live(wild_hash) or zone.before(wild_hash, now)
                    used = [r for r in (ce, next_closer, wildcard) if r is not None]
                    covering = tuple(r.covers(nc_hash) for r in used)
                    if not any(covering):
                        return None
                    memo_key = (ancestor, *(r.sort_key for r in used), covering, qtype)
                    break
            else:
                return None
        if memo_key is not None and memo_key in zone.memo:
            rcode = zone.memo[memo_key]
        else:
            chain = nsec3.Chain(zone.apex, [(r.owner, r.rrs[0].rdata) for r in used])
            rcode = None
            try:
                if nsec3.nodata(chain, name, qtype) == nsec3.PROVEN:
                    rcode = NOERROR
                elif own is None and nsec3.nxdomain(chain, name) == nsec3.PROVEN:
                    rcode = NXDOMAIN
            except nsec3.HashBudgetExceeded:
                return None
            if memo_key is not None:
                if len(zone.memo) >= MAX_MEMO:
                    zone.memo.clear()
                zone.memo[memo_key] = rcode
        return None if rcode is None else (rcode, used)


def _common(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The common ancestor of two names given as sort keys (labels from the root down)."""
    i = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        i += 1
    return a[:i]


def _parse(rr: RR, apex: bytes) -> tuple[SortKey, records.Nsec | records.Nsec3] | None:
    """(sort key, parsed record) of an NSEC or NSEC3 record of zone `apex`, or None."""
    try:
        if rr.rtype == NSEC:
            return order_key(key(rr.owner)), records.nsec(rr.rdata)
        parts = labels(key(rr.owner))
        if not parts or from_labels(parts[1:]) != apex:
            return None
        record = records.nsec3(rr.rdata)
        if record.algorithm != nsec3.SHA1 or record.flags & 0xFE or record.iterations > nsec3.MAX_ITERATIONS:
            return None
        owner_hash = base64.b32hexdecode(parts[0].upper() + b"=" * (-len(parts[0]) % 8))
        return owner_hash, record
    except (FormatError, binascii.Error, ValueError, IndexError):
        return None


def _lifetime(rrs: list[RR], sigs: list[tuple[RR, records.Rrsig]], cap: int, wall: float) -> float:
    """min(record TTLs, RRSIG original TTL, `cap`, RRSIG validity left) over the best signature."""
    best = 0.0
    for _, sig in sigs:
        left = (sig.expiration - int(wall)) % 2**32
        if left >= 2**31:
            continue  # expired (serial arithmetic, RFC 4034 3.1.5)
        best = max(best, min(cap, sig.original_ttl, left, *(rr.ttl for rr in rrs)))
    return best
