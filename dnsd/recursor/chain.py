"""Shared resolution pieces: the work budget, CNAME/DNAME chain following, and the resolver errors.

`follow` walks the answer section of one response from the name asked, through CNAMEs and DNAMEs
(RFC 6672 section 3.3: a DNAME synthesizes a CNAME for each name below its owner), and returns the
records that form the chain plus the name still to resolve when the chain leaves the response. It
only ever takes records whose owner is the name reached so far, so unrelated records in a response
are never used. `Budget` bounds the work one client query may cause (NXNSAttack, CVE-2020-12662:
upstream queries, referrals, nested lookups of name server addresses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnsd.recursor.message import CNAME, DNAME, RR, first_name, is_subdomain, key

#: Longest CNAME/DNAME chain followed, counted in links over the whole chain, across responses
#: and zones (Unbound: 11 restarts; BIND: 16).
MAX_CHAIN = 12
#: Upstream queries one client query may send to one server address (a referral whose NS names all
#: point at one victim address must not turn one client query into 40 packets towards it).
MAX_PER_ADDRESS = 6


class ResolveError(Exception):
    """Resolution failed (SERVFAIL); `reason` is a bounded metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Budget:
    """Work one client query may cause; exceeding any bound ends the resolution with SERVFAIL."""

    queries: int = 40       # upstream queries in all (Unbound max-sent-count is 32)
    referrals: int = 30     # delegations followed in all
    depth: int = 4          # nesting of name server address lookups
    ns_lookups: int = 3     # glueless NS names resolved per delegation (the NXNSAttack bound)
    targets: int = 64       # name server address lookups in all (Unbound's 64 targets per query)
    #: queries sent per server address in this client query (bounded by MAX_PER_ADDRESS)
    sent: dict[str, int] = field(default_factory=dict)
    #: the shared fetch this query is waiting on (iterator in-flight sharing; deadlock detection)
    waiting: tuple[bytes, int] | None = None

    def may_send(self, address: str) -> bool:
        """Whether one more query to `address` stays within MAX_PER_ADDRESS; counts it if so."""
        count = self.sent.get(address, 0)
        if count >= MAX_PER_ADDRESS:
            return False
        self.sent[address] = count + 1
        return True

    def spend_query(self) -> None:
        self.queries -= 1
        if self.queries < 0:
            raise ResolveError("budget")

    def spend_referral(self) -> None:
        self.referrals -= 1
        if self.referrals < 0:
            raise ResolveError("budget")


def follow(records: list[RR] | tuple[RR, ...], name: bytes, qtype: int) -> tuple[list[RR], bytes | None]:
    """(chain records, next name) from `name`: next name is None when the chain reached qtype data
    or did not start at all; otherwise it is the target whose data is not in `records`."""
    out: list[RR] = []
    seen = {key(name)}
    for _ in range(MAX_CHAIN):
        k = key(name)
        data = [rr for rr in records if rr.rtype == qtype and key(rr.owner) == k]
        if data:
            out.extend(data)
            return out, None
        # RFC 6672 3.4: a DNAME wins over the CNAME a server synthesized from it (which is then
        # re-synthesized here, so that a forged CNAME cannot ride along with a real DNAME)
        dname = next((rr for rr in records if rr.rtype == DNAME and key(rr.owner) != k
                      and is_subdomain(name, rr.owner)), None)
        cname = next((rr for rr in records if rr.rtype == CNAME and key(rr.owner) == k), None)
        if dname is not None and qtype != DNAME:
            target = name[: len(name) - len(dname.owner)] + first_name(dname.rdata)
            if len(target) > 255:
                raise ResolveError("dname")  # RFC 6672 2.2: YXDOMAIN; SERVFAIL is close enough
            out.append(dname)
            out.append(RR(name, CNAME, dname.rclass, dname.ttl, target))
            name = target
        elif cname is not None:
            out.append(cname)
            name = first_name(cname.rdata)
        else:
            return out, (name if out else None)
        if key(name) in seen:
            raise ResolveError("loop")
        seen.add(key(name))
    raise ResolveError("chain")
