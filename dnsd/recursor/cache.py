"""The answer cache shared by iterate and forward mode: positive and negative (RFC 2308) answers.

Keyed by (case-folded wire qname, qtype); qtype 0 holds a name's NXDOMAIN, which RFC 2308 section 5
says covers every type. Each entry keeps the answer twice: as `RR` tuples for the resolver's own use
and pre-encoded (`wire`, answer then authority records, owners equal to the qname written as the
pointer 0xC00C, which is valid in any response because the question always starts at offset 12)
together with the offsets of every TTL, so that a fast path can serve an entry by copying bytes and
patching TTLs (`Entry.patched`). TTLs count down: each record's TTL is its stored TTL minus the
seconds since it was stored, and the entry expires with its shortest record.

Size is bounded twice, by entry count and by the bytes the entries hold (an approximation of memory:
encoded size plus a fixed per-entry overhead); the least recently used entry goes first.
An answer carries its DNSSEC state (`Answer.security`, set once by the recursor's validator, and the
EDE code to report), so cached answers keep their verdict; bogus ones are kept for `BOGUS_TTL` at most.
The cache stores what it is given: deciding what is trustworthy (bailiwick, matching question) is the
job of `iterator` and `forwarder`, which never hand it out-of-bailiwick records.
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
#: Rough per-entry bookkeeping cost (objects, dict slot) added to the encoded size.
ENTRY_OVERHEAD = 400

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
        return self.rcode != 0 or not self.answer


@dataclass(slots=True)
class Entry:
    """One cached answer; see the module docstring for the encoded form."""

    answer: Answer
    stored: float
    expires: float
    wire: bytes
    ttl_offsets: tuple[int, ...]
    size: int

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
        buf = bytearray(self.wire)
        for offset in self.ttl_offsets:
            (ttl,) = _TTL.unpack_from(buf, offset)
            _TTL.pack_into(buf, offset, max(0, ttl - age))
        return bytes(buf)


def negative_ttl(authority: tuple[RR, ...]) -> int | None:
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM), or None when there is no SOA."""
    for rr in authority:
        if rr.rtype == SOA:
            return min(rr.ttl, soa_minimum(rr.rdata))
    return None


class Cache:
    """LRU answer cache bounded in entries and bytes; `clock` is injectable for tests."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] | None = None, label: str = "recursion") -> None:
        self.max_entries = max_entries
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
        if entry.expires <= self.clock():
            self._remove(k)
            return None
        self._entries.move_to_end(k)
        return entry

    def get(self, qname: bytes, qtype: int, *, count: bool = True) -> Answer | None:
        """The answer for (qname, qtype) with TTLs counted down, NXDOMAIN of the name, or None."""
        entry = self.entry(qname, qtype)
        if entry is None and qtype != 0:
            entry = self.entry(qname, 0)
        if count:
            (self._hits if entry is not None else self._misses).inc()
        return None if entry is None else entry.current(self.clock())

    def put(self, qname: bytes, qtype: int, answer: Answer) -> Answer:
        """Store `answer`; its lifetime is its shortest TTL, capped (negative: RFC 2308 TTL).

        Returns the answer as stored, TTLs capped: the resolver hands that to the client the first
        time too, so a fresh answer never promises more than the cached one will keep (a negative
        answer's SOA carries the negative TTL, not its own longer TTL).
        """
        if answer.negative:
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
        now = self.clock()
        wire, offsets = _encode(qname, answer)
        k = (key(qname), qtype)
        if k in self._entries:
            self._remove(k)
        entry = Entry(answer, now, now + ttl, wire, offsets, len(wire) + ENTRY_OVERHEAD)
        self._entries[k] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        self._gauge.set(len(self._entries))
        return answer

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self._gauge.set(0)

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
