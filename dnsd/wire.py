"""DNS wire format for the authoritative side: a strict query parser and a response encoder.

The parser reads exactly what a query may hold (RFC 1035 section 4, RFC 6891 for OPT) and reports
problems as an rcode to send (FORMERR, NOTIMP, BADVERS) or as "drop" when not even the header can be
trusted, so the handler never sees an exception. The encoder writes responses with name compression
(RFC 1035 4.1.4), never compressing SRV targets (RFC 2782), and handles truncation: additional data
goes first (RFC 2181 9), and when the answer itself does not fit the response is cut to the question
with TC set so that the client retries over TCP.

Both are deliberately small: dnsd's zone answers need no general DNS library on the hot path, and the
tests check the bytes with dnspython and dig, which are independent implementations.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dnsd.zone import AAAA, CNAME, NS, PTR, SOA, SRV, Rdata

# Header flag bits (RFC 1035 4.1.1, RFC 4035 3.2).
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010

OPCODE_QUERY = 0

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # an extended rcode: upper 8 bits travel in the OPT record (RFC 6891 6.1.3)

OPT = 41
TSIG = 250
CLASS_IN = 1
ANY = 255
AXFR, IXFR = 252, 251

#: Extra questions skipped to find the OPT of a FORMERR for QDCOUNT > 1; past it the answer has no OPT.
MAX_EXTRA_QUESTIONS = 8
#: Records walked to find the OPT of a NOTIMP answer (a NOTIFY holds two or three).
MAX_NOTIMP_RECORDS = 8

#: Largest UDP response without EDNS (RFC 1035 4.2.1).
CLASSIC_UDP_SIZE = 512

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")


class DropPacket(Exception):  # a control-flow signal, not an error condition
    """The packet cannot be answered at all (too short, or itself a response)."""


@dataclass(slots=True)
class Query:
    """A parsed query. `qname` is lower-case dotted text without the trailing dot ('' for the root)."""

    id: int
    flags: int
    opcode: int
    qname: str = ""
    qname_wire: bytes = b""  # as asked, case preserved, to echo in the response
    qtype: int = 0
    qclass: int = 0
    has_question: bool = False
    edns: bool = False
    edns_version: int = 0
    edns_do: bool = False
    udp_size: int = CLASSIC_UDP_SIZE
    error: int | None = None  # rcode to answer with instead of a lookup
    authority_at: int = 0  # offset of an IXFR query's SOA (its only authority record), 0 when none
    tsig_at: int = 0  # offset of the TSIG record (the last additional one), 0 when none

    @property
    def rd(self) -> bool:
        return bool(self.flags & RD)

    @property
    def cd(self) -> bool:
        return bool(self.flags & CD)


def read_name(data: bytes, offset: int, allow_pointers: bool) -> tuple[bytes, int]:
    """Read a possibly compressed name; returns (uncompressed wire name, offset after it)."""
    out = bytearray()
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise ValueError("name runs past the end of the message")
        length = data[offset]
        if length == 0:
            out.append(0)
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if not allow_pointers or offset + 1 >= len(data):
                raise ValueError("compression pointer where none is allowed")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64 or target >= offset:
                raise ValueError("compression loop")
            offset = target
            continue
        if length & 0xC0:
            raise ValueError("unknown label type")
        if offset + 1 + length > len(data):
            raise ValueError("label runs past the end of the message")
        out += data[offset : offset + 1 + length]
        offset += 1 + length
        if len(out) > 255:
            raise ValueError("name longer than 255 octets")
    if len(out) > 255:
        raise ValueError("name longer than 255 octets")
    return bytes(out), (end if end >= 0 else offset)


def wire_to_text(wire: bytes) -> str:
    """Lower-case dotted text of an uncompressed wire name; bytes outside [a-z0-9-_] are escaped."""
    labels = []
    offset = 0
    while wire[offset]:
        length = wire[offset]
        raw = wire[offset + 1 : offset + 1 + length].lower()
        if all(c in _PLAIN for c in raw):
            labels.append(raw.decode("ascii"))
        else:
            labels.append("".join(chr(c) if c in _PLAIN else f"\\{c:03d}" for c in raw))
        offset += 1 + length
    return ".".join(labels)


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_*")


def text_to_wire(name: str) -> bytes:
    """Wire form of a dotted name made of plain labels (the names dnsd itself generates)."""
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode()
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises DropPacket for garbage; sets `error` for answerable problems.

    Only what a query may hold is read: the question, then at most one OPT in the additional
    section (root owner, RFC 6891 6.1.1) and one TSIG as the very last record (RFC 8945 5.1; its
    place is noted in `tsig_at`, for transfers), plus for IXFR the client's SOA as the single
    authority record (RFC 1995 3, noted in `authority_at`). Anything else is a FORMERR decided at the
    first record that does not belong, most of it from the header counts alone: a query stuffed
    with thousands of records costs what a normal one costs, and an OPT in the answer or authority
    section is a FORMERR (RFC 6891 6.1.1). Errors answered without a lookup (NOTIMP for other
    opcodes, FORMERR for QDCOUNT != 1) still read the OPT when it is cheap to find, so that the
    answer carries one (RFC 6891 7).
    """
    if len(data) < 12:
        raise DropPacket("shorter than a header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise DropPacket("a response, not a query")  # never answer responses: no reflection loops
    query = Query(id=ident, flags=flags, opcode=(flags >> 11) & 0xF)
    offset = 12
    if qdcount == 1:
        try:
            wire, offset = read_name(data, 12, allow_pointers=False)
            if offset + 4 > len(data):
                raise ValueError("question runs past the end")
            query.qtype, query.qclass = _TYPE_CLASS.unpack_from(data, offset)
            offset += 4
            query.qname_wire = data[12 : offset - 4]
            query.qname = wire_to_text(wire)
            query.has_question = True
        except ValueError:
            query.error = FORMERR
            return query
    if query.opcode != OPCODE_QUERY:
        # Other opcodes' sections (NOTIFY's SOA, UPDATE's records) are not ours to judge; a few
        # records are walked to find the OPT to echo.
        query.error = NOTIMP
        if qdcount <= 1 and ancount + nscount + arcount <= MAX_NOTIMP_RECORDS:
            _echo_opt(query, data, offset, 0, ancount + nscount, arcount)
        return query
    if qdcount != 1:
        query.error = FORMERR
        if qdcount <= MAX_EXTRA_QUESTIONS and not ancount and not nscount:
            _echo_opt(query, data, offset, qdcount, 0, arcount)  # none of them read yet
        return query
    authority = 1 if query.qtype == IXFR else 0
    if ancount or nscount > authority or arcount > 2:
        query.error = FORMERR  # records no query holds: decided before reading any of them
        return query
    try:
        if nscount:
            query.authority_at = offset
            offset = _skip_rr(data, offset, SOA)
        _read_additional(query, data, offset, arcount)
    except ValueError:
        query.error = FORMERR
        return query
    if query.edns and query.edns_version > 0:
        query.error = BADVERS
    elif query.qtype == OPT or 128 <= query.qtype <= 250:
        query.error = FORMERR  # meta-types that are not questions (RFC 6895 3.1)
    elif query.qtype in (253, 254):
        query.error = NOTIMP  # MAILB / MAILA
    return query


def _read_additional(query: Query, data: bytes, offset: int, count: int) -> None:
    """The additional section of a query: one OPT at most, a TSIG only as the last record."""
    for index in range(count):
        start = offset
        wire, after_name = read_name(data, offset, allow_pointers=True)
        if after_name + 10 > len(data):
            raise ValueError("record runs past the end")
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, after_name)
        end = after_name + 10 + rdlength
        if end > len(data):
            raise ValueError("rdata runs past the end")
        if rtype == OPT:
            if query.edns or wire != b"\x00":
                raise ValueError("second OPT, or OPT not owned by the root")  # RFC 6891 6.1.1
            query.edns = True
            query.udp_size = max(rclass, CLASSIC_UDP_SIZE)
            query.edns_version = (ttl >> 16) & 0xFF
            query.edns_do = bool(ttl & 0x8000)
            _check_options(data, after_name + 10, end)
        elif rtype == TSIG and index == count - 1:
            query.tsig_at = start
        else:
            raise ValueError("a record that no query holds")
        offset = end


def _echo_opt(query: Query, data: bytes, offset: int, questions: int, records: int, additional: int) -> None:
    """For an error answered without a lookup: read the OPT, if any, past a few questions and records.

    Nothing here changes the error; a message that does not walk cleanly is answered without OPT.
    """
    try:
        for _ in range(questions):
            _, offset = read_name(data, offset, allow_pointers=True)
            offset += 4
        for _ in range(records):
            offset = _skip_rr(data, offset)
        for _ in range(additional):
            wire, after_name = read_name(data, offset, allow_pointers=True)
            if after_name + 10 > len(data):
                return
            rtype, rclass, _, rdlength = _RR_FIXED.unpack_from(data, after_name)
            if rtype == OPT and wire == b"\x00":
                query.edns = True
                query.udp_size = max(rclass, CLASSIC_UDP_SIZE)
                query.edns_do = bool(data[after_name + 6] & 0x80)
                return
            offset = after_name + 10 + rdlength
    except ValueError:
        return


def _skip_rr(data: bytes, offset: int, rtype: int | None = None) -> int:
    """The offset after one record; ValueError when it runs past the end or is not of `rtype`."""
    _, offset = read_name(data, offset, allow_pointers=True)
    if offset + 10 > len(data):
        raise ValueError("record runs past the end")
    if rtype is not None and (data[offset] << 8) | data[offset + 1] != rtype:
        raise ValueError("a record that no query holds")
    rdlength = (data[offset + 8] << 8) | data[offset + 9]
    if offset + 10 + rdlength > len(data):
        raise ValueError("rdata runs past the end")
    return offset + 10 + rdlength


def _check_options(data: bytes, offset: int, end: int) -> None:
    """EDNS options must tile the rdata exactly; their contents are ignored (RFC 6891 6.1.2)."""
    while offset < end:
        if offset + 4 > end:
            raise ValueError("truncated EDNS option")
        length = struct.unpack_from("!H", data, offset + 2)[0]
        offset += 4 + length
    if offset != end:
        raise ValueError("EDNS option runs past the OPT record")


RR = tuple[str, int, int, Rdata]  # owner, type, ttl, rdata (class IN)
SoaRdata = tuple[str, str, int, int, int, int, int]


@dataclass(slots=True)
class Response:
    """What the authority decided; `encode` turns it into bytes for one transport's size limit."""

    rcode: int = NOERROR
    aa: bool = False
    answer: list[RR | tuple[str, int, int, SoaRdata]] = field(default_factory=list)
    authority: list[RR | tuple[str, int, int, SoaRdata]] = field(default_factory=list)
    additional: list[RR | tuple[str, int, int, SoaRdata]] = field(default_factory=list)


class _Writer:
    """Accumulates a message and remembers where names were written, for compression."""

    __slots__ = ("buf", "names")

    def __init__(self, prefix: bytes, qname: str) -> None:
        self.buf = bytearray(prefix)
        self.names: dict[str, int] = {}
        if qname and "\\" not in qname:  # escaped text does not map 1:1 to wire offsets
            self._remember(qname, 12)

    def _remember(self, name: str, offset: int) -> None:
        labels = name.split(".")
        for i in range(len(labels)):
            if offset >= 0x4000:
                return
            self.names.setdefault(".".join(labels[i:]), offset)
            offset += 1 + len(labels[i])

    def name(self, name: str, compress: bool = True) -> None:
        if not name:
            self.buf.append(0)
            return
        labels = name.split(".")
        start = len(self.buf)
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            pointer = self.names.get(suffix) if compress else None
            if pointer is not None:
                self.buf += struct.pack("!H", 0xC000 | pointer)
                break
            raw = labels[i].encode()
            self.buf.append(len(raw))
            self.buf += raw
        else:
            self.buf.append(0)
        self._remember(name, start)

    def rr(self, record: RR | tuple[str, int, int, SoaRdata]) -> None:
        owner, rtype, ttl, rdata = record
        self.name(owner)
        self.buf += struct.pack("!HHI", rtype, CLASS_IN, ttl)
        length_at = len(self.buf)
        self.buf += b"\x00\x00"
        if isinstance(rdata, bytes):
            self.buf += rdata
        elif isinstance(rdata, str):
            self.name(rdata, compress=rtype in (CNAME, PTR, NS))
        elif rtype == SRV:
            priority, weight, port, target = rdata  # type: ignore[misc]
            self.buf += struct.pack("!HHH", priority, weight, port)
            self.name(target, compress=False)
        elif rtype == SOA:
            mname, rname, serial, refresh, retry, expire, minimum = rdata  # type: ignore[misc]
            self.name(mname)
            self.name(rname)
            self.buf += struct.pack("!IIIII", serial, refresh, retry, expire, minimum)
        struct.pack_into("!H", self.buf, length_at, len(self.buf) - length_at - 2)


def opt_record(udp_size: int, do: bool, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-RR: root owner, our payload size, extended rcode, version 0, DO echoed."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, udp_size, ttl, 0)


def encode(
    query: Query,
    response: Response,
    ra: bool,
    limit: int,
    edns_size: int,
) -> bytes:
    """Encode for a client whose limit is `limit` bytes, truncating (TC) when the answer cannot fit."""
    flags = QR | (query.opcode << 11) | (query.flags & (RD | CD)) | (response.rcode & 0xF)
    if response.aa:
        flags |= AA
    if ra:
        flags |= RA
    qd = 1 if query.has_question else 0
    question = query.qname_wire + _TYPE_CLASS.pack(query.qtype, query.qclass) if qd else b""
    opt = opt_record(edns_size, query.edns_do, response.rcode >> 4) if query.edns else b""
    ar_extra = 1 if query.edns else 0

    writer = _Writer(b"\x00" * 12 + question, query.qname if qd else "")
    for record in response.answer:
        writer.rr(record)
    for record in response.authority:
        writer.rr(record)
    body_end = len(writer.buf)
    for record in response.additional:
        writer.rr(record)
    counts = [len(response.answer), len(response.authority), len(response.additional)]
    if len(writer.buf) + len(opt) > limit and response.additional:
        del writer.buf[body_end:]  # additional data is optional (RFC 2181 9): drop it first
        counts[2] = 0
    if len(writer.buf) + len(opt) > limit:
        _HEADER.pack_into(writer.buf, 0, query.id, flags | TC, qd, 0, 0, ar_extra)
        return bytes(writer.buf[: 12 + len(question)]) + opt
    _HEADER.pack_into(writer.buf, 0, query.id, flags, qd, counts[0], counts[1], counts[2] + ar_extra)
    return bytes(writer.buf) + opt


def encode_error(query: Query, rcode: int, ra: bool, edns_size: int) -> bytes:
    """A bare error response (FORMERR, NOTIMP, REFUSED, SERVFAIL, BADVERS) echoing the question."""
    return encode(query, Response(rcode=rcode), ra, 65535, edns_size)


__all__ = [
    "AAAA", "AA", "RA", "RD", "CD", "TC", "QR", "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
    "REFUSED", "BADVERS", "Query", "Response", "DropPacket", "parse_query", "encode", "encode_error",
    "text_to_wire", "wire_to_text", "opt_record",
]
