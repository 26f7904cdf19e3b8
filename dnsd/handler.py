"""The query pipeline: bytes and a client address in, bytes (or nothing) out.

Two paths, one result:

* The **fast path** (`Handler.fast`) looks the raw question up in a dictionary of pre-encoded
  responses. The key is the question as it arrives on the wire, lower-cased (name, type, class),
  plus one byte for what changes the answer: EDNS present, DO, CD, and whether the client may recurse
  (it decides RA and REFUSED). A hit costs a few slices: the ID, the RD bit and the question's case
  are copied from the query. No decoding, no encoding, no await.
* The **slow path** (`Handler.slow`) parses the whole message (`wire.parse_query`), applies the
  rules, asks the authority (or the recursor), encodes, and, when the result is a complete answer
  that the zone alone decided, stores it for the fast path. It is the reference: the tests run
  every zone query through both and compare the bytes.
* Complete recursive answers (from the recursor's cache, upstream, or DNS64) are kept for the fast
  path too, as `CachedAnswer`s whose TTLs count down with the clock (patched once a second per
  entry, not per query) and which lapse when their shortest TTL does; only clients that may recurse
  can hit them, because the access class is part of the key. That store (`RecursiveStore`) has a
  byte budget and keeps no answer over `MAX_RECURSIVE_ANSWER` octets, so attacker-chosen names
  with huge answers cannot grow it.

Invalidation is exact: every stored response remembers the owner names it was built from, and the
zone reports the names each change touched; responses carrying the SOA (the apex) are dropped on every
change, because the serial is in them.

Under a random-subdomain flood (the commonest attack on an authoritative server) most questions are
names nobody asked before. Their answers do not depend on the name: NXDOMAIN and NODATA are the
zone's SOA after a copy of the question, REFUSED is the question alone. So they are never stored per
name: a fast-path miss walks the question's labels, asks the zone index whether the name exists (a
dictionary lookup: by its first label for most of a flood's names, `ZoneIndex.first_label_known`, else
`ZoneIndex.existence`), and builds the reply from a `NegativeTemplate` per
(zone, rcode, type, class, flags), whose compression pointers are moved to wherever the zone's apex
sits in this question. The store of per-name answers then only ever holds answers for names that
exist, so unseen names cannot push known ones out; it is still bounded, and past the bound the oldest
eighth goes (never the whole store at once).

Limits live here too: response rate limiting for UDP clients outside --allow-recursion
(`dnsd.rrl`), and a bound on recursive queries in progress, in total and per client, past which
a query gets SERVFAIL at once instead of pinning more memory.

This is the only place where problems become rcodes; nothing raised here reaches the transport.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import random
import struct
import time
from array import array
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Protocol

from dnsd import authority, rrl, wire
from dnsd.config import Config
from dnsd.metrics import LIMIT_HITS, QueryStats, qtype_label, rcode_label
from dnsd.recursor.cache import PREFETCH_MIN_TTL, PREFETCH_SHARE
from dnsd.zone import CNAME, ZoneIndex

if TYPE_CHECKING:
    from dnsd.dnssec.signer import Signer
    from dnsd.xfr import Transfers

logger = logging.getLogger(__name__)
query_logger = logging.getLogger("dnsd.query")

#: Upper bound on stored per-name responses (only names that exist are stored, so only a zone with more
#: names x types x flag combinations than this ever reaches it); past it the oldest eighth is evicted.
MAX_CACHED_RESPONSES = 200_000
#: Byte budget of the fast-path store of recursive answers (see `RecursiveStore`); the oldest go first.
MAX_RECURSIVE_BYTES = 32 * 1024 * 1024
#: Entries and bytes of the separate area for recursive NXDOMAIN answers (see `Handler._recursive_nx`).
MAX_RECURSIVE_NX = 20_000
MAX_RECURSIVE_NX_BYTES = 4 * 1024 * 1024
#: Bound of the remembered name suffixes of `_negative_verdict` (a few per namespace in practice).
MAX_SUFFIX_SHAPES = 4096
#: Recursive answers longer than this are not kept for the fast path (a 3,800-record TCP answer cost
#: 380 KB there); their repeats take the slow path and the recursor's cache.
MAX_RECURSIVE_ANSWER = 4096
#: Bookkeeping bytes of one stored recursive answer besides its octets (object, key, dict slot).
RECURSIVE_OVERHEAD = 400
#: RFC 6895 3.1: qtype 0 and 65535 are reserved. They are answered NOTIMP, as Knot does (BIND and
#: NSD answer NOERROR with the SOA). The parser already answers the meta types (OPT, 128-250:
#: FORMERR; MAILA/MAILB: NOTIMP).
RESERVED_QTYPES = frozenset({0, 65535})
#: Upper bound on negative-answer templates (zones x rcodes x qtypes x classes x flag bytes in use);
#: past it they start afresh: each is rebuilt by one slow-path answer.
MAX_TEMPLATES = 4096
#: Upper bound on the small area that remembers which template answered a key: names asked again (the
#: NXDOMAIN and NODATA a cluster asks all day) then cost one lookup; a flood only churns this area.
MAX_NEGATIVE_KEYS = 16_384
#: Upper bound on remembered client-address -> may-recurse decisions.
MAX_ACL_ENTRIES = 65_536

_FLAG_EDNS, _FLAG_DO, _FLAG_CD, _FLAG_RECURSE, _FLAG_AD = 1, 2, 4, 8, 16
_FLAG_EDNS_DO = _FLAG_EDNS | _FLAG_DO
_OPT_TYPE = b"\x00\x29"
#: The key's last octet, one bytes object per flag combination (no bytes((flags,)) per query).
_FLAG_BYTES = tuple(bytes((flags,)) for flags in range(256))
_ONE_QUESTION_ONLY = b"\x00\x01\x00\x00\x00\x00"

#: An async iterator is a multi-message answer (a zone transfer), written message by message over TCP.
Reply = bytes | None | Awaitable[bytes | None] | AsyncIterator[bytes]
#: (transport, qtype, rcode, source, path): the metric labels of an answer, with the fast-path kind
#: last ("stored", "template", "cached"), counted as `dnsd_fast_path_answers_total` (see dnsd.metrics).
Labels = tuple[str, str, str, str, str]
#: What `Handler.fast_key` finds in a plain query: (cache key, end of question, client's UDP limit).
FastKey = tuple[bytes, int, int]
#: A negative template's key: (zone apex or "" for REFUSED, rcode, type + class + flags, escaped name).
#: The slow path never compresses into a question whose name needs escapes (its offsets do not map to
#: the text), so such names have templates of their own, with the SOA's owner written out.
Verdict = tuple[str, int, bytes, bool]
#: A stored answer: (header after the ID with RD clear and with RD set, the bytes after the question,
#: its length, udp labels, tcp labels, the owner names it was built from).
StoredAnswer = tuple[tuple[bytes, bytes], bytes, int, Labels, Labels, tuple[str, ...]]
_TTL = struct.Struct("!I")
#: What a label may hold for `_name_text` to spell the name itself (else wire_to_text does), and the dot.
_PLAIN_TEXT_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_*."
#: Octets of a plain name's labels (the length octets of labels under 42 octets are none of them).
_PLAIN_WIRE_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_*"
#: Length octets of labels under 42 octets -> ".": spells a plain wire name (after its first octet).
_LENGTHS_TO_DOTS = bytes.maketrans(bytes(range(1, 42)), b"." * 41)
_SOA_TYPE = 6
_CNAME_TYPE = 5
_RRSIG_TYPE = 46
_NSEC3_TYPE = 50


def _name_text(key: bytes) -> str | None:
    """The name of a fast-path key as the slow path spells it, walking the labels by their lengths.

    None when the walk does not end at the key's zero octet. `fast_key` ends the name at the first
    zero octet, which is only right when no label holds a zero: a crafted 63-octet label with a zero
    inside would otherwise share its key with another question. A lookup of such a key can only hit
    an entry stored under a key that did walk (same octets, same walk), so the hot path keeps its one
    `find`; every store, and every template answer, walks first.
    """
    end = len(key) - 6  # the first zero octet; type, class and flags follow it
    if end > 254:
        return None  # longer than 255 octets: FORMERR is the slow path's
    if end == 0:
        return ""
    first = key[0]
    if first > 63:
        return None
    text = bytearray(key[1:end])  # each later length octet becomes a dot, in place
    last = end - 1
    at = first
    dots = 0
    while at < last:
        length = text[at]
        if length > 63:
            return None
        text[at] = 46
        dots += 1
        at += 1 + length
    if at != last:
        return None
    if text.translate(None, _PLAIN_TEXT_BYTES) or text.count(46) != dots:
        return wire.wire_to_text(key[:-5])  # escapes (a dot or odd octet inside a label), as the slow path
    return text.decode("ascii")


def _skip_name(reply: bytes, offset: int, pointers: list[int]) -> int:
    """The offset after the (possibly compressed) name at `offset`; a pointer's position joins `pointers`."""
    while True:
        length = reply[offset]
        if length & 0xC0 == 0xC0:
            pointers.append(offset)
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def _aimed(part: bytes, pointers: tuple[tuple[int, int], ...], qend: int) -> bytes:
    """A template's `part` with its compression pointers, kept relative to the question's end, aimed
    for a question that ends at `qend`."""
    buf = bytearray(part)
    for position, delta in pointers:
        struct.pack_into("!H", buf, position, 0xC000 | (qend + delta))
    return bytes(buf)


class NegativeTemplate:
    """A NXDOMAIN, NODATA or REFUSED reply for any name of one zone (rcode, type, class and flags fixed).

    Built from the slow path's own reply for one such question: `heads` are its header after the ID
    (with RD clear and set, as the query has it), `tail` the bytes after its question. Each compression
    pointer in the tail aims into the question's apex labels or further into the tail, so for a new
    question it moves with the end of that question: it is stored as (offset in the tail, target minus
    the end of the question). A pointer into the name's own labels could not move, and such a reply
    never becomes a template. The tail for each question length is built once and kept (at most one
    per possible length), so a template answer costs what a stored answer costs and is the slow
    path's answer, byte for byte, for any name of any length.
    """

    __slots__ = ("heads", "pointers", "tail", "tail_length", "tails", "tcp_labels", "udp_labels")
    signed = False  # see SignedDenial

    def __init__(self, heads: tuple[bytes, bytes], tail: bytes, pointers: tuple[tuple[int, int], ...],
                 udp_labels: Labels, tcp_labels: Labels) -> None:
        self.heads = heads
        self.tail = tail
        self.tail_length = len(tail)
        self.pointers = pointers
        self.tails: dict[int, bytes] = {}
        self.udp_labels = udp_labels
        self.tcp_labels = tcp_labels

    @classmethod
    def from_reply(cls, reply: bytes, qend: int, apex_length: int, labels: tuple[Labels, Labels]
                   ) -> NegativeTemplate | None:
        """The template of `reply` (question ending at `qend`, zone apex `apex_length` octets of wire)."""
        apex_at = qend - 4 - apex_length
        pointers: list[int] = []

        def skip_name(offset: int) -> int:
            return _skip_name(reply, offset, pointers)

        try:
            if reply[6:8] != b"\x00\x00":
                return None  # an answer section: not a negative answer
            offset = qend
            for _ in range(sum(struct.unpack_from("!HH", reply, 8))):
                offset = skip_name(offset)
                rtype, _, _, rdlength = struct.unpack_from("!HHIH", reply, offset)
                offset += 10
                if rtype == _SOA_TYPE:
                    if skip_name(skip_name(offset)) + 20 != offset + rdlength:
                        return None
                elif rtype != wire.OPT:
                    return None
                offset += rdlength
        except (IndexError, struct.error):
            return None
        if offset != len(reply):
            return None
        moved: list[tuple[int, int]] = []
        for position in pointers:
            target = ((reply[position] & 0x3F) << 8) | reply[position + 1]
            if not (apex_length and apex_at <= target < qend - 4) and target < qend:
                return None  # into the name's own labels (or the header): right for this name only
            moved.append((position - qend, target - qend))
        head = reply[3:12]
        flags = reply[2] & 0xFE
        return cls((bytes((flags,)) + head, bytes((flags | 1,)) + head), reply[qend:], tuple(moved), *labels)

    def reply(self, data: bytes, qend: int) -> bytes:
        """This template as the answer to `data`, whose question ends at `qend`."""
        tail = self.tails.get(qend)
        if tail is None:
            tail = self.tails[qend] = _aimed(self.tail, self.pointers, qend)
        return b"".join((data[:2], self.heads[data[2] & 1], data[12:qend], tail))


class SignedDenial:
    """A DO=1 NXDOMAIN or NODATA of a signed zone for any name of it (rcode, type, class, flags fixed).

    The part that does not depend on the name, the SOA and its RRSIGs, is kept from the slow path's
    own reply for one such question, its compression pointers moved with the question's end as in
    `NegativeTemplate`. The part that does, the NSEC3 proof, is the signer's pre-encoded records for
    the name (`Signer.denial_wire`: the closest encloser's and the wildcard's NSEC3 fixed per
    encloser, the next closer's found by a hash and a bisect), so a random-name flood with DO=1 costs
    hashing and byte copies, not a decode, a proof and an encode per name. A template is only kept
    when, rebuilt for the very question it was made from, it gives that reply byte for byte. A reply
    too long for the client's UDP limit is the slow path's TC: the question and the OPT alone.
    """

    __slots__ = ("apex", "apex_length", "heads", "ns_base", "nxdomain", "opt", "pointers", "signer", "soa",
                 "tails", "tc_heads", "tcp_labels", "udp_labels")
    signed = True

    def __init__(self, apex: str, apex_length: int, nxdomain: bool, heads: tuple[bytes, bytes], soa: bytes,
                 pointers: tuple[tuple[int, int], ...], ns_base: int, opt: bytes, labels: tuple[Labels, Labels]
                 ) -> None:
        self.apex = apex
        self.apex_length = apex_length
        self.nxdomain = nxdomain
        self.heads = heads  # the flags octets with RD clear and set
        self.tc_heads = tuple(bytes((h[0] | 0x02, h[1])) for h in heads)
        self.soa = soa
        self.pointers = pointers
        self.tails: dict[int, bytes] = {}
        self.ns_base = ns_base
        self.opt = opt
        self.udp_labels, self.tcp_labels = labels
        self.signer: Signer | None = None  # the view's signer, whose proofs are added

    @classmethod
    def from_reply(cls, reply: bytes, qend: int, apex: str, apex_length: int, labels: tuple[Labels, Labels]
                   ) -> SignedDenial | None:
        """The template of a signed denial `reply` (question ending at `qend`, zone `apex`)."""
        apex_at = qend - 4 - apex_length
        pointers: list[int] = []

        def skip_name(offset: int) -> int:
            return _skip_name(reply, offset, pointers)

        cut = opt_at = -1
        try:
            if reply[4:8] != b"\x00\x01\x00\x00" or reply[10:12] != b"\x00\x01":
                return None  # an answer section, or more than the OPT in the additional one
            offset = qend
            for _ in range(struct.unpack_from("!H", reply, 8)[0] + 1):
                start = offset
                offset = skip_name(offset)
                rtype, _, _, rdlength = struct.unpack_from("!HHIH", reply, offset)
                offset += 10
                if rtype == _SOA_TYPE and cut < 0:
                    if skip_name(skip_name(offset)) + 20 != offset + rdlength:
                        return None
                elif rtype == _NSEC3_TYPE:
                    if cut < 0:
                        cut = start
                elif rtype == wire.OPT:
                    opt_at = start
                elif rtype != _RRSIG_TYPE:
                    return None
                offset += rdlength
        except (IndexError, struct.error):
            return None
        if offset != len(reply) or opt_at < 0 or offset - opt_at != 11:
            return None
        if cut < 0:
            cut = opt_at
        if cut > opt_at:
            return None
        moved: list[tuple[int, int]] = []
        for position in pointers:
            if position >= cut:
                continue  # the proof's: rebuilt for each name
            target = ((reply[position] & 0x3F) << 8) | reply[position + 1]
            if not (apex_at <= target < qend - 4) and not qend <= target < cut:
                return None  # into the name's own labels (or the header): right for this name only
            moved.append((position - qend, target - qend))
        soa = reply[qend:cut]
        ns_base = 0
        offset = 0
        while offset < len(soa):  # records before the proof: the SOA and its RRSIGs
            while soa[offset] and soa[offset] & 0xC0 != 0xC0:
                offset += 1 + soa[offset]
            offset += 2 if soa[offset] else 1
            offset += 10 + struct.unpack_from("!H", soa, offset + 8)[0]
            ns_base += 1
        flags = reply[2] & 0xFE
        heads = (bytes((flags, reply[3])), bytes((flags | 1, reply[3])))
        return cls(apex, apex_length, reply[3] & 0xF == wire.NXDOMAIN, heads, soa, tuple(moved), ns_base,
                   reply[opt_at:], labels)

    def soa_tail(self, qend: int) -> bytes:
        tail = self.tails.get(qend)
        if tail is None:
            tail = self.tails[qend] = _aimed(self.soa, self.pointers, qend)
        return tail

    def reply(self, data: bytes, qend: int, soa: bytes, proof: bytes, count: int, limit: int, tcp: bool
              ) -> bytes:
        """This denial for `data` (question ending at `qend`) with the name's proof (`count` records)."""
        if not tcp and qend + len(soa) + len(proof) + len(self.opt) > limit:
            return b"".join((data[:2], self.tc_heads[data[2] & 1], b"\x00\x01\x00\x00\x00\x00\x00\x01",
                             data[12:qend], self.opt))
        return b"".join((data[:2], self.heads[data[2] & 1], b"\x00\x01\x00\x00",
                         (self.ns_base + count).to_bytes(2), b"\x00\x01", data[12:qend], soa, proof, self.opt))


class CachedAnswer:
    """A recursive answer held for the fast path: its TTLs count down from when it was stored.

    `template` is the reply as first sent (RD clear); `ttl_offsets`/`ttls` locate and hold its TTLs.
    `current` is the template with TTLs counted down to whole second `age`, rebuilt at most once
    a second per entry, so a hit normally costs what a zone hit costs.
    """

    __slots__ = ("age", "current", "expires", "size", "stored", "tcp_labels", "template", "ttl_offsets",
                 "ttls", "udp_labels")

    def __init__(self, template: bytes, stored: float, ttl_offsets: list[int], ttls: list[int],
                 udp_labels: Labels, tcp_labels: Labels) -> None:
        self.template = template
        self.stored = stored
        self.expires = stored + min(ttls)
        # compact: 4 octets a TTL rather than two lists of int objects (9 octets a slot and 28 an int)
        self.ttl_offsets = array("I", ttl_offsets)
        self.ttls = array("I", ttls)
        self.age = 0
        self.current = template
        self.udp_labels = udp_labels
        self.tcp_labels = tcp_labels
        # the template and its TTL-patched copy, the TTL arrays and the bookkeeping
        self.size = RECURSIVE_OVERHEAD + 2 * len(template) + 8 * len(ttls)

    def at(self, now: float) -> bytes | None:
        """The reply template as of `now`, or None once its shortest TTL has run out."""
        if now >= self.expires:
            return None
        age = int(now - self.stored)
        if age != self.age:
            buf = bytearray(self.template)
            for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                _TTL.pack_into(buf, offset, ttl - age)
            self.current = bytes(buf)
            self.age = age
        return self.current


def ttl_positions(message: bytes, qend: int) -> tuple[list[int], list[int]] | None:
    """Offsets and values of every record TTL after the question (OPT's is flags, not a TTL).

    None when the message does not walk cleanly (it always should: we encoded it).
    """
    offsets: list[int] = []
    ttls: list[int] = []
    count = sum(struct.unpack_from("!HHH", message, 6))
    offset = qend
    length = len(message)
    try:
        for _ in range(count):
            while True:  # skip the owner name: labels, then a zero or a pointer
                label = message[offset]
                if label & 0xC0 == 0xC0:
                    offset += 2
                    break
                offset += 1 + label
                if label == 0:
                    break
            rtype, _, ttl, rdlength = struct.unpack_from("!HHIH", message, offset)
            if rtype != wire.OPT:
                offsets.append(offset + 4)
                ttls.append(ttl)
            offset += 10 + rdlength
    except (IndexError, struct.error):
        return None
    return (offsets, ttls) if offset == length else None


class RecursiveStore(dict[bytes, CachedAnswer]):
    """The fast path's recursive answers by key, bounded in bytes (`MAX_RECURSIVE_BYTES`, oldest
    first) as well as in entries: a flood of distinct names with big answers cannot grow it past
    the budget. Reads are plain dict reads; deleting through `del` keeps the byte count."""

    def __init__(self, max_bytes: int = MAX_RECURSIVE_BYTES, max_entries: int = MAX_CACHED_RESPONSES) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0

    def put(self, key: bytes, answer: CachedAnswer) -> None:
        if key in self:
            del self[key]
        while self and (self.bytes + answer.size > self.max_bytes or len(self) >= self.max_entries):
            del self[next(iter(self))]
        super().__setitem__(key, answer)
        self.bytes += answer.size

    def __delitem__(self, key: bytes) -> None:
        self.bytes -= self[key].size
        super().__delitem__(key)

    def clear(self) -> None:
        super().clear()
        self.bytes = 0


class Recursor(Protocol):
    """What the handler needs from the recursive resolver (dnsd.recursor.Recursor)."""

    async def answer_with_source(self, query: wire.Query, limit: int) -> tuple[bytes, str]: ...

    async def resolve(self, qname: str, qtype: int, *, do: bool = False,
                      cd: bool = False) -> tuple[int, list[tuple[str, int, int, bytes]]]: ...


class Acl:
    """Which clients may recurse: a CIDR list, with IPv4-mapped IPv6 clients treated as IPv4."""

    def __init__(self, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> None:
        self.networks = networks
        self._decisions: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        """True when `host` (as the socket reports it) is inside one of the networks."""
        decision = self._decisions.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(self._decisions) >= MAX_ACL_ENTRIES:
                self._decisions.clear()
            self._decisions[host] = decision
        return decision

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


class Handler:
    """Answers queries for one process; the transports call `respond`."""

    #: AXFR, IXFR, NOTIFY and TSIG-signed queries go here when transfers are configured (`dnsd.xfr`).
    transfers: Transfers | None = None
    signer: Signer | None = None  # --dnssec-keys: DO=1 zone answers carry RRSIGs and NSEC3
    #: The Internet view's own signer (its NSEC3 chain covers only the names the Internet sees); when
    #: there is no separate Internet view, `signer` serves both.
    internet_signer: Signer | None = None

    def __init__(self, config: Config, zone: ZoneIndex, stats: QueryStats,
                 recursor: Recursor | None = None, internet: ZoneIndex | None = None) -> None:
        self.config = config
        self.zone = zone
        # The Internet's view (`dnsd.views`): clients outside --allow-recursion are answered from it.
        # The access class is part of the fast-path key, so both views' answers are stored side by side.
        self.internet = zone if internet is None else internet
        self.stats = stats
        self.recursor = recursor if config.recursion != "off" else None
        self.acl = Acl(config.allow_recursion)
        self.edns_size = config.edns_udp_size
        self.fast_path = True
        # key -> (header after the ID with RD clear and set, the rest after the question, length, udp
        # labels, tcp labels, names it was built from); only names that exist are stored
        self._responses: dict[bytes, StoredAnswer] = {}
        # name-independent answers (see Verdict), and DO=1 denials of signed zones (see SignedDenial)
        self._templates: dict[Verdict, NegativeTemplate | SignedDenial] = {}
        self._negative_keys: dict[bytes, NegativeTemplate | SignedDenial] = {}  # key -> the template that answered it
        #: wire name after a first label -> where the zone's apex starts in it, for names whose labels
        #: are plain and walk to the apex on a boundary (`_negative_verdict`); static, so never invalidated
        self._suffix_shapes: dict[bytes, int] = {}
        # name -> keys of responses built from it; a set, so a key re-stored after an invalidation
        # through another of its names is not listed twice
        self._keys_by_name: dict[str, set[bytes]] = {}
        self._volatile: set[bytes] = set()
        self._recursive = RecursiveStore()
        # Recursive NXDOMAINs apart, in a smaller area: a random-subdomain flood through the resolver
        # makes one per name, and in the same store they would push out the answers people ask again.
        self._recursive_nx = RecursiveStore(MAX_RECURSIVE_NX_BYTES, MAX_RECURSIVE_NX)
        self._outstanding = 0
        self._outstanding_by_client: dict[str, int] = {}
        #: recursive queries in progress, oldest first, with their start time (perf_counter)
        self._admitted: dict[asyncio.Future[bytes | None], float] = {}
        self._query_log_sample = config.query_log_sample
        self._plain = False  # set by `_negative_verdict`: the name it judged is plain (see `_signed_denial`)
        self.rrl = (
            rrl.RateLimiter(config.rrl_responses_per_second, config.rrl_slip, config.rrl_ipv4_prefix,
                            config.rrl_ipv6_prefix)
            if config.rrl_responses_per_second else None
        )
        zone.subscribe(self.invalidate)
        if self.internet is not zone:
            self.internet.subscribe(self.invalidate)

    # ---- cache ----------------------------------------------------------------------------------

    def invalidate(self, changed: set[str]) -> None:
        """Drop every stored response built from a changed name, and all SOA-bearing ones."""
        responses = self._responses
        for name in changed:
            for key in self._keys_by_name.pop(name, ()):
                responses.pop(key, None)
        for key in self._volatile:
            responses.pop(key, None)
        self._volatile.clear()
        self._templates.clear()  # each carries the SOA, whose serial just moved
        self._negative_keys.clear()  # and a name may have started (or stopped) existing

    @property
    def cached_responses(self) -> int:
        """Number of pre-encoded responses held (for metrics and tests)."""
        return len(self._responses) + len(self._recursive) + len(self._recursive_nx)

    @property
    def outstanding(self) -> int:
        """Recursive queries in progress (for tests of the limit)."""
        return self._outstanding

    @property
    def negative_templates(self) -> int:
        """Number of negative-answer templates held (for tests)."""
        return len(self._templates)

    def _store(self, key: bytes, response: bytes, answer: authority.Answer, qtype: int, rcode: int,
               source: str) -> None:
        if len(self._responses) >= MAX_CACHED_RESPONSES:
            self._evict(MAX_CACHED_RESPONSES // 8)
        qt, rc = qtype_label(qtype), rcode_label(rcode)
        names = tuple(answer.names)
        head = response[3:12]
        flags = response[2] & 0xFE
        self._responses[key] = ((bytes((flags,)) + head, bytes((flags | 1,)) + head), response[_question_end(key):],
                                len(response), ("udp", qt, rc, source, "stored"), ("tcp", qt, rc, source, "stored"),
                                names)
        if answer.volatile:
            self._volatile.add(key)
        for name in names:
            self._keys_by_name.setdefault(name, set()).add(key)

    def _evict(self, count: int) -> None:
        """Drop the `count` oldest stored responses (insertion order): a full store keeps working."""
        responses = self._responses
        for key in list(itertools.islice(responses, count)):
            names = responses.pop(key)[5]
            self._volatile.discard(key)
            for name in names:
                keys = self._keys_by_name.get(name)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._keys_by_name[name]

    # ---- entry point ----------------------------------------------------------------------------

    def respond(self, data: bytes, host: str, tcp: bool) -> Reply:
        """The response to one query: bytes, None to drop, or an awaitable when recursion is needed.

        The fast-path key is worked out once: the slow path stores its answer under the same key.
        """
        started = time.perf_counter()
        found = self.fast_key(data, host)
        reply: Reply = self._serve(found, data, tcp, started) if self.fast_path and found is not None else None
        if reply is None:
            reply = self._slow(data, host, tcp, found)
        if self.rrl is not None and not tcp and isinstance(reply, bytes):
            return self._rate_limit(reply, host)
        return reply

    def _rate_limit(self, reply: bytes, host: str) -> bytes | None:
        """Apply RRL to a UDP reply for a client outside --allow-recursion (see dnsd.rrl)."""
        if self.rrl is None or self.acl.allows(host):
            return reply
        qend = rrl.question_end(reply)
        if not qend:
            return reply  # no question to key on (FORMERR for a headless packet): small, let it go
        decision = self.rrl.decide(host, rrl.token(reply, qend))
        if decision == rrl.SEND:
            return reply
        if decision == rrl.SLIP:
            self.stats.rate_limited("slipped")
            return rrl.truncated(reply, qend)
        self.stats.rate_limited("dropped")
        return None

    def fast_key(self, data: bytes, host: str) -> FastKey | None:
        """(cache key, end of question, client's UDP limit) for a plain query, or None for anything else.

        Plain means: a QUERY with only RD among the first flag octet, one question, no answer or
        authority records, at most an OPT of version 0 whose options tile its rdata, nothing after.
        """
        length = len(data)
        if length < 17 or data[2] & 0xFE or not data.startswith(_ONE_QUESTION_ONLY, 4):
            return None
        end = data.find(0, 12)
        if end < 0:
            return None
        qend = end + 5
        if data[10]:
            return None
        arcount = data[11]
        if arcount == 0:
            if length != qend:
                return None
            flags, limit = 0, wire.CLASSIC_UDP_SIZE
        elif arcount == 1:
            options = qend + 11
            if length < options or data[qend] or not data.startswith(_OPT_TYPE, qend + 1) or data[qend + 6]:
                return None  # not a root OPT, or an EDNS version above 0 (BADVERS: the slow path's business)
            if length != options:  # options present: they must tile the rdata exactly
                if options + ((data[qend + 9] << 8) | data[qend + 10]) != length:
                    return None
                while options < length:
                    if options + 4 > length:
                        return None
                    options += 4 + ((data[options + 2] << 8) | data[options + 3])
                if options != length:
                    return None
            elif data[qend + 9] or data[qend + 10]:
                return None  # an rdata length the packet does not hold
            flags = _FLAG_EDNS_DO if data[qend + 7] & 0x80 else _FLAG_EDNS
            limit = (data[qend + 3] << 8) | data[qend + 4]
            if limit > self.edns_size:
                limit = self.edns_size
            if limit < wire.CLASSIC_UDP_SIZE:
                limit = wire.CLASSIC_UDP_SIZE
        else:
            return None
        if data[3] & 0x30:
            if data[3] & 0x10:
                flags |= _FLAG_CD
            if data[3] & 0x20:  # AD in a query asks for AD in the answer (RFC 6840 5.7): part of the key
                flags |= _FLAG_AD
        if self.acl.allows(host):
            flags |= _FLAG_RECURSE
        # Only the name folds case: the type and class octets are numbers (65, HTTPS, is "A"). Most
        # questions come in lower case, and then the question as sent is the key (one slice, no copy).
        question = data[12:qend]
        lowered = question.lower()
        if lowered is not question and lowered != question:
            question = lowered[: end - 11] + question[end - 11 :]
        return question + _FLAG_BYTES[flags], qend, limit

    def fast(self, data: bytes, host: str, tcp: bool) -> bytes | None:
        """A stored response patched for this query, or None when the slow path must decide."""
        started = time.perf_counter()
        found = self.fast_key(data, host)
        return None if found is None else self._serve(found, data, tcp, started)

    def _serve(self, found: FastKey, data: bytes, tcp: bool, started: float) -> bytes | None:
        key, qend, limit = found
        entry = self._responses.get(key)
        if entry is not None:  # the common case, kept to the fewest steps: two slices of the query, one join
            heads, tail, size, udp_labels, tcp_labels, _ = entry
            if not tcp and size > limit:
                return None
            labels = tcp_labels if tcp else udp_labels
            reply = b"".join((data[:2], heads[data[2] & 1], data[12:qend], tail))
            self.stats.answered(labels, time.perf_counter() - started)
            return reply
        if key[-1] & _FLAG_RECURSE and self.recursor is not None and ((cached := self._recursive.get(key)) is not None
                                        or (cached := self._recursive_nx.get(key)) is not None):
            # a cached recursive answer, TTLs counted down
            current = cached.at(time.monotonic())
            if current is None:
                del (self._recursive if key in self._recursive else self._recursive_nx)[key]
                return None
            template, udp_labels, tcp_labels = current, cached.udp_labels, cached.tcp_labels
        else:
            return self._serve_negative(key, data, qend, limit, tcp, started)
        if not tcp and len(template) > limit:
            return None
        labels = tcp_labels if tcp else udp_labels
        reply = b"".join((
            data[:2], bytes((template[2] | (data[2] & 1),)), template[3:12], data[12:qend], template[qend:],
        ))
        self.stats.answered(labels, time.perf_counter() - started)
        return reply

    def _serve_negative(self, key: bytes, data: bytes, qend: int, limit: int, tcp: bool,
                        started: float) -> bytes | None:
        """NXDOMAIN, NODATA or REFUSED from a template, for a name never seen; None: the slow path decides."""
        template = self._negative_keys.get(key)
        if template is None:
            verdict = self._negative_verdict(key)
            if verdict is None:
                return None
            template = self._templates.get(verdict)
            if template is None:
                return None
            if len(self._negative_keys) >= MAX_NEGATIVE_KEYS:
                self._negative_keys.clear()  # only negative answers live here: a flood cannot hurt the store
            self._negative_keys[key] = template
        if template.signed:
            reply = self._signed_denial(template, key, data, qend, limit, tcp)  # type: ignore[arg-type]
            if reply is None:
                return None
        else:
            if not tcp and qend + template.tail_length > limit:  # type: ignore[union-attr]
                return None
            reply = template.reply(data, qend)  # type: ignore[call-arg]
        stat = template.tcp_labels if tcp else template.udp_labels
        self.stats.answered(stat, time.perf_counter() - started)
        return reply

    def _signed_denial(self, template: SignedDenial, key: bytes, data: bytes, qend: int, limit: int,
                       tcp: bool) -> bytes | None:
        """A DO=1 NXDOMAIN or NODATA: the template's SOA part, then the name's NSEC3 proof."""
        if self._plain:  # `_negative_verdict` walked it and found only plain labels: spelled in one step
            name: str | None = key[1 : len(key) - 6].translate(_LENGTHS_TO_DOTS).decode("ascii")
        else:
            name = _name_text(key)
        if name is None or "\\" in name:
            return None
        signer = template.signer
        if signer is None:
            return None
        soa = template.soa_tail(qend)
        proof = signer.denial_wire(template.apex, name, template.nxdomain, qend - 4 - template.apex_length,
                                   qend + len(soa), key[:-5])
        if proof is None:
            return None
        return template.reply(data, qend, soa, proof[0], proof[1], limit, tcp)

    def _negative_verdict(self, key: bytes) -> Verdict | None:
        """The template key (zone apex, rcode, type + class + flags, escaped) of a name-independent answer.

        REFUSED: a class other than IN and ANY, or a name outside every zone for a client that may not
        recurse. NXDOMAIN: a name in a synced zone that does not exist. NODATA: a name that exists
        with neither the type asked for nor a CNAME (and not the apex's SOA). Meta and transfer types,
        ANY, TYPE0 and class ANY are left to the slow path, whose rules for them are not this simple;
        so is a key whose labels do not walk (None).

        The common case of a flood, a plain name in a zone whose first label no existing name has, is
        settled on the wire form: one walk over the length octets (which also checks that the zone's
        apex starts on a label boundary) and one dictionary lookup, without spelling the name.
        """
        self._plain = False
        tail = key[-5:]
        qtype = (tail[0] << 8) | tail[1]
        if qtype == 0 or qtype == wire.OPT or 127 < qtype < 256:
            return None
        end = len(key) - 6  # the name's terminating zero
        if end > 254:
            return None
        name_wire = key[: end + 1]
        # the view of the key's access class (the publication policy): the Internet's for the rest
        zone = self.zone if tail[4] & _FLAG_RECURSE else self.internet
        apex, apex_at = zone.apex_of_wire(name_wire)
        first = key[0]
        # A flood's names differ in their first label only: what the walk below found for the rest of
        # the name (plain labels, the apex on a label boundary) is remembered by that rest's octets.
        shape = self._suffix_shapes.get(name_wire[1 + first :]) if 0 < first < 42 and first + 1 < end else None
        if (shape is not None and apex_at == first + 1 + shape
                and not name_wire[1 : 1 + first].translate(None, _PLAIN_WIRE_BYTES)):
            plain = boundary = True
        else:
            at = labels = 0
            boundary = apex_at == 0
            big = False
            while at < end:
                length = key[at]
                if length > 41:  # long labels: their length octet may read as a plain character
                    if length > 63:
                        return None
                    big = True
                at += 1 + length
                labels += 1
                if at == apex_at:
                    boundary = True
            if at != end:
                return None  # a zero octet inside a label
            plain = not big and len(name_wire.translate(None, _PLAIN_WIRE_BYTES)) == labels + 1
            if plain and boundary and apex_at > first and 0 < first < 42:
                if len(self._suffix_shapes) >= MAX_SUFFIX_SHAPES:
                    self._suffix_shapes.clear()
                self._suffix_shapes[name_wire[1 + first :]] = apex_at - first - 1
        if tail[2:4] != b"\x00\x01":
            return None if tail[2:4] == b"\x00\xff" else ("", wire.REFUSED, tail, False)
        self._plain = plain and boundary
        if plain and (boundary or apex is None):
            if apex is None:  # no zone's apex ends the name: outside (escapes cannot hide one)
                if self.recursor is not None and tail[4] & _FLAG_RECURSE:
                    return None
                return ("", wire.REFUSED, tail, False)
            if not zone.synced:
                return None
            if apex_at and not zone.first_label_known(key[1 : 1 + key[0]]):
                return (apex.name, wire.NXDOMAIN, tail, False)
            name: str | None = name_wire[1:end].translate(_LENGTHS_TO_DOTS).decode("ascii")
        else:
            name = _name_text(key)
        if name is None:
            return None
        found, exists, types = zone.existence(name)
        if found is None:
            if self.recursor is not None and tail[4] & _FLAG_RECURSE:
                return None
            return ("", wire.REFUSED, tail, False)
        if not zone.synced:
            return None
        if not exists:
            return (found.name, wire.NXDOMAIN, tail, "\\" in name)
        if qtype in types or _CNAME_TYPE in types or (qtype == _SOA_TYPE and name == found.name):
            return None
        return (found.name, wire.NOERROR, tail, "\\" in name)

    def slow(self, data: bytes, host: str, tcp: bool) -> Reply:
        """Full decode, decide, encode; stores zone answers for the fast path."""
        return self._slow(data, host, tcp, self.fast_key(data, host))

    def _slow(self, data: bytes, host: str, tcp: bool, found: FastKey | None) -> Reply:
        started = time.perf_counter()
        transport = "tcp" if tcp else "udp"
        if found is not None and _name_text(found[0]) is None:
            found = None  # a zero octet inside a label: the key is not this question's, never store under it
        try:
            query = wire.parse_query(data)
        except wire.DropPacket:
            self.stats.drop("malformed")
            return None
        if self.transfers is not None and self.transfers.wants(data, query):
            return self.transfers.respond(data, query, host, tcp)
        may_recurse = self.acl.allows(host)
        ra = may_recurse and self.recursor is not None
        limit = 65535 if tcp else (
            max(wire.CLASSIC_UDP_SIZE, min(query.udp_size, self.edns_size)) if query.edns
            else wire.CLASSIC_UDP_SIZE
        )
        if query.error is not None:
            return self._finish(wire.encode_error(query, query.error, ra, self.edns_size), query,
                                query.error, "error", transport, started, host)
        if query.qtype in RESERVED_QTYPES:
            return self._finish(wire.encode_error(query, wire.NOTIMP, ra, self.edns_size), query,
                                wire.NOTIMP, "error", transport, started, host)
        if query.qclass not in (wire.CLASS_IN, wire.ANY):
            reply = wire.encode_error(query, wire.REFUSED, ra, self.edns_size)
            self._maybe_store(found, reply, None, query, wire.REFUSED, "refused")
            return self._finish(reply, query, wire.REFUSED, "refused", transport, started, host)
        try:
            view = self.zone if may_recurse else self.internet
            result = authority.answer(view, query.qname, query.qtype,
                                      self._signer_of(view) if query.edns_do else None)
        except Exception:  # a bug must cost one SERVFAIL, never the listener
            logger.exception("internal error answering %s/%d", query.qname, query.qtype)
            return self._finish(wire.encode_error(query, wire.SERVFAIL, ra, self.edns_size), query,
                                wire.SERVFAIL, "error", transport, started, host)
        if result is None:
            if self.recursor is not None and may_recurse:  # RD clear: the recursor answers from cache only
                return self._start_recursion(found, query, limit, transport, started, host)
            reply = wire.encode_error(query, wire.REFUSED, ra, self.edns_size)
            if not ra:  # with recursion available, RD (not part of the key) decides: never store
                self._maybe_store(found, reply, None, query, wire.REFUSED, "refused")
            return self._finish(reply, query, wire.REFUSED, "refused", transport, started, host)
        if ra and self._leaves_zones(result, query.qtype):
            if query.rd:  # an ExternalName (or any CNAME out of the zones): chased like a resolver's
                return self._start_recursion(found, query, limit, transport, started, host, chase=result)
            found = None  # the bare CNAME for RD=0; never stored, since RD is not part of the key
        full = wire.encode(query, result.response, ra, 65535, self.edns_size)
        rcode = result.response.rcode
        if full[2] & 0x02:
            # Not even 65,535 bytes hold it: TC over UDP sends the client to TCP, where the answer
            # cannot be given; SERVFAIL there, as Knot and BIND answer (never a TC over TCP). Not
            # stored: the fast path does not know the transport.
            if tcp:
                return self._finish(wire.encode_error(query, wire.SERVFAIL, ra, self.edns_size), query,
                                    wire.SERVFAIL, "error", transport, started, host)
            return self._finish(full, query, rcode, "zone", transport, started, host)
        if len(full) <= limit:
            self._maybe_store(found, full, result, query, rcode, "zone")
            reply = full
        else:
            reply = wire.encode(query, result.response, ra, limit, self.edns_size)
        return self._finish(reply, query, rcode, "zone", transport, started, host)

    def _signer_of(self, view: ZoneIndex) -> Signer | None:
        """The signer of `view`: never the cluster's for the Internet (its NSEC3 chain would leak names)."""
        if view is self.zone:
            return self.signer
        return self.internet_signer

    def _maybe_store(self, found: FastKey | None, reply: bytes, result: authority.Answer | None,
                     query: wire.Query, rcode: int, source: str) -> None:
        """Keep an answer for the fast path: per name when the name exists, else as a negative template.

        Answers for names that do not exist are never stored per name (a flood of them would push
        out the answers people ask for); those that cannot be templated go to the slow path each time.
        """
        if found is None or not self.zone.synced:
            return
        key, qend, _ = found
        if _name_text(key) is None:
            return
        view = self.zone if key[-1] & _FLAG_RECURSE else self.internet
        verdict = self._negative_verdict(key)
        if verdict is not None:
            if verdict[1] != rcode:
                return  # the slow path decided otherwise (it is the reference): learn nothing
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
                self._negative_keys.clear()
            apex = verdict[0]
            qt, rc = qtype_label(query.qtype), rcode_label(rcode)
            labels = (("udp", qt, rc, source, "template"), ("tcp", qt, rc, source, "template"))
            template: NegativeTemplate | SignedDenial | None
            if apex and key[-1] & _FLAG_DO and self._signer_of(view) is not None:
                # a signed denial names its NSEC3 neighbours: the proof is added per name
                template = SignedDenial.from_reply(reply, qend, apex, len(apex) + 2, labels)
                if template is not None:
                    template.signer = self._signer_of(view)
                if template is not None and self._signed_denial(template, key, reply, qend, 65535, True) != reply:
                    template = None  # not what the slow path wrote: it keeps answering these itself
            else:
                template = NegativeTemplate.from_reply(reply, qend, len(apex) + 2 if apex else 0, labels)
            if template is not None:
                self._templates[verdict] = template
            return
        if result is None or not view.existence(query.qname)[1]:
            return
        self._store(key, reply, result, query.qtype, rcode, source)

    def _leaves_zones(self, result: authority.Answer, qtype: int) -> bool:
        """Whether the zone answer ends in a CNAME whose target lies outside every served zone."""
        answer = result.response.answer
        if result.response.rcode != wire.NOERROR or not answer or qtype in (CNAME, wire.ANY):
            return False
        last = answer[-1]
        return last[1] == CNAME and self.zone.find_apex(str(last[3])) is None

    def _start_recursion(self, found: FastKey | None, query: wire.Query, limit: int, transport: str,
                         started: float, host: str, chase: authority.Answer | None = None) -> Reply:
        """Admit one recursive query under the outstanding limits, or answer SERVFAIL at once.

        The limits bound the memory a flood of unanswerable names (or a slow upstream) can pin:
        each admitted query holds a task and its resolution state until it completes. When every
        slot is taken, the oldest query gives way to the new one once it has run
        `--recursion-jostle-timeout` (Unbound's jostle-timeout, 200 ms by default); it is dropped, as
        Unbound drops a jostled query, and its client retries. Queries that wait on a dead zone are
        the old ones, so they, not the healthy newcomers, lose their slots. Only when
        every query in progress is younger than that is the new one refused. The per-client limit
        refuses the newest, so that one client cannot push out the others.
        """
        per_client = self._outstanding_by_client.get(host, 0)
        if per_client >= self.config.recursion_max_per_client:
            LIMIT_HITS.labels("recursion_per_client").inc()
        elif self._outstanding >= self.config.recursion_max_outstanding and not self._jostle(started):
            LIMIT_HITS.labels("recursion_outstanding").inc()
        else:
            self._outstanding += 1
            self._outstanding_by_client[host] = per_client + 1
            task = asyncio.ensure_future(self._recurse(found, query, limit, transport, started, host, chase))
            self._admitted[task] = started
            # a done callback runs even when the task is cancelled before it starts (client gone)
            task.add_done_callback(lambda done: self._release(host, done))
            return task
        return self._finish(wire.encode_error(query, wire.SERVFAIL, True, self.edns_size), query,
                            wire.SERVFAIL, "error", transport, started, host)

    def _jostle(self, now: float) -> bool:
        """Drop the oldest query in progress when it has run the jostle timeout; True when one was dropped."""
        oldest = next(iter(self._admitted), None)
        after = self.config.recursion_jostle_timeout
        if oldest is None or not after or now - self._admitted[oldest] < after:
            return False
        del self._admitted[oldest]  # its slot is counted free from now on; its callback releases it
        self._outstanding -= 1
        oldest.cancel()
        LIMIT_HITS.labels("recursion_jostled").inc()
        return True

    def _release(self, host: str, task: asyncio.Future[bytes | None]) -> None:
        if self._admitted.pop(task, None) is not None:
            self._outstanding -= 1  # (a jostled task's slot was given back when it was pushed out)
        left = self._outstanding_by_client.get(host, 1) - 1
        if left:
            self._outstanding_by_client[host] = left
        else:
            self._outstanding_by_client.pop(host, None)

    async def _recurse(self, found: FastKey | None, query: wire.Query, limit: int, transport: str,
                       started: float, host: str, chase: authority.Answer | None = None) -> bytes | None:
        if self.recursor is None:  # only called when recursion is configured
            return None
        try:
            if chase is not None:
                found = None  # depends on the zone and on upstream TTLs: never kept for the fast path
                reply, source = await self._chase(self.recursor, query, chase, limit)
            else:
                reply, source = await self.recursor.answer_with_source(query, limit)
        except Exception:
            logger.exception("recursion failed for %s/%d", query.qname, query.qtype)
            reply, source = wire.encode_error(query, wire.SERVFAIL, True, self.edns_size), "error"
        rcode = reply[3] & 0xF if len(reply) >= 4 else wire.SERVFAIL
        if found is not None and source in ("cache", "recursion", "dns64") and rcode in (wire.NOERROR, wire.NXDOMAIN):
            self._store_recursive(found, reply, query.qtype, rcode, source)
        return self._finish(reply, query, rcode, source, transport, started, host)

    async def _chase(self, recursor: Recursor, query: wire.Query, result: authority.Answer,
                     limit: int) -> tuple[bytes, str]:
        """The zone's CNAME chain plus the target's records from the recursor, as a recursive
        resolver answers (RFC 1034 4.3.2 step 3a continued by resolution); not AA, since the data
        past the zone is not dnsd's. The target's rcode is the answer's (RFC 6604 2.1)."""
        zone_answer = result.response.answer
        rcode, records = await recursor.resolve(str(zone_answer[-1][3]), query.qtype, do=query.edns_do, cd=query.cd)
        if rcode not in (wire.NOERROR, wire.NXDOMAIN):
            return wire.encode_error(query, wire.SERVFAIL, True, self.edns_size), "error"
        response = wire.Response(rcode=rcode, aa=False, answer=[*zone_answer, *records])
        return wire.encode(query, response, True, limit, self.edns_size), "recursion"

    def _store_recursive(self, found: FastKey, reply: bytes, qtype: int, rcode: int, source: str) -> None:
        """Keep a complete recursive answer for the fast path, to be served until its shortest TTL ends."""
        if reply[2] & 0x02:  # truncated: the full answer needs TCP, the slow path handles that
            return
        if len(reply) > MAX_RECURSIVE_ANSWER:
            return  # huge answers stay in the recursor's cache only, never here
        key, qend, _ = found
        positions = ttl_positions(reply, qend)
        if positions is None or not positions[1] or min(positions[1]) <= 0:
            return  # nothing says how long it stays true (or it already expired): never reuse it
        label = "dns64" if source == "dns64" else "cache"  # a repeat is a cache hit by definition
        qt, rc = qtype_label(qtype), rcode_label(rcode)
        entry = CachedAnswer(_template(reply), time.monotonic(), *positions,
                             ("udp", qt, rc, label, "cached"), ("tcp", qt, rc, label, "cached"))
        lifetime = min(positions[1])
        if lifetime >= PREFETCH_MIN_TTL:
            # the last tenth goes through the recursor's cache, whose hits there start a prefetch
            entry.expires = entry.stored + lifetime * (1 - PREFETCH_SHARE)
        (self._recursive_nx if rcode == wire.NXDOMAIN else self._recursive).put(key, entry)

    def _finish(self, reply: bytes, query: wire.Query, rcode: int, source: str, transport: str,
                started: float, host: str) -> bytes:
        self.stats.answered((transport, qtype_label(query.qtype), rcode_label(rcode), source),
                            time.perf_counter() - started)
        if self._query_log_sample and random.random() < self._query_log_sample:
            query_logger.info("client=%s transport=%s qname=%s qtype=%d rcode=%s source=%s bytes=%d",
                              host, transport, query.qname or ".", query.qtype, rcode_label(rcode),
                              source, len(reply))
        return reply


def _question_end(key: bytes) -> int:
    """Where the question ends in a message whose question is the key's (12 + name + type + class)."""
    return 12 + len(key) - 1


def _template(reply: bytes) -> bytes:
    """A reply as stored for the fast path: RD is copied from each query at send time, so it is kept clear."""
    return reply[:2] + bytes((reply[2] & 0xFE,)) + reply[3:]
