"""Authoritative answers from the zone index: pure, synchronous, no I/O.

`answer()` implements RFC 1034 4.3.2 for zones without delegations, with RFC 4592 wildcards: exact match, CNAME
(chased while it stays inside dnsd's zones, at most `MAX_CNAME_CHAIN` links), NODATA and NXDOMAIN
with the SOA in the authority section at TTL min(SOA TTL, SOA minimum) (RFC 2308 3), empty
non-terminals as NODATA (RFC 8020), RFC 8482 minimal answers to ANY, SRV targets and NS glue in the
additional section. Before the source's first full sync every name in the zone gets SERVFAIL, so
that resolvers do not cache a wrong NXDOMAIN. The handler decides what to do with names outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnsd.wire import ANY, AXFR, IXFR, NXDOMAIN, REFUSED, RR, SERVFAIL, Response
from dnsd.zone import AAAA, CNAME, NS, SOA, SRV, A, ZoneApex, ZoneIndex

if TYPE_CHECKING:
    from dnsd.dnssec.signer import Signer

#: Longest chain of in-zone CNAMEs followed in one answer (loops end here too).
MAX_CNAME_CHAIN = 8

#: RFC 8482 4.1: answer ANY with one RRset; these are preferred, in order, when present.
_ANY_PREFERENCE = (A, AAAA, CNAME, SRV, 12, 16, NS)


@dataclass(slots=True)
class Answer:
    """An authoritative response plus what it depends on, so that a cache can invalidate it exactly."""

    response: Response
    names: set[str]  # owner names consulted: a change to any of them changes this answer
    volatile: bool  # carries the SOA (serial) or the not-synced state: changes on every zone change
    apex: ZoneApex


def answer(zone: ZoneIndex, qname: str, qtype: int, signer: Signer | None = None) -> Answer | None:
    """The authoritative answer for (qname, qtype), or None when qname is outside every served zone.

    With `signer` (a DO=1 query to a signed zone) the answer also carries the pre-made RRSIGs and
    NSEC3 proofs; such an answer depends on every name (NSEC3 neighbours), so it is volatile.
    """
    result = _answer(zone, qname, qtype)
    if signer is not None and result is not None and result.response.rcode in (0, NXDOMAIN):
        signer.augment(result.response, qname)
        if result.response.rcode == NXDOMAIN or not result.response.answer:
            result.volatile = True
    return result


def _answer(zone: ZoneIndex, qname: str, qtype: int) -> Answer | None:
    apex = zone.find_apex(qname)
    if apex is None:
        return None
    response = Response(aa=True)
    names = {qname}
    if not zone.synced:
        return Answer(Response(rcode=SERVFAIL), names, True, apex)
    if qtype in (AXFR, IXFR):
        return Answer(Response(rcode=REFUSED), names, False, apex)  # no zone transfers (as CoreDNS)

    name = qname
    current_apex = apex
    volatile = False
    for _ in range(MAX_CNAME_CHAIN + 1):
        source = name  # where the records come from: the name itself, or its source of synthesis
        if not zone.exists(name):
            wildcard = source_of_synthesis(zone, name, current_apex)
            if wildcard is None:
                response.rcode = NXDOMAIN  # for the last name of a CNAME chain too (RFC 6604 2.1)
                _add_soa(zone, current_apex, response)
                return Answer(response, names, True, apex)
            # RFC 4592 3.3.1: synthesized with the query name as owner. Which names exist between
            # the closest encloser and the query name decides the answer: volatile, so any change
            # to the zone drops it from the fast path.
            source = wildcard
            volatile = True
            names.add(wildcard)
        if qtype != CNAME and qtype != ANY:
            cname = zone.rrset(source, CNAME)
            if cname is not None:
                ttl, (target,) = cname[0], cname[1][:1]
                response.answer.append((name, CNAME, ttl, target))
                next_apex = zone.find_apex(str(target))
                if next_apex is None:
                    return Answer(response, names, volatile, apex)  # leaves our zones: the client follows
                name = str(target)
                current_apex = next_apex
                names.add(name)
                continue
        if name == current_apex.name and qtype == SOA:
            soa_ttl = zone.config.ttl
            response.answer.append((name, SOA, soa_ttl, zone.soa_rdata(current_apex)))
            return Answer(response, names, True, apex)
        types = [qtype]
        if qtype == ANY:
            present = zone.types_at(source)
            preferred = [t for t in _ANY_PREFERENCE if t in present]
            types = preferred[:1] or present[:1]
            if name == current_apex.name and not types:
                response.answer.append((name, SOA, zone.config.ttl, zone.soa_rdata(current_apex)))
                return Answer(response, names, True, apex)
        found = False
        for rtype in types:
            rrset = zone.rrset(source, rtype)
            if rrset is None:
                continue
            found = True
            ttl, rdatas = rrset
            response.answer.extend((name, rtype, ttl, rdata) for rdata in rdatas)
            _add_additional(zone, rtype, rdatas, response, names)
        if not found:
            _add_soa(zone, current_apex, response)
            return Answer(response, names, True, apex)
        return Answer(response, names, volatile, apex)
    return Answer(response, names, volatile, apex)  # chain too long: what we have, the client follows


def source_of_synthesis(zone: ZoneIndex, qname: str, apex: ZoneApex) -> str | None:
    """RFC 4592 3.3.1: `*.<closest encloser>` when it exists, for a qname that does not exist.

    The closest encloser is the longest existing ancestor of qname (empty non-terminals exist, so
    a wildcard never matches below a name that exists, 2.2.1); the apex always exists.
    """
    labels = qname.split(".")
    for i in range(1, len(labels)):
        ancestor = ".".join(labels[i:])
        if ancestor == apex.name or zone.exists(ancestor):
            wildcard = "*." + ancestor
            return wildcard if zone.exists(wildcard) else None
        if len(ancestor) <= len(apex.name):
            break
    return None


def _add_soa(zone: ZoneIndex, apex: ZoneApex, response: Response) -> None:
    """RFC 2308 3: the SOA of the zone in the authority section, TTL = min(SOA TTL, SOA minimum)."""
    soa = zone.soa_rdata(apex)
    response.authority.append((apex.name, SOA, min(zone.config.ttl, soa[6]), soa))


def _add_additional(zone: ZoneIndex, rtype: int, rdatas: tuple[object, ...], response: Response,
                    names: set[str]) -> None:
    """Addresses of SRV targets and NS names that dnsd itself serves (RFC 2782, RFC 1034 4.3.2)."""
    if rtype == SRV:
        targets = [str(r[3]) for r in rdatas if isinstance(r, tuple)]
    elif rtype == NS:
        targets = [str(r) for r in rdatas]
    else:
        return
    for target in dict.fromkeys(targets):
        if zone.find_apex(target) is None:
            continue
        names.add(target)
        for addr_type in (A, AAAA):
            rrset = zone.rrset(target, addr_type)
            if rrset is not None:
                ttl, addrs = rrset
                response.additional.extend((target, addr_type, ttl, a) for a in addrs)


__all__ = ["MAX_CNAME_CHAIN", "Answer", "answer", "RR"]
