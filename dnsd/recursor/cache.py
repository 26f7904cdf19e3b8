"""The answer cache shared by iterate and forward mode: positive and negative (RFC 2308) answers.

Keyed by (case-folded wire qname, qtype). A name's NXDOMAIN, which RFC 2308 section 5 says covers
every type, is held under the type `NAME_WIDE` (-1), outside the 16-bit qtype space, so that no
query can reach or overwrite it (qtype 0 used to be that slot: one TYPE0 query then made a name
NODATA for every type). Resolution failures are cached briefly too (RFC 9520: `put_failure`,
`Answer(SERVFAIL)`), so that a name whose servers fail is not asked again for every client.

Each entry holds the answer as `RR` tuples. The pre-encoded form (`wire`, answer then authority
records, owners equal to the qname written as the pointer 0xC00C, with the offsets of every TTL)
is built on demand by `Entry.wire`/`Entry.patched` rather than stored: keeping both doubled the
memory of every entry.

Size is bounded twice, by entry count and by bytes (`footprint`: the objects an entry keeps alive,
parsed records included, as tracemalloc measures them; tests/test_recursor_units.py checks the
estimate); the least recently used entry goes first, and an answer bigger than a sixteenth of the
byte budget (and 8 KiB) is not cached at all (it is passed on, not kept). Whether an answer is negative depends
on the type asked: a CNAME chain that ends without data of that type is a NODATA (RFC 2308 section
5), cached for min(chain TTLs, negative TTL), not for the CNAME's TTL.
An answer carries its DNSSEC state (`Answer.security`, set once by the recursor's validator, and the
EDE code to report), so cached answers keep their verdict; bogus ones are kept for `BOGUS_TTL` at most.
The cache stores what it is given: deciding what is trustworthy (bailiwick, matching question) is the
job of `iterator` and `forwarder`, which never hand it out-of-bailiwick records. The entry shape is
meant to grow (a validation state, a stale-serving deadline): `Answer` and `Entry` are the places.

Serve-stale (RFC 8767): with `stale` seconds (`--serve-stale`), an expired entry is kept that much
longer (still bounded by the LRU) and `get_stale` hands it out with every TTL set to `STALE_TTL`;
`get` never returns it. Failures are therefore kept under their own key (`_FAILED` + qtype), so that
a failed refresh does not overwrite the stale data it must fall back to.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from dnsd import metrics
from dnsd.recursor.message import RR, SOA, encode_rr, key, soa_minimum

#: RFC 8767 / Unbound's cache-max-ttl: nothing is trusted for more than a day.
MAX_TTL = 86400
#: RFC 2308 section 5: negative answers are cached for at most a few hours; Unbound uses one hour.
MAX_NEGATIVE_TTL = 3600
#: Bogus answers (`Answer.security`, see validator) are kept this long at most.
BOGUS, BOGUS_TTL = 3, 60
#: Per-entry bookkeeping cost in bytes: the Entry and Answer objects, their tuples, the key tuple and
#: bytes, the OrderedDict node (measured with tracemalloc on CPython 3.11, rounded up).
ENTRY_OVERHEAD = 400
#: Per-record cost beyond its owner and rdata octets: the RR tuple, two bytes objects' headers and
#: the TTL int (measured: 216 bytes for a 17-octet owner and 4-octet rdata; rounded up).
RR_OVERHEAD = 184
#: The cache key type of a name's NXDOMAIN (covers every type); never a qtype on the wire.
NAME_WIDE = -1
#: RFC 9520 section 3.2: a resolution failure is cached at least 1 s (and at most 5 minutes);
#: BIND's servfail-ttl is 1 s, Unbound keeps failed servers out for longer.
FAILURE_TTL = 5.0
_SERVFAIL = 2
#: RFC 8767 section 4: stale answers are served with a TTL of 30 s.
STALE_TTL = 30
#: Prefetch (Unbound's `prefetch`): an answer asked for in the last tenth of its lifetime is refreshed
#: in the background; lifetimes under PREFETCH_MIN_TTL are not worth it.
PREFETCH_SHARE = 0.1
PREFETCH_MIN_TTL = 10.0
#: Failures live under qtype + _FAILED, outside the 16-bit qtype space and NAME_WIDE.
_FAILED = 1 << 16
_ANY = 255

_TTL = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Answer:
    """A resolution result: rcode, answer records (CNAME chain first), authority (SOA when negative)."""

    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    #: DNSSEC state (validator.UNCHECKED/SECURE/INSECURE/BOGUS) and the EDE code it reports, kept with
    #: the data so that an answer is judged once
    security: int = 0
    ede: int | None = None

    @property
    def negative(self) -> bool:
        """No records at all, or an error; `answers(qtype)` is the precise test."""
        return self.rcode != 0 or not self.answer

    def answers(self, qtype: int) -> bool:
        """Whether this is a positive answer for `qtype`: NOERROR with data of that type (a CNAME
        chain alone is a NODATA unless CNAME itself was asked; ANY takes any record)."""
        return self.rcode == 0 and any(rr.rtype == qtype or qtype == _ANY for rr in self.answer)

    @property
    def failed(self) -> bool:
        """A cached resolution failure (RFC 9520), not an answer."""
        return self.rcode == _SERVFAIL


@dataclass(slots=True)
class Entry:
    """One cached answer; see the module docstring for the encoded form."""

    answer: Answer
    stored: float
    expires: float
    qname: bytes
    size: int

    @property
    def wire(self) -> bytes:
        return _encode(self.qname, self.answer)[0]

    @property
    def ttl_offsets(self) -> tuple[int, ...]:
        return _encode(self.qname, self.answer)[1]

    def age(self, now: float) -> int:
        return int(now - self.stored)

    def current(self, now: float) -> Answer:
        """The answer with every TTL counted down to `now`."""
        age = self.age(now)

        def down(records: tuple[RR, ...]) -> tuple[RR, ...]:
            return tuple(rr._replace(ttl=max(0, rr.ttl - age)) for rr in records)

        a = self.answer
        return replace(a, answer=down(a.answer), authority=down(a.authority))

    def patched(self, now: float) -> bytes:
        """The pre-encoded records with TTLs counted down to `now` (for a byte-copying fast path)."""
        age = self.age(now)
        wire, offsets = _encode(self.qname, self.answer)
        buf = bytearray(wire)
        for offset in offsets:
            (ttl,) = _TTL.unpack_from(buf, offset)
            _TTL.pack_into(buf, offset, max(0, ttl - age))
        return bytes(buf)


def footprint(qname: bytes, answer: Answer) -> int:
    """Bytes an entry keeps alive (see ENTRY_OVERHEAD and RR_OVERHEAD)."""
    size = ENTRY_OVERHEAD + 2 * len(qname)
    for rr in (*answer.answer, *answer.authority):
        size += RR_OVERHEAD + len(rr.owner) + len(rr.rdata)
    return size


def negative_ttl(authority: tuple[RR, ...]) -> int | None:
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM), or None when there is no SOA."""
    for rr in authority:
        if rr.rtype == SOA:
            return min(rr.ttl, soa_minimum(rr.rdata))
    return None


class Cache:
    """LRU answer cache bounded in entries and bytes; `clock` is injectable for tests."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] | None = None, label: str = "recursion",
                 stale: float = 0.0) -> None:
        self.max_entries = max_entries
        self.stale = stale
        self.max_bytes = max_bytes
        self.clock = clock or time.monotonic
        self.bytes = 0
        self._entries: OrderedDict[tuple[bytes, int], Entry] = OrderedDict()
        self._label = label
        self._gauge = metrics.CACHE_ENTRIES.labels(cache=label)
        self._hits = metrics.CACHE_HITS.labels(cache=label)
        self._misses = metrics.CACHE_MISSES.labels(cache=label)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, qname: bytes, qtype: int) -> Entry | None:
        """The live entry for (qname, qtype), or None; expired entries are removed on the way."""
        k = (key(qname), qtype)
        entry = self._entries.get(k)
        if entry is None:
            return None
        now = self.clock()
        if entry.expires <= now:
            if entry.expires + self.stale <= now or entry.answer.failed:
                self._remove(k)
            return None
        self._entries.move_to_end(k)
        return entry

    def get(self, qname: bytes, qtype: int, *, count: bool = True) -> Answer | None:
        """The answer for (qname, qtype) with TTLs counted down, NXDOMAIN of the name, a cached
        failure (`Answer.failed`), or None."""
        if qtype != NAME_WIDE:
            failure = self.entry(qname, qtype + _FAILED)
            if failure is not None:
                if count:
                    self._hits.inc()
                return failure.answer
        entry = self.entry(qname, qtype)
        if entry is None and qtype != NAME_WIDE:
            entry = self.entry(qname, NAME_WIDE)
        if count:
            (self._hits if entry is not None else self._misses).inc()
        return None if entry is None else entry.current(self.clock())

    def get_stale(self, qname: bytes, qtype: int) -> Answer | None:
        """An expired answer for (qname, qtype) (or the name's NXDOMAIN) at most `stale` seconds past
        its expiry, every TTL set to STALE_TTL (RFC 8767 section 4); None when there is none."""
        if self.stale <= 0:
            return None
        now = self.clock()
        for t in (qtype, NAME_WIDE):
            entry = self._entries.get((key(qname), t))
            if entry is not None and not entry.answer.failed and entry.expires <= now < entry.expires + self.stale:
                a = entry.answer
                return replace(a, answer=tuple(rr._replace(ttl=STALE_TTL) for rr in a.answer),
                               authority=tuple(rr._replace(ttl=STALE_TTL) for rr in a.authority))
        return None

    def prefetch_due(self, qname: bytes, qtype: int) -> bool:
        """Whether the answer for (qname, qtype) is in the last PREFETCH_SHARE of a lifetime of at
        least PREFETCH_MIN_TTL (Unbound's prefetch: a name asked for then is refreshed early)."""
        entry = self._entries.get((key(qname), qtype))
        if entry is None or entry.answer.failed:
            return False
        lifetime = entry.expires - entry.stored
        return lifetime >= PREFETCH_MIN_TTL and 0 < entry.expires - self.clock() < lifetime * PREFETCH_SHARE

    def put(self, qname: bytes, qtype: int, answer: Answer) -> Answer:
        """Store `answer`; its lifetime is its shortest TTL, capped (negative: RFC 2308 TTL).

        Returns the answer as stored, TTLs capped: the resolver hands that to the client the first
        time too, so a fresh answer never promises more than the cached one will keep (a negative
        answer's SOA carries the negative TTL, not its own longer TTL).
        """
        if not answer.answers(qtype):
            ttl = negative_ttl(answer.authority)
            if ttl is None:
                return answer  # RFC 2308 5: a negative answer without SOA is not cached
            ttl = min(ttl, MAX_NEGATIVE_TTL)
            # the SOA is served with the negative TTL, which is what counts down (RFC 2308 5)
            answer = replace(answer, authority=tuple(
                rr._replace(ttl=min(rr.ttl, ttl)) if rr.rtype == SOA else rr
                for rr in answer.authority))
            if answer.answer:
                ttl = min(ttl, *(rr.ttl for rr in answer.answer))
        else:
            ttl = min(MAX_TTL, *(rr.ttl for rr in answer.answer))
            answer = replace(answer, answer=tuple(rr._replace(ttl=min(rr.ttl, MAX_TTL))
                                                  for rr in answer.answer))
        if answer.security == BOGUS:
            ttl = min(ttl, BOGUS_TTL)  # retried soon: the zone may be fixed (Unbound's val-bogus-ttl)
        if ttl <= 0:
            return answer
        self._store(qname, qtype, answer, ttl)
        return answer

    def put_failure(self, qname: bytes, qtype: int, seconds: float = FAILURE_TTL,
                    ede: int | None = None) -> None:
        """Remember that resolving (qname, qtype) failed, for `seconds` (RFC 9520 section 3); `ede`
        says why (22: no server answered), for the SERVFAILs served from it."""
        self._store(qname, qtype + _FAILED, Answer(_SERVFAIL, ede=ede), seconds)

    def _store(self, qname: bytes, qtype: int, answer: Answer, ttl: float) -> None:
        size = footprint(qname, answer)
        k = (key(qname), qtype)
        if k in self._entries:
            self._remove(k)
        if 0 <= qtype < _FAILED:
            self._drop((k[0], qtype + _FAILED))
        if size > min(self.max_bytes, max(self.max_bytes // 16, 8192)):
            return  # a huge answer is served once and not kept: it would evict everything else
        now = self.clock()
        entry = Entry(answer, now, now + ttl, k[0], size)
        self._entries[k] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        self._gauge.set(len(self._entries))

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self._gauge.set(0)

    def _drop(self, k: tuple[bytes, int]) -> None:
        """Remove `k` if present (a fresh answer ends the failure cached for it)."""
        if k in self._entries:
            self._remove(k)

    def _remove(self, k: tuple[bytes, int]) -> None:
        entry = self._entries.pop(k)
        self.bytes -= entry.size
        self._gauge.set(len(self._entries))


def _encode(qname: bytes, answer: Answer) -> tuple[bytes, tuple[int, ...]]:
    qkey = key(qname)
    buf = bytearray()
    offsets = []
    for rr in (*answer.answer, *answer.authority):
        owner = b"\xc0\x0c" if key(rr.owner) == qkey else rr.owner
        offsets.append(len(buf) + len(owner) + 4)
        buf += encode_rr(rr, owner=owner)
    return bytes(buf), tuple(offsets)
