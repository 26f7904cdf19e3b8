"""NSEC3 denial of existence (RFC 5155 section 8) with the RFC 9276 iteration limit.

`Chain` holds a response's NSEC3 records of one zone (signatures verified by the caller) and hashes
names on demand, counting every hash against a budget: a hostile response cannot make the resolver
hash without end (CVE-2023-50868). NSEC3 records with more than `MAX_ITERATIONS` iterations are not
used at all; `Chain.too_many_iterations` tells the caller, which then treats the answer as insecure
(RFC 9276 3.2, EDE 27) as BIND, Knot Resolver and PowerDNS do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from dnsd.dnssec.canonical import from_labels, labels
from dnsd.dnssec.records import FormatError, Nsec3, nsec3

NS, SOA, CNAME, DS, DNAME = 2, 6, 5, 43, 39
#: RFC 9276 3.2: validators may treat more iterations as insecure; 50 is what BIND, Knot and PowerDNS use.
MAX_ITERATIONS = 50
#: Names hashed per response at most (Unbound's val-nsec3-max-hash-calcs idea, CVE-2023-50868).
MAX_HASHES = 64
SHA1 = 1


class HashBudgetExceeded(Exception):
    """A response needed more NSEC3 hashes than `MAX_HASHES`."""


def hash_name(name: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5155 5: IH(salt, x, 0) = H(x || salt); IH(salt, x, k) = H(IH(salt, x, k-1) || salt)."""
    digest = hashlib.sha1(name.lower() + salt, usedforsecurity=False).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt, usedforsecurity=False).digest()
    return digest


def b32(digest: bytes) -> bytes:
    """The owner label of a hash: base32hex without padding, lower case."""
    return base64.b32hexencode(digest).rstrip(b"=").lower()


@dataclass(frozen=True, slots=True)
class _Entry:
    owner_hash: bytes
    record: Nsec3


class Chain:
    """The usable NSEC3 records of one zone from one response."""

    def __init__(self, zone: bytes, records: Iterable[tuple[bytes, bytes]]) -> None:
        self.zone = zone.lower()
        self.too_many_iterations = False
        self.hashes = 0
        self._cache: dict[bytes, bytes] = {}
        self.entries: list[_Entry] = []
        params: tuple[int, bytes] | None = None
        for owner, rdata in records:
            parts = labels(owner.lower())
            if not parts or from_labels(parts[1:]) != self.zone:
                continue  # only NSEC3 records directly below the apex belong to the zone's chain
            try:
                record = nsec3(rdata)
                owner_hash = base64.b32hexdecode(parts[0].upper() + b"=" * (-len(parts[0]) % 8))
            except (FormatError, binascii.Error, ValueError):
                continue
            if record.algorithm != SHA1 or record.flags & 0xFE:
                continue  # RFC 5155 8.1/8.2: unknown hash algorithms and flags are ignored
            if record.iterations > MAX_ITERATIONS:
                self.too_many_iterations = True
                continue
            if params is None:
                params = (record.iterations, record.salt)
            elif params != (record.iterations, record.salt):
                continue  # one chain, one parameter set (RFC 5155 8.2)
            self.entries.append(_Entry(owner_hash, record))
        self.params = params

    def hash(self, name: bytes) -> bytes:
        k = name.lower()
        found = self._cache.get(k)
        if found is None:
            if self.params is None:
                raise HashBudgetExceeded("no parameters")
            self.hashes += 1
            if self.hashes > MAX_HASHES:
                raise HashBudgetExceeded(f"more than {MAX_HASHES} NSEC3 hashes")
            found = self._cache[k] = hash_name(k, self.params[1], self.params[0])
        return found

    def matching(self, name: bytes) -> Nsec3 | None:
        if not self.entries:
            return None
        h = self.hash(name)
        return next((e.record for e in self.entries if e.owner_hash == h), None)

    def covering(self, name: bytes) -> Nsec3 | None:
        if not self.entries:
            return None
        h = self.hash(name)
        for e in self.entries:
            o, n = e.owner_hash, e.record.next_hash
            if (o < h < n) if o < n else (h > o or h < n):
                return e.record
        return None

    def closest_encloser(self, qname: bytes) -> tuple[bytes, Nsec3] | None:
        """RFC 5155 8.3: (closest encloser, NSEC3 covering the next closer name), or None."""
        parts = labels(qname.lower())
        zone_labels = len(labels(self.zone))
        for i in range(1, len(parts) - zone_labels + 1):
            ancestor = from_labels(parts[i:])
            match = self.matching(ancestor)
            if match is None:
                continue
            if DNAME in match.types or (NS in match.types and SOA not in match.types):
                return None  # a delegation's or a DNAME's NSEC3 proves nothing below it
            cover = self.covering(from_labels(parts[i - 1 :]))
            return (ancestor, cover) if cover is not None else None
        return None


#: Outcomes of a proof: proven, insecure because opt-out may hide an unsigned delegation, or failed.
PROVEN, OPT_OUT, FAILED = "proven", "opt-out", "failed"


def nxdomain(chain: Chain, qname: bytes) -> str:
    """RFC 5155 8.4: closest encloser proof plus an NSEC3 covering the wildcard at it."""
    found = chain.closest_encloser(qname)
    if found is None:
        return FAILED
    ce, next_closer = found
    if chain.covering(b"\x01*" + ce) is None:
        return FAILED
    return OPT_OUT if next_closer.opt_out else PROVEN


def nodata(chain: Chain, qname: bytes, qtype: int) -> str:
    """RFC 5155 8.5-8.7: the name's NSEC3 lacks the type; for DS, opt-out; or a wildcard's NSEC3."""
    match = chain.matching(qname)
    if match is not None:
        if qtype in match.types or CNAME in match.types:
            return FAILED
        if qtype != DS and NS in match.types and SOA not in match.types:
            return FAILED  # the parent's NSEC3 at a delegation says nothing about the child's types
        return PROVEN
    found = chain.closest_encloser(qname)
    if found is None:
        return FAILED
    ce, next_closer = found
    if qtype == DS:
        return OPT_OUT if next_closer.opt_out else FAILED  # 8.6
    wild = chain.matching(b"\x01*" + ce)  # 8.7
    if wild is None or qtype in wild.types or CNAME in wild.types:
        return FAILED
    return PROVEN


def wildcard_answer(chain: Chain, qname: bytes, rrsig_labels: int) -> str:
    """RFC 5155 8.8: the next closer name of the expanded wildcard must be covered."""
    parts = labels(qname.lower())
    if rrsig_labels >= len(parts):
        return FAILED
    next_closer = from_labels(parts[len(parts) - rrsig_labels - 1 :])
    cover = chain.covering(next_closer)
    if cover is None:
        return FAILED
    return OPT_OUT if cover.opt_out else PROVEN


HAS_DS, INSECURE_CUT, NOT_A_CUT, NONEXISTENT = "has-ds", "insecure-cut", "not-a-cut", "nonexistent"


def ds_status(chain: Chain, name: bytes) -> str | None:
    """As `nsec.ds_status`; an opt-out span over `name` counts as an insecure cut (RFC 5155 6)."""
    match = chain.matching(name)
    if match is not None:
        if DS in match.types:
            return HAS_DS
        if NS in match.types and SOA not in match.types:
            return INSECURE_CUT
        return NOT_A_CUT
    found = chain.closest_encloser(name)
    if found is None:
        return None
    return INSECURE_CUT if found[1].opt_out else NONEXISTENT
