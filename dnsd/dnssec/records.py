"""Parsers for the DNSSEC record types: rdata bytes in, typed records out (RFC 4034, RFC 5155).

Upstream rdata is untrusted: each parser checks every length against the rdata and raises
`FormatError` (a ValueError) for anything short, long or impossible, so that a hostile record can
only ever fail validation, never raise something unexpected in the validator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class FormatError(ValueError):
    """The rdata is not a well-formed record of its type."""


#: DNSKEY flags (RFC 4034 2.1.1, RFC 5011 7): the Zone Key bit, SEP, REVOKE.
ZONE_KEY, SEP, REVOKE = 0x0100, 0x0001, 0x0080
#: NSEC3 flags (RFC 5155 3.1.2.1).
OPT_OUT = 0x01


def read_name(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    """An uncompressed wire name at `offset` (no pointers: RFC 4034 forbids compression here)."""
    start = offset
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the rdata")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:
            raise FormatError("compressed or invalid label in a DNSSEC name")
        offset += 1 + length
    if offset - start > 255:
        raise FormatError("name longer than 255 octets")
    return data[start:offset], offset


def label_count(name: bytes) -> int:
    """Labels of a wire name, not counting the root nor a leading '*' (RFC 4034 3.1.3)."""
    count, offset = 0, 0
    while name[offset]:
        count += 1
        offset += 1 + name[offset]
    if name[:2] == b"\x01*":
        count -= 1
    return count


@dataclass(frozen=True, slots=True)
class Dnskey:
    flags: int
    protocol: int
    algorithm: int
    key: bytes
    rdata: bytes

    @property
    def zone_key(self) -> bool:
        return bool(self.flags & ZONE_KEY)

    @property
    def revoked(self) -> bool:
        return bool(self.flags & REVOKE)


def dnskey(rdata: bytes) -> Dnskey:
    if len(rdata) < 5:
        raise FormatError("DNSKEY shorter than its fixed part")
    flags, protocol, algorithm = struct.unpack_from("!HBB", rdata)
    return Dnskey(flags, protocol, algorithm, rdata[4:], rdata)


@dataclass(frozen=True, slots=True)
class Rrsig:
    type_covered: int
    algorithm: int
    labels: int
    original_ttl: int
    expiration: int
    inception: int
    key_tag: int
    signer: bytes
    signature: bytes
    rdata: bytes

    @property
    def signed_part(self) -> bytes:
        """The rdata without the signature (what RFC 4034 3.1.8.1 calls RRSIG_RDATA)."""
        return self.rdata[: len(self.rdata) - len(self.signature)]


def rrsig(rdata: bytes) -> Rrsig:
    if len(rdata) < 19:
        raise FormatError("RRSIG shorter than its fixed part")
    covered, algorithm, labels, ttl, expiration, inception, tag = struct.unpack_from("!HBBIIIH", rdata)
    signer, offset = read_name(rdata, 18)
    signature = rdata[offset:]
    if not signature:
        raise FormatError("RRSIG without a signature")
    return Rrsig(covered, algorithm, labels, ttl, expiration, inception, tag, signer, signature, rdata)


@dataclass(frozen=True, slots=True)
class Ds:
    key_tag: int
    algorithm: int
    digest_type: int
    digest: bytes


def ds(rdata: bytes) -> Ds:
    if len(rdata) < 5:
        raise FormatError("DS shorter than its fixed part")
    tag, algorithm, digest_type = struct.unpack_from("!HBB", rdata)
    return Ds(tag, algorithm, digest_type, rdata[4:])


def type_bitmap(data: bytes) -> frozenset[int]:
    """The types in an RFC 4034 4.1.2 bitmap (windows in increasing order, 1..32 octets each)."""
    types: set[int] = set()
    offset = 0
    last = -1
    while offset < len(data):
        if offset + 2 > len(data):
            raise FormatError("type bitmap window header runs past the rdata")
        window, length = data[offset], data[offset + 1]
        if window <= last or not 1 <= length <= 32 or offset + 2 + length > len(data):
            raise FormatError("malformed type bitmap window")
        last = window
        for i, octet in enumerate(data[offset + 2 : offset + 2 + length]):
            for bit in range(8):
                if octet & (0x80 >> bit):
                    types.add(window * 256 + i * 8 + bit)
        offset += 2 + length
    return frozenset(types)


def encode_type_bitmap(types: set[int] | frozenset[int]) -> bytes:
    """The RFC 4034 4.1.2 bitmap of `types` (for the signer and for tests)."""
    out = bytearray()
    for window in sorted({t >> 8 for t in types}):
        bits = bytearray(32)
        for t in types:
            if t >> 8 == window:
                bits[(t & 0xFF) // 8] |= 0x80 >> (t & 7)
        length = max(i for i, b in enumerate(bits) if b) + 1
        out += bytes((window, length)) + bits[:length]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Nsec:
    next_name: bytes
    types: frozenset[int]


def nsec(rdata: bytes) -> Nsec:
    name, offset = read_name(rdata)
    return Nsec(name, type_bitmap(rdata[offset:]))


@dataclass(frozen=True, slots=True)
class Nsec3:
    algorithm: int
    flags: int
    iterations: int
    salt: bytes
    next_hash: bytes
    types: frozenset[int]

    @property
    def opt_out(self) -> bool:
        return bool(self.flags & OPT_OUT)


def nsec3(rdata: bytes) -> Nsec3:
    if len(rdata) < 5:
        raise FormatError("NSEC3 shorter than its fixed part")
    algorithm, flags, iterations, salt_length = struct.unpack_from("!BBHB", rdata)
    offset = 5 + salt_length
    if offset + 1 > len(rdata):
        raise FormatError("NSEC3 salt runs past the rdata")
    salt = rdata[5:offset]
    hash_length = rdata[offset]
    offset += 1
    if hash_length == 0 or offset + hash_length > len(rdata):
        raise FormatError("NSEC3 next hashed owner runs past the rdata")
    next_hash = rdata[offset : offset + hash_length]
    return Nsec3(algorithm, flags, iterations, salt, next_hash, type_bitmap(rdata[offset + hash_length :]))


@dataclass(frozen=True, slots=True)
class Nsec3Param:
    algorithm: int
    flags: int
    iterations: int
    salt: bytes


def nsec3param(rdata: bytes) -> Nsec3Param:
    if len(rdata) < 5:
        raise FormatError("NSEC3PARAM shorter than its fixed part")
    algorithm, flags, iterations, salt_length = struct.unpack_from("!BBHB", rdata)
    if 5 + salt_length != len(rdata):
        raise FormatError("NSEC3PARAM salt does not fill the rdata")
    return Nsec3Param(algorithm, flags, iterations, rdata[5:])
