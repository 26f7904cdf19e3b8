"""Iterative resolution from the root hints (RFC 1034 section 5.3.3, the "resolver algorithm").

For each name the iterator starts at the closest known delegation, asks its servers (servers within
`RTT_BAND` of the fastest in random order, then the slower ones, then those known lame for the zone
or down; a retry round only for servers that timed out), and classifies the response: answer,
CNAME/DNAME hop, NXDOMAIN, NODATA, or referral to a zone strictly below the current one and above
the name. Anything else (lame, REFUSED, SERVFAIL, a referral sideways or upwards) marks the server
lame for that zone only (RFC 4697 2.1: a server lame for an attacker's zone stays good for its
own) and moves on to the next server. Chains continue across zones up to `chain.MAX_CHAIN` links
in all.

Trust rules (RFC 2181 section 5.4.1, RFC 5452 section 6, RFC 6604 section 2.1):
* only records at or below the zone of the server asked (its bailiwick) are used or cached: an
  answer or authority record outside it, and any additional record outside it, is ignored;
* glue is taken only for the referral's own NS names and only inside the bailiwick of the server
  that gave the referral; other addresses are looked up from their own zones;
* answer data is accepted only from authoritative (AA) responses;
* the rcode of a response belongs to the last name of its chain and is believed only from that
  name's own zone: an NXDOMAIN that carries a CNAME is a CNAME step, and the target is resolved
  (and found NXDOMAIN or not) by its own servers;
* server addresses pass `upstream.AddressPolicy` (never dnsd itself, no unspecified addresses,
  loopback only for a loopback hierarchy).

DNSSEC (`dnssec=True`, from `--dnssec-validation on`): queries carry DO=1, answers keep the RRSIGs
over their RRsets and the NSEC/NSEC3 proofs of the authority section (all inside the bailiwick), and DS
queries start at the delegation above the name, since DS lives on the parent side of a zone cut. The
iterator itself judges nothing: `validator.Validator` does, on the whole answer, in the recursor.

Bounded work and memory, per client query (`chain.Budget`: upstream queries, queries per server
address, referrals, nesting and number of name server address lookups, glueless NS names per
delegation, the NXNSAttack bound) and for the process: at most `max_per_zone` fetches in progress
towards one zone (beyond it SERVFAIL at once, `dnsd_limit_hits_total{limit="recursion_per_zone"}`),
identical questions in flight shared by every client query that needs them (RFC 5452 section 5:
a burst of names that all CNAME to one target sends one query for it, not one each), failures
cached for `cache.FAILURE_TTL` (RFC 9520), and a delegation store bounded in entries and bytes,
least recently used first, holding at most `MAX_NS_PER_DELEGATION` NS names per zone cut.
IPv4 server addresses go through `upstream.Nat64` so that an IPv6-only host reaches them via NAT64.

Root priming (RFC 8109): `prime` asks the hints' servers for the root's NS set and uses the NS names
and glue of the answer from then on (the hints only find the root, section 3); it runs at start
(from `Recursor.start`) and again whenever that NS set's TTL runs out, in the background, the old set
serving meanwhile. A priming that fails leaves the servers as they were.

QNAME minimisation (RFC 9156, relaxed as Unbound's default): a delegation's servers are asked for the
name one label below their zone (type A, section 2.1) until a referral or the full name is reached;
a NODATA or an answer there says "no cut here", and the next label is added. Anything else (an
NXDOMAIN, which broken servers send for empty non-terminals, a CNAME, an error, no answer) makes the
step ask the full name instead: that is the relaxed fallback. At most `MAX_MINIMISE_COUNT` minimised
queries per step, the first `MINIMISE_ONE_LAB` one label at a time and the rest in even strides
(section 2.3), so that a name of 100 labels costs at most 10 extra queries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dnsd import metrics
from dnsd.recursor import upstream, validator
from dnsd.recursor.cache import MAX_TTL, NAME_WIDE, Answer, Cache
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

logger = logging.getLogger(__name__)

_DS, _RRSIG = 43, 46
#: NS names kept per delegation point (Unbound keeps 16 targets per delegation point): a referral
#: with 3,000 NS names costs what one with 16 costs.
MAX_NS_PER_DELEGATION = 16
#: Addresses kept per name server name, from glue or from a lookup.
MAX_ADDRESSES_PER_NS = 8
#: Servers whose smoothed RTT is within this of the fastest one are asked in random order, so a
#: measured server is explored again now and then (Unbound's 400 ms band).
RTT_BAND = 0.4
#: How long a server stays lame for one zone after a lame, REFUSED or SERVFAIL answer for it.
LAME_SECONDS = 120.0
#: (address, zone) lameness entries remembered.
MAX_LAME = 10_000
#: Bookkeeping bytes of a delegation, of each NS name and each address in it (tracemalloc, rounded up).
DELEGATION_OVERHEAD = 500
NS_OVERHEAD = 200
ADDRESS_OVERHEAD = 120
#: Failures that say something about this query (its budget, our own limits), not about the name:
#: those are not cached.
_OWN_FAILURES = frozenset({"budget", "zone_limit", "cancelled", "deadlock"})

#: RFC 9156 section 2.3: minimised queries per step in all, and how many of them add one label each.
MAX_MINIMISE_COUNT = 10
MINIMISE_ONE_LAB = 4

_TIMEOUT, _DEFINITE, _SKIPPED = "timeout", "definite", "skipped"
#: RFC 8914 EDE 22, No Reachable Authority: every server of the zone failed.
_EDE_NO_REACHABLE = 22


@dataclass(slots=True)
class Delegation:
    """A zone cut: the zone, its NS names (case-folded wire) with known addresses, and expiry."""

    zone: bytes
    servers: dict[bytes, list[str]]
    expires: float

    def size(self) -> int:
        """Bytes it keeps alive, for the delegation store's byte bound."""
        return (DELEGATION_OVERHEAD + len(self.zone)
                + sum(NS_OVERHEAD + len(ns) + ADDRESS_OVERHEAD * len(addrs)
                      for ns, addrs in self.servers.items()))


@dataclass(slots=True)
class _Fetch:
    """A step in flight, shared by every query that needs the same (name, type)."""

    future: asyncio.Future[Answer]
    owner: Budget


class Iterator:
    """Resolves (name, type) by iteration; one instance per Recursor, sharing its cache."""

    def __init__(self, cache: Cache, infra: upstream.Infra, nat64: upstream.Nat64,
                 hints: dict[bytes, list[str]], *, port: int = 53, timeout: float = 1.5,
                 retries: int = 1, edns_size: int = upstream.EDNS_SIZE,
                 max_delegations: int = 10_000, max_delegation_bytes: int = 16 * 1024 * 1024,
                 max_per_zone: int = 100, policy: upstream.AddressPolicy | None = None,
                 dnssec: bool = False, minimise: bool = True) -> None:
        self.cache = cache
        #: RFC 9156 QNAME minimisation (relaxed), see the module docstring
        self.minimise = minimise
        #: DNSSEC: ask with DO=1 and keep RRSIG/NSEC/NSEC3 records for the validator
        self.dnssec = dnssec
        self.infra = infra
        self.nat64 = nat64
        self.hints = Delegation(b"\x00", hints, float("inf"))
        self.root = self.hints
        self._priming: asyncio.Task[bool] | None = None
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.edns_size = edns_size
        self.max_delegations = max_delegations
        self.max_delegation_bytes = max_delegation_bytes
        self.max_per_zone = max_per_zone
        self.policy = policy or upstream.AddressPolicy(
            [a for addrs in hints.values() for a in addrs], [], port)
        self.delegation_bytes = 0
        self._delegations: OrderedDict[bytes, tuple[Delegation, int]] = OrderedDict()
        self._fetches: dict[tuple[bytes, int], _Fetch] = {}
        self._busy: dict[bytes, int] = {}
        self._lame: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._no_minimise: OrderedDict[bytes, float] = OrderedDict()

    @property
    def in_flight(self) -> int:
        """Shared steps in progress (for tests)."""
        return len(self._fetches)

    async def prime(self) -> bool:
        """RFC 8109: ask the hints' servers (then the current root servers) for ". NS" and adopt the
        answer's NS names with their glue; False (nothing changed) when no server gave one."""
        addresses = self._usable([a for addrs in self.hints.servers.values() for a in addrs])
        for address in self._order(addresses, b"\x00"):
            target = self.nat64.map(address)
            if target is None:
                continue
            try:
                msg = await upstream.query(target, self.port, b"\x00", NS, rd=False, infra=self.infra,
                                           mode="iterate", wait=self.timeout, edns_size=self.edns_size)
            except upstream.UpstreamError:
                continue
            ns = [rr for rr in msg.answer if rr.rtype == NS and rr.rclass == CLASS_IN and rr.owner == b"\x00"]
            if msg.rcode != NOERROR or not msg.aa or not ns:
                continue
            servers: dict[bytes, list[str]] = {}
            for rr in ns[:MAX_NS_PER_DELEGATION]:
                servers.setdefault(key(first_name(rr.rdata)), [])
            for rr in msg.additional:
                if rr.rtype in (A, AAAA) and key(rr.owner) in servers:
                    found = servers[key(rr.owner)]
                    address_text = _address(rr)
                    if len(found) < MAX_ADDRESSES_PER_NS and address_text not in found \
                            and self.policy.allowed(address_text):
                        found.append(address_text)
            for name, found in servers.items():  # no glue: the hints may know the address
                if not found:
                    found.extend(self.hints.servers.get(name, []))
            servers = {name: found for name, found in servers.items() if found}
            if not servers:
                continue
            ttl = min(MAX_TTL, *(rr.ttl for rr in ns))
            self.root = Delegation(b"\x00", servers, time.monotonic() + max(ttl, 1))
            logger.info("primed the root: %d name servers, for %d s", len(servers), ttl)
            return True
        logger.warning("root priming failed: no hint server answered; using the hints")
        return False

    def reprime(self) -> asyncio.Task[bool]:
        """Prime in the background (at start, and when the root's NS set expired: RFC 8109 section
        4), at most one priming at a time; the task, for a caller that wants to wait."""
        if self._priming is None or self._priming.done():
            self._priming = asyncio.get_running_loop().create_task(self.prime())
        return self._priming

    async def close(self) -> None:
        if self._priming is not None:
            self._priming.cancel()

    async def lookup(self, qname: bytes, qtype: int, budget: Budget, refresh: bool = False) -> Answer:
        """The answer for (qname, qtype) with the CNAME/DNAME chain, following it across zones;
        `refresh` (a prefetch) asks the first name's servers even while its answer is cached."""
        chain: list[RR] = []
        extra: list[RR] = []  # DNSSEC proofs of earlier steps (a wildcard-expanded CNAME's)
        name = qname
        seen = {key(name)}
        while True:
            step = await self._shared_step(name, qtype, budget, refresh and name is qname)
            chain.extend(step.answer)
            if sum(1 for rr in chain if rr.rtype == CNAME) > MAX_CHAIN:
                raise ResolveError("chain")  # links counted over the whole chain, not per response
            _, following = follow(step.answer, name, qtype)
            if following is None or step.rcode != NOERROR:
                return Answer(step.rcode, tuple(chain), (*step.authority, *extra))
            extra.extend(step.authority)
            if key(following) in seen:
                raise ResolveError("loop")
            seen.add(key(following))
            name = following

    async def _shared_step(self, name: bytes, qtype: int, budget: Budget, refresh: bool = False) -> Answer:
        """`_step`, with one fetch per (name, type) in flight however many queries need it."""
        cached = None if refresh else self.cache.get(name, qtype, count=False)  # hits: per client lookup
        if cached is not None:
            if cached.failed:
                raise ResolveError("failed")  # RFC 9520: not asked again for a while
            return cached
        k = (key(name), qtype)
        fetch = self._fetches.get(k)
        if fetch is not None:
            if self._would_deadlock(fetch, budget):
                raise ResolveError("deadlock")
            budget.waiting = k
            try:
                return await asyncio.shield(fetch.future)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                raise ResolveError("cancelled") from None  # the query that owned it gave up
            finally:
                budget.waiting = None
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._fetches[k] = _Fetch(future, budget)
        try:
            result = await self._step(name, qtype, budget)
            future.set_result(result)
            return result
        except ResolveError as exc:
            if exc.reason not in _OWN_FAILURES:
                self.cache.put_failure(name, qtype, ede=_EDE_NO_REACHABLE if exc.reason == "unreachable"
                                       else None)
            future.set_exception(exc)
            future.exception()  # waiters (if any) re-raise it themselves
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._fetches.get(k) is not None and self._fetches[k].future is future:
                del self._fetches[k]

    def _would_deadlock(self, fetch: _Fetch, budget: Budget) -> bool:
        """Whether waiting on `fetch` closes a cycle: its owner waits (through other fetches) on
        something this query itself is resolving, e.g. two zones whose glueless servers lie in each
        other. Each query waits on at most one fetch at a time, so the chain is a path."""
        owner = fetch.owner
        for _ in range(64):
            if owner is budget:
                return True
            if owner.waiting is None:
                return False
            following = self._fetches.get(owner.waiting)
            if following is None:
                return False
            owner = following.owner
        return True

    async def _step(self, name: bytes, qtype: int, budget: Budget) -> Answer:
        """One name: an alias from the cache, else by walking down from the closest delegation."""
        if qtype != CNAME:
            alias = self.cache.get(name, CNAME, count=False)
            if alias is not None and alias.answers(CNAME):
                return alias
        # DS lives on the parent side of a zone cut (RFC 4035 3.1.4.1): ask above the name
        delegation = self._closest(parent(name) if qtype == _DS else name)
        minimise = self.minimise
        sent = 0
        known = delegation.zone  # the longest ancestor of `name` known not to be a zone cut
        while True:
            probe = None
            if minimise and sent < MAX_MINIMISE_COUNT and not self._unminimised(delegation.zone):
                probe = _minimised(known, name, sent)
            if probe is not None:
                known_here = self.cache.get(probe, A, count=False)
                if known_here is not None:  # asked before: never ask a probe twice while it is cached
                    if not known_here.failed and known_here.rcode == NOERROR \
                            and not any(rr.rtype in (CNAME, DNAME) for rr in known_here.answer):
                        known = probe  # no cut there
                    else:
                        minimise = False  # an NXDOMAIN, an alias or a failure there: the full name
                    continue
                sent += 1
                try:
                    found = await self._ask(delegation, probe, A, budget, probe=True)
                except ResolveError as exc:
                    if exc.reason in _OWN_FAILURES:
                        raise
                    found = None  # relaxed: the full name may still work (RFC 9156 section 3)
                if found is None:
                    self._no_minimise[key(delegation.zone)] = time.monotonic() + LAME_SECONDS
                    while len(self._no_minimise) > MAX_LAME:
                        self._no_minimise.popitem(last=False)
                if isinstance(found, Delegation):
                    budget.spend_referral()
                    delegation = found
                    known = found.zone
                    continue
                if found is not None and found.rcode == NOERROR and not any(
                        rr.rtype in (CNAME, DNAME) for rr in found.answer):
                    known = probe  # data or NODATA: the name exists and is no cut
                    continue
                minimise = False  # NXDOMAIN, an alias or a failure: ask the full name from here
                continue
            outcome = await self._ask(delegation, name, qtype, budget)
            if isinstance(outcome, Answer):
                return outcome
            budget.spend_referral()
            delegation = outcome
            known = delegation.zone

    def _unminimised(self, zone: bytes) -> bool:
        """Whether `zone`'s servers failed a minimised query lately (relaxed mode: ask them the full
        name for a while, instead of paying a failed probe on every step)."""
        until = self._no_minimise.get(key(zone))
        return until is not None and until > time.monotonic()

    def _closest(self, name: bytes) -> Delegation:
        now = time.monotonic()
        probe = key(name)
        while probe != b"\x00":
            found = self._delegations.get(probe)
            if found is not None:
                if found[0].expires > now:
                    self._delegations.move_to_end(probe)  # LRU: the TLDs stay
                    return found[0]
                self._forget(probe)
            probe = probe[1 + probe[0]:]
        if self.root.expires <= now:
            self.reprime()  # the expired set keeps serving until the new one is in
        return self.root

    def _remember(self, delegation: Delegation) -> None:
        k = key(delegation.zone)
        if k in self._delegations:
            self._forget(k)
        size = delegation.size()
        self._delegations[k] = (delegation, size)
        self.delegation_bytes += size
        while len(self._delegations) > self.max_delegations or \
                self.delegation_bytes > self.max_delegation_bytes:
            self._forget(next(iter(self._delegations)))

    def _forget(self, k: bytes) -> None:
        _, size = self._delegations.pop(k)
        self.delegation_bytes -= size

    def _usable(self, addresses: Iterable[str], known: Iterable[str] = ()) -> list[str]:
        """`addresses` without duplicates, without `known` ones, and only those policy allows."""
        seen = set(known)
        out = []
        for address in addresses:
            if address not in seen and self.policy.allowed(address):
                seen.add(address)
                out.append(address)
        return out

    def _bad(self, address: str, zone: bytes, now: float) -> bool:
        """Known lame for `zone`, or down (timeouts) for everyone."""
        until = self._lame.get((address, zone))
        return (until is not None and until > now) or not self.infra.up(address, self.port)

    def _order(self, addresses: list[str], zone: bytes) -> list[str]:
        """Good servers first: those within RTT_BAND of the fastest at random, then by RTT; then
        lame or down ones by RTT."""
        now = time.monotonic()
        rtt = {a: self.infra.rtt(a, self.port) for a in addresses}
        good = sorted((a for a in addresses if not self._bad(a, zone, now)), key=rtt.__getitem__)
        bad = sorted((a for a in addresses if self._bad(a, zone, now)), key=rtt.__getitem__)
        if len(good) > 1:
            band = [a for a in good if rtt[a] <= rtt[good[0]] + RTT_BAND]
            random.shuffle(band)
            good[: len(band)] = band
        return good + bad

    def _mark_lame(self, address: str, zone: bytes) -> None:
        k = (address, zone)
        self._lame.pop(k, None)
        self._lame[k] = time.monotonic() + LAME_SECONDS
        while len(self._lame) > MAX_LAME:
            self._lame.popitem(last=False)

    async def _ask(self, delegation: Delegation, name: bytes, qtype: int,
                   budget: Budget, probe: bool = False) -> Answer | Delegation:
        """Ask the delegation's servers, at most `max_per_zone` such asks at once per zone."""
        zone = key(delegation.zone)
        busy = self._busy.get(zone, 0)
        if busy >= self.max_per_zone:
            metrics.LIMIT_HITS.labels("recursion_per_zone").inc()
            raise ResolveError("zone_limit")
        self._busy[zone] = busy + 1
        try:
            return await self._ask_servers(delegation, zone, name, qtype, budget, probe)
        finally:
            left = self._busy[zone] - 1
            if left:
                self._busy[zone] = left
            else:
                del self._busy[zone]

    async def _ask_servers(self, delegation: Delegation, zone: bytes, name: bytes, qtype: int,
                           budget: Budget, probe: bool = False) -> Answer | Delegation:
        """Ask the delegation's servers until one gives a usable response.

        Each address once per round; only those that timed out get another round (a REFUSED, a
        lame answer or an ICMP error is definite). Known-bad servers wait for the retry round
        unless nothing else is left. Glueless NS names are resolved only when the known addresses
        are used up, and only `budget.ns_lookups` of them (NXNSAttack)."""
        queue = self._order(self._usable(a for addrs in delegation.servers.values() for a in addrs),
                            zone)
        tried: set[str] = set(queue)
        glueless = [ns for ns, addrs in delegation.servers.items()
                    if not addrs and not is_subdomain(ns, delegation.zone)][: budget.ns_lookups]
        retry: list[str] = []
        deferred: list[str] = []
        now = time.monotonic()
        while True:
            if not queue:
                if glueless:
                    found = await self._addresses_of(glueless.pop(0), budget)
                    fresh = self._usable(found, tried)
                    tried.update(fresh)
                    queue = self._order(fresh, zone)
                    continue
                if deferred:
                    queue, deferred = deferred, []
                    now = float("inf")  # nothing else is left: ask the bad ones now
                    continue
                break
            address = queue.pop(0)
            if now != float("inf") and (queue or glueless) and self._bad(address, zone, now):
                deferred.append(address)
                continue
            outcome = await self._try(address, delegation, zone, name, qtype, budget, probe)
            if not isinstance(outcome, str):
                return outcome
            if probe and outcome != _SKIPPED:
                break  # relaxed mode: one server's failure on a minimised query ends the probe
            if outcome == _TIMEOUT:
                retry.append(address)
        if probe:
            raise ResolveError("unminimised")
        for _attempt in range(self.retries):
            queue, retry = retry, []
            for address in queue:
                outcome = await self._try(address, delegation, zone, name, qtype, budget)
                if outcome == _TIMEOUT:
                    retry.append(address)
                elif not isinstance(outcome, str):
                    return outcome
        raise ResolveError("unreachable")

    async def _try(self, address: str, delegation: Delegation, zone: bytes, name: bytes, qtype: int,
                   budget: Budget, probe: bool = False) -> Answer | Delegation | str:
        """One query to one server: its outcome, or _TIMEOUT / _DEFINITE (failed) / _SKIPPED."""
        target = self.nat64.map(address)
        if target is None:
            return _SKIPPED  # IPv4 without a route and no NAT64 mapping possible
        if not budget.may_send(address):
            return _SKIPPED
        budget.spend_query()
        try:
            msg = await upstream.query(target, self.port, name, qtype, rd=False,
                                       infra=self.infra, mode="iterate",
                                       wait=self.timeout, edns_size=self.edns_size,
                                       do=self.dnssec)
        except upstream.UpstreamError as exc:
            return _TIMEOUT if exc.reason == "timeout" else _DEFINITE
        outcome = self._classify(msg, delegation, name, qtype)
        if outcome is None:
            if not probe:  # a server may refuse minimised queries and still serve its zone
                self._mark_lame(address, zone)  # lame for this zone only (RFC 4697 2.1)
            return _DEFINITE
        return outcome

    async def _addresses_of(self, ns: bytes, budget: Budget) -> list[str]:
        """Addresses of a glueless name server, looked up in its own zone (bounded nesting)."""
        if budget.depth <= 0 or budget.targets <= 0:
            return []
        budget.depth -= 1
        budget.targets -= 1
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
        return found[:MAX_ADDRESSES_PER_NS]

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
            if chain:
                if following is None:
                    return None  # data for the last name and NXDOMAIN: inconsistent, lame
                # RFC 6604 2.1: the rcode is about the chain's last name, which only its own
                # zone may say: a CNAME step, whose target is resolved from where it lives
                self._cache_chain(chain, qtype)
                return Answer(NOERROR, tuple(chain), ())
            result = Answer(NXDOMAIN, (), soa)
            self.cache.put(name, qtype, result)
            self.cache.put(name, NAME_WIDE, result)
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
            servers: dict[bytes, list[str]] = {}
            for rr in ns:
                if key(rr.owner) == key(child) and len(servers) < MAX_NS_PER_DELEGATION:
                    servers.setdefault(key(first_name(rr.rdata)), [])
            for rr in msg.additional:
                # glue only for the referral's own NS names and only inside the bailiwick of the
                # server that sent it (RFC 5452 6, RFC 2181 5.4.1)
                if rr.rtype in (A, AAAA) and key(rr.owner) in servers and inside(rr):
                    addresses = servers[key(rr.owner)]
                    address = _address(rr)
                    if len(addresses) < MAX_ADDRESSES_PER_NS and address not in addresses \
                            and self.policy.allowed(address):
                        addresses.append(address)
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


def _minimised(known: bytes, name: bytes, sent: int) -> bytes | None:
    """The next minimised QNAME below `known` towards `name` (both wire, `name` at or below
    `known`), or None when that would be `name` itself. The first MINIMISE_ONE_LAB queries add
    one label; later ones spread the labels left over the queries left (RFC 9156 section 2.3)."""
    labels = _labels(name)
    have = len(_labels(known))
    missing = len(labels) - have
    if missing <= 1:
        return None
    step = 1
    if sent >= MINIMISE_ONE_LAB:
        left = max(1, MAX_MINIMISE_COUNT - sent)
        step = max(1, -(-missing // (left + 1)))
    if have + step >= len(labels):
        return None
    return b"".join(labels[len(labels) - have - step:]) + b"\x00"


def _labels(name: bytes) -> list[bytes]:
    """The length-prefixed labels of an uncompressed wire name, root excluded."""
    out = []
    i = 0
    while i < len(name) and name[i]:
        out.append(name[i:i + 1 + name[i]])
        i += 1 + name[i]
    return out


def _address(rr: RR) -> str:
    return str(ipaddress.ip_address(rr.rdata))
