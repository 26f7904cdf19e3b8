"""Canonical form and order (RFC 4034 section 6) and the bytes an RRSIG covers (RFC 4034 3.1.8.1).

The validator checks signatures over these bytes and the signer (issue 14) will produce them, so
both agree by construction. Names inside rdata are lower-cased for exactly the types of RFC 4034
6.2 item 3 as corrected by RFC 6840 5.1: NSEC's next name keeps its case (and HINFO, which holds no
names, was never on the list); RRSIG's signer name is lower-cased.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dnsd.dnssec.records import FormatError, Rrsig, read_name

#: Per type, the layout of its rdata up to the last name: "n" is a name, an int a fixed number of
#: octets, "s" a <character-string>. Types not listed have no names to lower-case.
_LOWERCASE_LAYOUT: dict[int, tuple[int | str, ...]] = {
    2: ("n",), 3: ("n",), 4: ("n",), 5: ("n",), 6: ("n", "n"), 7: ("n",), 8: ("n",), 9: ("n",),
    12: ("n",), 14: ("n", "n"), 15: (2, "n"), 17: ("n", "n"), 18: (2, "n"), 21: (2, "n"),
    24: (18, "n"), 26: (2, "n", "n"), 33: (6, "n"), 35: (4, "s", "s", "s", "n"), 36: (2, "n"),
    39: ("n",), 46: (18, "n"),
}


def lower(name: bytes) -> bytes:
    """A wire name in canonical (lower) case; length octets are below 'A', so bytes.lower is exact."""
    return name.lower()


def canonical_rdata(rtype: int, rdata: bytes) -> bytes:
    """`rdata` with its embedded names lower-cased where RFC 4034 6.2 (RFC 6840 5.1) says so."""
    layout = _LOWERCASE_LAYOUT.get(rtype)
    if layout is None:
        return rdata
    out = bytearray()
    offset = 0
    for part in layout:
        if part == "n":
            name, end = read_name(rdata, offset)
            out += name.lower()
        elif part == "s":
            if offset >= len(rdata):
                raise FormatError("character-string runs past the rdata")
            end = offset + 1 + rdata[offset]
            out += rdata[offset:end]
        else:
            end = offset + int(part)
            out += rdata[offset:end]
        if end > len(rdata):
            raise FormatError("rdata shorter than its type needs")
        offset = end
    return bytes(out) + rdata[offset:]


def labels(name: bytes) -> list[bytes]:
    """The labels of a wire name, leftmost first, without the root."""
    out = []
    offset = 0
    while name[offset]:
        out.append(name[offset + 1 : offset + 1 + name[offset]])
        offset += 1 + name[offset]
    return out


def from_labels(parts: Iterable[bytes]) -> bytes:
    return b"".join(bytes((len(p),)) + p for p in parts) + b"\x00"


def order_key(name: bytes) -> tuple[bytes, ...]:
    """Sort key of RFC 4034 6.1: labels compared right to left, each as lower-case octets."""
    return tuple(reversed([label.lower() for label in labels(name)]))


def signing_owner(owner: bytes, rrsig_labels: int) -> bytes:
    """The owner as signed: lower case, and '*.' plus the RRSIG's labels for a wildcard expansion."""
    parts = labels(owner.lower())
    significant = parts[1:] if parts and parts[0] == b"*" else parts  # RFC 4034 3.1.3: '*' not counted
    if rrsig_labels < len(significant):
        return from_labels([b"*", *significant[len(significant) - rrsig_labels :]])
    return from_labels(parts)


def signed_data(sig: Rrsig, owner: bytes, rtype: int, rclass: int, rdatas: Iterable[bytes]) -> bytes:
    """RRSIG_RDATA | RR(1) | RR(2) ... in canonical order with duplicates removed (RFC 4034 3.1.8.1)."""
    head = sig.signed_part[:18] + sig.signer.lower()
    name = signing_owner(owner, sig.labels)
    fixed = struct.pack("!HHI", rtype, rclass, sig.original_ttl)
    canonical = sorted({canonical_rdata(rtype, rdata) for rdata in rdatas})
    return head + b"".join(name + fixed + struct.pack("!H", len(r)) + r for r in canonical)
