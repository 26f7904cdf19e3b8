"""Iterative resolution from the root hints (RFC 1034 section 5.3.3, the "resolver algorithm").

For each name the iterator starts at the closest known delegation, asks its servers (lowest smoothed
RTT first, every server once per round, `retries` extra rounds), and classifies the response:
answer, CNAME/DNAME hop, NXDOMAIN, NODATA, or referral to a zone strictly below the current one and
above the name. Anything else (lame, REFUSED, SERVFAIL, a referral sideways or upwards) moves on to
the next server. Chains continue across zones up to `chain.MAX_CHAIN` hops.

Trust rules (RFC 2181 section 5.4.1, RFC 5452 section 6):
* only records at or below the zone of the server asked (its bailiwick) are used or cached: an
  answer or authority record outside it, and any additional record outside it, is ignored;
* glue is taken only for the referral's own NS names and only inside the bailiwick of the server
  that gave the referral; other addresses are looked up from their own zones;
* answer data is accepted only from authoritative (AA) responses.

DNSSEC (`dnssec=True`, from `--dnssec-validation on`): queries carry DO=1, answers keep the RRSIGs
over their RRsets and the NSEC/NSEC3 proofs of the authority section (all inside the bailiwick), and DS
queries start at the delegation above the name, since DS lives on the parent side of a zone cut. The
iterator itself judges nothing: `validator.Validator` does, on the whole answer, in the recursor.

Work is bounded by `chain.Budget`: upstream queries, referrals, nesting of name server address
lookups, and at most `ns_lookups` glueless NS names resolved per delegation (NXNSAttack). IPv4
server addresses go through `upstream.Nat64` so that an IPv6-only host reaches them via NAT64.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from dnsd.recursor import upstream, validator
from dnsd.recursor.cache import MAX_TTL, Answer, Cache
from dnsd.recursor.chain import MAX_CHAIN, Budget, ResolveError, follow
from dnsd.recursor.message import (
    AAAA,
    CLASS_IN,
    CNAME,
    DNAME,
    NOERROR,
    NS,
    NXDOMAIN,
    RR,
    SOA,
    A,
    Message,
    first_name,
    is_subdomain,
    key,
    parent,
)

_DS, _RRSIG = 43, 46


@dataclass(slots=True)
class Delegation:
    """A zone cut: the zone, its NS names (case-folded wire) with known addresses, and expiry."""

    zone: bytes
    servers: dict[bytes, list[str]]
    expires: float


class Iterator:
    """Resolves (name, type) by iteration; one instance per Recursor, sharing its cache."""

    def __init__(self, cache: Cache, infra: upstream.Infra, nat64: upstream.Nat64,
                 hints: dict[bytes, list[str]], *, port: int = 53, timeout: float = 1.5,
                 retries: int = 1, edns_size: int = upstream.EDNS_SIZE,
                 max_delegations: int = 10_000, dnssec: bool = False) -> None:
        self.cache = cache
        #: DNSSEC: ask with DO=1 and keep RRSIG/NSEC/NSEC3 records for the validator
        self.dnssec = dnssec
        self.infra = infra
        self.nat64 = nat64
        self.root = Delegation(b"\x00", hints, float("inf"))
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.edns_size = edns_size
        self.max_delegations = max_delegations
        self._delegations: OrderedDict[bytes, Delegation] = OrderedDict()

    async def lookup(self, qname: bytes, qtype: int, budget: Budget) -> Answer:
        """The answer for (qname, qtype) with the CNAME/DNAME chain, following it across zones."""
        chain: list[RR] = []
        extra: list[RR] = []  # DNSSEC proofs of earlier steps (a wildcard-expanded CNAME's)
        name = qname
        seen = {key(name)}
        for _ in range(MAX_CHAIN):
            step = await self._step(name, qtype, budget)
            chain.extend(step.answer)
            _, following = follow(step.answer, name, qtype)
            if following is None or step.rcode != NOERROR:
                return Answer(step.rcode, tuple(chain), (*step.authority, *extra))
            extra.extend(step.authority)
            if key(following) in seen:
                raise ResolveError("loop")
            seen.add(key(following))
            name = following
        raise ResolveError("chain")

    async def _step(self, name: bytes, qtype: int, budget: Budget) -> Answer:
        """One name: from the cache, else by walking down from the closest delegation."""
        cached = self.cache.get(name, qtype, count=False)  # hits are counted per client lookup
        if cached is not None:
            return cached
        if qtype != CNAME:
            alias = self.cache.get(name, CNAME, count=False)
            if alias is not None and not alias.negative:
                return alias
        # DS lives on the parent side of a zone cut (RFC 4035 3.1.4.1): ask above the name
        delegation = self._closest(parent(name) if qtype == _DS else name)
        while True:
            outcome = await self._ask(delegation, name, qtype, budget)
            if isinstance(outcome, Answer):
                return outcome
            budget.spend_referral()
            delegation = outcome

    def _closest(self, name: bytes) -> Delegation:
        now = time.monotonic()
        probe = key(name)
        while probe != b"\x00":
            found = self._delegations.get(probe)
            if found is not None:
                if found.expires > now:
                    return found
                del self._delegations[probe]
            probe = probe[1 + probe[0]:]
        return self.root

    def _remember(self, delegation: Delegation) -> None:
        k = key(delegation.zone)
        self._delegations.pop(k, None)
        self._delegations[k] = delegation
        while len(self._delegations) > self.max_delegations:
            self._delegations.popitem(last=False)

    def _by_rtt(self, addresses: list[str]) -> list[str]:
        return sorted(addresses, key=lambda a: self.infra.rtt(a, self.port))

    async def _ask(self, delegation: Delegation, name: bytes, qtype: int,
                   budget: Budget) -> Answer | Delegation:
        """Ask the delegation's servers until one gives a usable response."""
        addresses = self._by_rtt([a for addrs in delegation.servers.values() for a in addrs])
        glueless = [ns for ns, addrs in delegation.servers.items()
                    if not addrs and not is_subdomain(ns, delegation.zone)]
        # RFC 1034 5.3.3 allows chasing glueless names; NXNSAttack says: only a few of them
        glueless = glueless[: budget.ns_lookups]
        for attempt in range(self.retries + 1):
            index = 0
            while True:
                if index >= len(addresses):
                    if attempt == 0 and glueless:
                        found = await self._addresses_of(glueless.pop(0), budget)
                        addresses.extend(a for a in self._by_rtt(found) if a not in addresses)
                        continue
                    break
                address = addresses[index]
                index += 1
                target = self.nat64.map(address)
                if target is None:
                    continue  # IPv4 without a route and no NAT64 mapping possible
                if attempt == 0 and index < len(addresses) and not self.infra.up(target, self.port):
                    continue  # known-bad servers wait for the retry round

                budget.spend_query()
                try:
                    msg = await upstream.query(target, self.port, name, qtype, rd=False,
                                               infra=self.infra, mode="iterate",
                                               wait=self.timeout, edns_size=self.edns_size,
                                               do=self.dnssec)
                except upstream.UpstreamError:
                    continue
                outcome = self._classify(msg, delegation, name, qtype)
                if outcome is not None:
                    return outcome
                self.infra.failure(target, self.port, timeout=False)  # lame for this zone
        raise ResolveError("unreachable")

    async def _addresses_of(self, ns: bytes, budget: Budget) -> list[str]:
        """Addresses of a glueless name server, looked up in its own zone (bounded nesting)."""
        if budget.depth <= 0:
            return []
        budget.depth -= 1
        found: list[str] = []
        try:
            for rtype in (A, AAAA):
                try:
                    answer = await self.lookup(ns, rtype, budget)
                except ResolveError as exc:
                    if exc.reason == "budget":
                        raise
                    continue
                found += [_address(rr) for rr in answer.answer
                          if rr.rtype == rtype]
                if found:
                    break
        finally:
            budget.depth += 1
        return found

    def _classify(self, msg: Message, delegation: Delegation, name: bytes,
                  qtype: int) -> Answer | Delegation | None:
        """What a response means, using only records inside the bailiwick of `delegation`."""
        zone = delegation.zone

        def inside(rr: RR) -> bool:
            return rr.rclass == CLASS_IN and is_subdomain(rr.owner, zone)

        answer = [rr for rr in msg.answer if inside(rr)]
        soa = tuple(rr for rr in msg.authority if rr.rtype == SOA and inside(rr)
                    and is_subdomain(name, rr.owner))[:1]
        proofs = validator.proofs(msg.authority, inside) if self.dnssec else ()
        if msg.rcode == NXDOMAIN:
            chain, following = follow(answer, name, qtype) if msg.aa else ([], None)
            if self.dnssec:
                chain = validator.with_signatures(chain, answer)
            soa = (*soa, *proofs)
            result = Answer(NXDOMAIN, tuple(chain), soa)
            if chain:
                self._cache_chain(chain, qtype)
                if following is not None:
                    self.cache.put(following, 0, Answer(NXDOMAIN, (), soa))
            else:
                self.cache.put(name, qtype, result)
                self.cache.put(name, 0, result)
            return result
        if msg.rcode != NOERROR:
            return None
        if msg.aa:
            chain, _ = follow(answer, name, qtype)
            if chain:
                if self.dnssec:
                    chain = validator.with_signatures(chain, answer)
                self._cache_chain(chain, qtype, proofs)
                return Answer(NOERROR, tuple(chain), proofs)
        ns = [rr for rr in msg.authority if rr.rtype == NS and rr.rclass == CLASS_IN]
        if ns and not soa and not answer:
            child = ns[0].owner
            if key(child) == key(zone) or not is_subdomain(child, zone) or \
                    not is_subdomain(name, child):
                return None  # a referral sideways or upwards: lame (RFC 1034 5.3.3 step 4)
            servers: dict[bytes, list[str]] = {
                key(first_name(rr.rdata)): [] for rr in ns if key(rr.owner) == key(child)}
            for rr in msg.additional:
                # glue only for the referral's own NS names and only inside the bailiwick of the
                # server that sent it (RFC 5452 6, RFC 2181 5.4.1)
                if rr.rtype in (A, AAAA) and key(rr.owner) in servers and inside(rr):
                    servers[key(rr.owner)].append(_address(rr))
            ttl = min(MAX_TTL, *(rr.ttl for rr in ns))
            referral = Delegation(child, servers, time.monotonic() + max(ttl, 1))
            self._remember(referral)
            return referral
        if msg.aa or soa:
            result = Answer(NOERROR, (), (*soa, *proofs))  # NODATA (RFC 2308 2.2)
            self.cache.put(name, qtype, result)
            return result
        return None

    def _cache_chain(self, chain: list[RR], qtype: int, proofs: tuple[RR, ...] = ()) -> None:
        """Cache each RRset of an authoritative chain under its own (owner, type)."""
        groups: dict[tuple[bytes, int], list[RR]] = {}
        pending_dname: list[RR] = []
        for rr in chain:
            if rr.rtype == _RRSIG:
                covered = (key(rr.owner), int.from_bytes(rr.rdata[:2], "big"))
                if covered in groups:
                    groups[covered].append(rr)  # a signature travels with the RRset it covers
                else:
                    pending_dname.append(rr)  # over the DNAME, which is cached with the next group
                continue
            if rr.rtype == DNAME:
                pending_dname.append(rr)  # cached with the CNAME synthesized from it
                continue
            groups.setdefault((key(rr.owner), rr.rtype), []).extend([*pending_dname, rr])
            pending_dname = []
        for (owner, rtype), records in groups.items():
            self.cache.put(owner, rtype, Answer(NOERROR, tuple(records), proofs))


def _address(rr: RR) -> str:
    return str(ipaddress.ip_address(rr.rdata))
