"""DNS messages as the recursor needs them: build a query, parse a response into uncompressed records.

Upstream responses are untrusted input. The parser is strict (every length checked, compression
pointers only backwards, at most 255 octets a name) and turns every problem into `MessageError`, which
the upstream transport treats like a lost packet. Names stay in wire form (uncompressed, as sent)
so that nothing is lost to text escaping; `key()` lower-cases a wire name for comparisons and cache
keys (RFC 4343: ASCII case-insensitive; the length octets are below 0x41 so `bytes.lower` never
touches them). Rdata of the types that may carry compressed names (RFC 3597 section 4: only the
well-known RFC 1035 types) is decompressed, so a record can be re-emitted in any message.

Records are `RR` tuples (owner wire, type, class, ttl, rdata). This module does no I/O and knows no
policy; `upstream` sends the bytes, `iterator`/`forwarder` decide what to believe.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from dnsd import wire
from dnsd.wire import wire_to_text

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DNAME, OPT = 1, 2, 5, 6, 12, 15, 16, 28, 33, 39, 41
CLASS_IN = 1

QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")

#: Types whose rdata holds names that may be compressed (RFC 3597 section 4); the offsets say which
#: parts are names: a list of ("name" | fixed-byte-count) items.
_NAME_LAYOUT: dict[int, tuple[int | str, ...]] = {
    NS: ("name",), CNAME: ("name",), PTR: ("name",), DNAME: ("name",), 3: ("name",), 4: ("name",),
    7: ("name",), 8: ("name",), 9: ("name",), SOA: ("name", "name", 20), MX: (2, "name"),
    17: ("name", "name"),  # RP
    SRV: (6, "name"),  # RFC 2782 forbids compression, but tolerate it on input
}


class MessageError(ValueError):
    """The bytes are not a well-formed DNS message."""


class RR(NamedTuple):
    """One resource record; `owner` and names inside `rdata` are uncompressed wire names."""

    owner: bytes
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes


@dataclass(slots=True)
class Message:
    """A parsed response."""

    id: int
    flags: int
    qname: bytes = b""
    qtype: int = 0
    qclass: int = 0
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    edns: bool = False
    ext_rcode: int = 0

    @property
    def rcode(self) -> int:
        return (self.ext_rcode << 4) | (self.flags & 0xF)

    @property
    def aa(self) -> bool:
        return bool(self.flags & AA)

    @property
    def tc(self) -> bool:
        return bool(self.flags & TC)


def key(wire: bytes) -> bytes:
    """Case-folded wire name, for comparisons and cache keys."""
    return wire.lower()


def text(wire: bytes) -> str:
    """Lower-case dotted text of a wire name, without the trailing dot."""
    return wire_to_text(wire)


def to_wire(name: str) -> bytes:
    """Wire form of a dotted name; `\\DDD` and `\\X` escapes (as `wire_to_text` writes) are honoured."""
    name = name.rstrip(".") if name not in ("", ".") else ""
    if not name:
        return b"\x00"
    out = bytearray()
    label = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 4 <= len(name) and name[i + 1 : i + 4].isdigit():
            label.append(int(name[i + 1 : i + 4]))
            i += 4
            continue
        if c == "\\" and i + 1 < len(name):
            label += name[i + 1].encode()
            i += 2
            continue
        if c == ".":
            if not label or len(label) > 63:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(label))
            out += label
            label = bytearray()
        else:
            label += c.encode()
        i += 1
    if not label or len(label) > 63:
        raise ValueError(f"bad label in {name!r}")
    out.append(len(label))
    out += label
    out.append(0)
    if len(out) > 255:
        raise ValueError("name longer than 255 octets")
    return bytes(out)


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """Whether wire `name` equals `zone` or lies below it (case-insensitive; includes equality)."""
    name, zone = key(name), key(zone)
    if zone == b"\x00" or name == zone:
        return True
    if not name.endswith(zone):
        return False
    # the match must start at a label boundary: walk the labels of `name`
    offset = 0
    cut = len(name) - len(zone)
    while offset < cut:
        offset += 1 + name[offset]
    return offset == cut


def parent(name: bytes) -> bytes:
    """The wire name one label up (the root's parent is the root)."""
    return name if name == b"\x00" else name[1 + name[0] :]


def label_count(name: bytes) -> int:
    count, offset = 0, 0
    while name[offset]:
        offset += 1 + name[offset]
        count += 1
    return count


def build_query(ident: int, qname: bytes, qtype: int, *, rd: bool, edns_size: int | None,
                do: bool = False, cd: bool = False) -> bytes:
    """A query message; `edns_size` None sends no OPT (the fallback for servers that reject EDNS)."""
    flags = (RD if rd else 0) | (CD if cd else 0)
    arcount = 1 if edns_size is not None else 0
    out = _HEADER.pack(ident, flags, 1, 0, 0, arcount) + qname + struct.pack("!HH", qtype, CLASS_IN)
    if edns_size is not None:
        out += b"\x00" + struct.pack("!HHIH", OPT, edns_size, 0x8000 if do else 0, 0)
    return out


def read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """Read a possibly compressed name: (uncompressed wire name, offset after it in `data`).

    The authoritative side's reader does the work; here its ValueError becomes a MessageError.
    """
    try:
        return wire.read_name(data, offset, allow_pointers=True)
    except ValueError as exc:
        raise MessageError(str(exc)) from None


#: Types whose rdata has one fixed length.
_FIXED_LENGTH = {A: 4, AAAA: 16}


def _rdata(data: bytes, rtype: int, start: int, end: int) -> bytes:
    """The rdata with its names uncompressed; records malformed for their type are rejected, since
    passing them on would hand our clients a message they cannot parse."""
    layout = _NAME_LAYOUT.get(rtype)
    if layout is None:
        fixed = _FIXED_LENGTH.get(rtype)
        if fixed is not None and end - start != fixed:
            raise MessageError(f"type {rtype} rdata of {end - start} octets")
        if rtype == TXT:
            offset = start
            while offset < end:
                offset += 1 + data[offset]
            if offset != end or start == end:
                raise MessageError("TXT strings do not fill the rdata")
        return data[start:end]
    out = bytearray()
    offset = start
    for part in layout:
        if part == "name":
            name, offset = read_name(data, offset)
            out += name
        elif isinstance(part, int):
            out += data[offset : offset + part]
            offset += part
        if offset > end:
            raise MessageError("rdata shorter than its type needs")
    if offset != end:  # every type with names here has a fixed layout: nothing may follow
        raise MessageError("rdata length does not match its contents")
    return bytes(out)


def parse(data: bytes) -> Message:
    """Parse a response (raises MessageError)."""
    if len(data) < 12:
        raise MessageError("shorter than a header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    msg = Message(id=ident, flags=flags)
    offset = 12
    if qd > 1:
        raise MessageError("more than one question")
    if qd == 1:
        msg.qname, offset = read_name(data, offset)
        if offset + 4 > len(data):
            raise MessageError("question runs past the end")
        msg.qtype, msg.qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
    for count, section in ((an, msg.answer), (ns, msg.authority), (ar, msg.additional)):
        for _ in range(count):
            owner, offset = read_name(data, offset)
            if offset + 10 > len(data):
                raise MessageError("record runs past the end")
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
            offset += 10
            end = offset + rdlength
            if end > len(data):
                raise MessageError("rdata runs past the end")
            if rtype == OPT:
                if section is not msg.additional or owner != b"\x00" or msg.edns:
                    raise MessageError("misplaced OPT")
                msg.edns = True
                msg.ext_rcode = ttl >> 24
            else:
                ttl = ttl if ttl < 0x80000000 else 0  # RFC 2181 8: values with the top bit set mean 0
                section.append(RR(owner, rtype, rclass, ttl, _rdata(data, rtype, offset, end)))
            offset = end
    return msg


def encode_rr(rr: RR, ttl: int | None = None, owner: bytes | None = None) -> bytes:
    """One record in wire form, uncompressed (or with `owner` given pre-encoded, e.g. a pointer)."""
    return ((owner if owner is not None else rr.owner)
            + _RR_FIXED.pack(rr.rtype, rr.rclass, rr.ttl if ttl is None else ttl, len(rr.rdata))
            + rr.rdata)


def soa_minimum(rdata: bytes) -> int:
    """The MINIMUM field of an uncompressed SOA rdata (its last 32 bits)."""
    return int(struct.unpack_from("!I", rdata, len(rdata) - 4)[0])


def first_name(rdata: bytes) -> bytes:
    """The leading name of an uncompressed rdata (CNAME/DNAME/NS/PTR target)."""
    offset = 0
    while rdata[offset]:
        offset += 1 + rdata[offset]
    return rdata[: offset + 1]
