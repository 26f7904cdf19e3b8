"""NSEC denial of existence (RFC 4035 5.4, RFC 4034 4, RFC 6840 4.1 and 4.3).

Every function takes NSEC records whose signatures the caller has already verified with the keys of
one zone, as (owner, parsed NSEC) pairs, and answers one question about a name. The checks that stop
an NSEC from proving more than it may are here: an NSEC at a delegation point (NS without SOA) is
the parent's and says nothing about names or types in the child (RFC 6840 4.1), and a DNAME at an
ancestor means the name was redirected, not absent.
"""

from __future__ import annotations

from collections.abc import Sequence

from dnsd.dnssec.canonical import from_labels, labels, order_key
from dnsd.dnssec.records import Nsec

NS, SOA, CNAME, DS, DNAME = 2, 6, 5, 43, 39

Proof = Sequence[tuple[bytes, Nsec]]


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """Whether `name` is `zone` or below it (case-insensitive, label aligned)."""
    n, z = labels(name.lower()), labels(zone.lower())
    return len(n) >= len(z) and (not z or n[len(n) - len(z) :] == z)


def covers(owner: bytes, next_name: bytes, name: bytes) -> bool:
    """Whether the NSEC owner..next interval (RFC 4034 6.1 order) holds `name` strictly inside.

    The last NSEC of a zone points back to the apex; then everything after the owner is covered.
    """
    o, n, x = order_key(owner), order_key(next_name), order_key(name)
    if o < n:
        return o < x < n
    return x > o or x < n


def common_ancestor(a: bytes, b: bytes) -> bytes:
    """The longest name both `a` and `b` are at or below."""
    la, lb = list(reversed(labels(a.lower()))), list(reversed(labels(b.lower())))
    common: list[bytes] = []
    for x, y in zip(la, lb, strict=False):
        if x != y:
            break
        common.append(x)
    return from_labels(reversed(common))


def _delegation(record: Nsec) -> bool:
    return NS in record.types and SOA not in record.types


def _covering(proof: Proof, name: bytes) -> tuple[bytes, Nsec] | None:
    for owner, record in proof:
        if covers(owner, record.next_name, name):
            # a covering NSEC from a delegation point or at a DNAME above `name` proves nothing
            if (_delegation(record) or DNAME in record.types) and is_subdomain(name, owner):
                continue
            return owner, record
    return None


def _matching(proof: Proof, name: bytes) -> Nsec | None:
    k = name.lower()
    return next((record for owner, record in proof if owner.lower() == k), None)


def closest_encloser(name: bytes, owner: bytes, record: Nsec) -> bytes:
    """RFC 4035 5.4: the deeper of the names `name` shares with the covering NSEC's two ends."""
    a, b = common_ancestor(name, owner), common_ancestor(name, record.next_name)
    return a if len(a) >= len(b) else b


def wildcard_of(name: bytes) -> bytes:
    return b"\x01*" + name.lower()


def nxdomain(proof: Proof, qname: bytes, zone: bytes) -> bool:
    """Name error: an NSEC covers `qname` and one covers the wildcard at its closest encloser."""
    cover = _covering(proof, qname)
    if cover is None:
        return False
    ce = closest_encloser(qname, *cover)
    if not is_subdomain(ce, zone):
        return False
    wildcard = wildcard_of(ce)
    return _matching(proof, wildcard) is None and _covering(proof, wildcard) is not None


def nodata(proof: Proof, qname: bytes, qtype: int, zone: bytes) -> bool:
    """No data of `qtype` at `qname`: the name's own NSEC, an empty non-terminal, or a wildcard."""
    record = _matching(proof, qname)
    if record is not None:
        if qtype in record.types or CNAME in record.types:
            return False
        if qtype == DS:
            return SOA not in record.types or qname.lower() == b"\x00"
        return not _delegation(record)
    cover = _covering(proof, qname)
    if cover is None:
        return False
    owner, record = cover
    if is_subdomain(record.next_name, qname) and record.next_name.lower() != qname.lower():
        return True  # an empty non-terminal: it exists, with no data (RFC 4035 3.1.3.2)
    ce = closest_encloser(qname, owner, record)
    if not is_subdomain(ce, zone):
        return False
    wild = _matching(proof, wildcard_of(ce))
    return wild is not None and qtype not in wild.types and CNAME not in wild.types


def wildcard_answer(proof: Proof, qname: bytes) -> bool:
    """RFC 4035 5.3.4: a wildcard expansion is genuine only when `qname` itself does not exist."""
    return _covering(proof, qname) is not None


#: What a zone's NSEC records say about a name in a DS walk (see dnsd.recursor.validator).
HAS_DS, INSECURE_CUT, NOT_A_CUT, NONEXISTENT = "has-ds", "insecure-cut", "not-a-cut", "nonexistent"


def ds_status(proof: Proof, name: bytes) -> str | None:
    """Whether `name` is a delegation without DS, no delegation, or absent; None when unproven."""
    record = _matching(proof, name)
    if record is not None:
        if DS in record.types:
            return HAS_DS
        if _delegation(record):
            return INSECURE_CUT
        return NOT_A_CUT
    cover = _covering(proof, name)
    if cover is None:
        return None
    if is_subdomain(cover[1].next_name, name):
        return NOT_A_CUT  # an empty non-terminal
    return NONEXISTENT
