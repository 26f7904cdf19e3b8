"""Recursive resolution for names outside dnsd's zones, with DNS64 (RFC 6147) applied on the way out.

`Recursor` is what the handler calls for a client allowed to recurse: `answer` returns complete
response bytes (`answer_with_source` also says whether it came from the cache, DNS64 or upstream,
for the contract's `source` metric label), `resolve` returns records for chasing an in-zone CNAME
that points outside. Both go
through one cache (`cache.Cache`, positive and RFC 2308 negative answers, TTLs counting down) in
front of one engine: `iterator.Iterator` (from the root hints) or `forwarder.Forwarder`. Concurrent
identical lookups share one resolution, and every client query has a time limit and a work budget.

The reverse name of a synthesized address is aliased to the embedded IPv4 address's in-addr.arpa
name (RFC 6147 5.3.1); when that name lies in one of dnsd's own reverse zones (`--reverse-zone`),
the zone answers it (`zone=`), never an upstream server.

DNS64 lives here rather than in the handler because it needs a second lookup (the A query) and the
negative AAAA answer's SOA; `dnsd.dns64` holds the rules as pure functions and this module only
sequences them. The handler never calls `answer` for names in dnsd's own zones, but synthesis is
skipped for them anyway (defence in depth: a zone's own AAAA-less names must stay AAAA-less).

DNSSEC: with `--dnssec-validation on` every answer is judged once by `validator.Validator` (in
`_lookup`, between the shared resolution and the cache) and keeps its state in the cache; here the
state becomes AD (RFC 6840 5.7-5.8: secure, and the query had DO or AD), SERVFAIL with an Extended
DNS Error for bogus data unless the query has CD=1, and the RRSIG/NSEC/NSEC3 records only for DO=1
clients (RFC 4035 3.2.1). DNS64 follows RFC 6147 5.5: the negative AAAA answer is validated before
the A query, synthesis uses a validated A (AD when both were secure), anything bogus is SERVFAIL
with EDE 6, DO+CD queries get no synthesis, and synthesized answers carry EDE 29 (Synthesized).

Keeping working when upstreams fail (RFC 8767, RFC 8914): an expired answer stays in the cache for
`--serve-stale` seconds; when its refresh fails, meets a limit, or takes longer than
`STALE_WAIT` (1.8 s, the RFC's client response timer), the stale copy is served with TTL 30 and
EDE 3 while the refresh goes on in the background (source "stale", never kept by the handler's fast
path). A name whose zone's servers all fail, or whose lookup outlives the client budget, is
SERVFAIL with EDE 22 (No Reachable Authority); the per-zone fetch limit keeps that from holding up
other names.

Not here: ACLs, rate limiting, metrics per query (the handler's).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass, replace
from typing import Any

from dnsd import authority, dns64, metrics
from dnsd.config import Config
from dnsd.dnssec import DNSSEC_TYPES, RRSIG
from dnsd.recursor import hints as root_hints
from dnsd.recursor import upstream
from dnsd.recursor import validator as dnssec_validator
from dnsd.recursor.aggressive import AggressiveCache
from dnsd.recursor.cache import NAME_WIDE, Answer, Cache
from dnsd.recursor.chain import Budget, ResolveError
from dnsd.recursor.forwarder import Forwarder
from dnsd.recursor.iterator import Iterator
from dnsd.recursor.message import (
    AAAA,
    CLASS_IN,
    CNAME,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    PTR,
    RR,
    SOA,
    A,
    encode_rr,
    key,
    soa_minimum,
    text,
    to_wire,
)
from dnsd.wire import CD, QR, RA, RD, REFUSED, SERVFAIL, TC, Query, Response, opt_record
from dnsd.zone import ZoneIndex

_AD = 0x0020
_EDE_OPTION = 15  # RFC 8914

_HEADER = struct.Struct("!HHHHHH")
#: Failures caused by this query or by dnsd's own limits, not by the name's servers: not cached.
_OWN_FAILURES = frozenset({"budget", "zone_limit", "cancelled", "deadlock", "off"})
#: RFC 8767 section 5: how long a client waits on a refresh before the stale answer is served.
STALE_WAIT = 1.8
EDE_STALE = 3           # RFC 8914: Stale Answer
EDE_NO_REACHABLE = 22   # RFC 8914: No Reachable Authority


def is_meta_qtype(qtype: int) -> bool:
    """RFC 6895 3.1: type 0 and 65535 are reserved, OPT (41) and 128-254 are meta types or
    transfer/signature qtypes that a resolver never looks up (ANY, 255, is answered)."""
    return qtype in (0, 41, 65535) or 128 <= qtype <= 254


class CacheMiss(Exception):  # control flow for RD=0 queries, not an error
    """A query without RD asked for something that is not cached."""


@dataclass(slots=True)
class _Trace:
    """What one client query caused: for the handler's `source` metric label."""

    upstream: bool = False
    synthesized: bool = False
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    """Recursion knobs that are not (yet) command-line options; tests shorten the timeouts."""

    timeout: float = 1.5            # one upstream try
    retries: int = 1                # extra rounds over a zone's servers / the forwarders
    query_timeout: float = 6.0      # a whole client query (RFC 1035 7.2: give up eventually)
    port: int = 53                  # name servers' port in iterate mode
    cache_entries: int = 100_000
    cache_bytes: int = 64 * 1024 * 1024
    delegation_bytes: int = 16 * 1024 * 1024
    stale_wait: float = STALE_WAIT  # RFC 8767's client response timer


class Recursor:
    """Resolver facade for the handler; see the module docstring."""

    def __init__(self, config: Config, settings: Settings | None = None,
                 zone: ZoneIndex | None = None) -> None:
        self.config = config
        self.zone = zone
        self.settings = settings = settings or Settings()
        self.cache = Cache(settings.cache_entries, settings.cache_bytes, stale=config.serve_stale)
        self.infra = upstream.Infra()
        self.nat64 = upstream.Nat64(config.dns64_prefix)
        self.policy = dns64.Policy(config.dns64_prefix, config.dns64_exclude,
                                   config.dns64_allow_nonglobal)
        self.dns64 = not config.no_dns64
        self.validator: dnssec_validator.Validator | None = None
        if config.dnssec_validation:
            self.validator = dnssec_validator.Validator(
                dnssec_validator.load_anchors(config.trust_anchor),
                [to_wire(n) if n else b"\x00" for n in config.negative_trust_anchor], self._fetch)
        dnssec = self.validator is not None
        #: RFC 8198: validated NSEC/NSEC3 ranges, only with validation on
        self.aggressive = AggressiveCache() if dnssec else None
        self.engine: Iterator | Forwarder | None = None
        if config.recursion == "forward":
            self.engine = Forwarder(config.forwarder, self.infra, timeout=settings.timeout,
                                    retries=settings.retries, dnssec=dnssec)
        elif config.recursion == "iterate":
            hints = root_hints.load(config.root_hints)
            policy = upstream.AddressPolicy(
                [a for addrs in hints.values() for a in addrs],
                [(e.host, e.port) for e in config.listen], settings.port)
            self.engine = Iterator(self.cache, self.infra, self.nat64, hints, port=settings.port,
                                   timeout=settings.timeout, retries=settings.retries,
                                   max_delegation_bytes=settings.delegation_bytes,
                                   max_per_zone=config.recursion_max_per_zone, policy=policy,
                                   dnssec=dnssec)
        self._inflight: dict[tuple[bytes, int], asyncio.Future[Answer]] = {}
        self._judging: dict[tuple[bytes, int], asyncio.Future[Answer]] = {}
        #: background refreshes of stale answers (strong references: the loop keeps only weak ones)
        self._refreshing: set[asyncio.Task[Answer]] = set()

    async def start(self) -> None:
        """Nothing to open (every upstream query uses its own socket, random port per query); in
        iterate mode, prime the root (RFC 8109): waited for up to one upstream timeout, so that the
        first queries already use the root's own NS set, then left to finish in the background
        (queries meanwhile use the hints)."""
        if isinstance(self.engine, Iterator):
            priming = self.engine.reprime()
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await asyncio.shield(priming)
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Cancel the shared lookups and judgements; each one's own task removes its entry (clearing
        the tables here made lookups still running fail with KeyError at shutdown)."""
        for future in (*self._inflight.values(), *self._judging.values()):
            future.cancel()
        for task in list(self._refreshing):
            task.cancel()
        if isinstance(self.engine, Iterator):
            await self.engine.close()

    def health(self) -> dict[str, bool]:
        """What recursion can reach, for `/readyz?verbose` and `dnsd_upstream_healthy` (never for
        readiness itself: a pod that cannot reach the Internet still serves its zone). "root" (or
        "forwarder"): the last exchange with one of the root servers (forwarders) succeeded;
        "nat64": only once an IPv4 server was reached through the NAT64 prefix, whether the last
        exchange with one such server succeeded."""
        out: dict[str, bool] = {}
        if isinstance(self.engine, Forwarder):
            out["forwarder"] = any(self.infra.answered(host, port) for host, port in self.engine.upstreams)
        elif isinstance(self.engine, Iterator):
            port = self.engine.port
            roots = [self.nat64.map(a) for addrs in self.engine.root.servers.values() for a in addrs]
            out["root"] = any(self.infra.answered(a, port) for a in roots if a is not None)
        prefix = self.nat64.prefix
        if prefix is not None:
            via = [(a, p) for a, p in self.infra.seen() if ":" in a and ipaddress.ip_address(a) in prefix]
            if via:
                out["nat64"] = any(self.infra.answered(a, p) for a, p in via)
        return out

    def forwarder_order(self) -> list[tuple[str, int]]:
        """Forwarders in the order the next query would try them (health, then RTT)."""
        return self.engine.order() if isinstance(self.engine, Forwarder) else []

    # ---- the handler's interface ------------------------------------------------------------

    async def answer(self, query: Query, limit: int) -> bytes:
        """Complete response bytes for `query` (see the handler contract in the module docstring)."""
        return (await self.answer_with_source(query, limit))[0]

    async def answer_with_source(self, query: Query, limit: int) -> tuple[bytes, str]:
        """Like `answer`, plus where it came from for the handler's metrics: "cache" (no upstream
        query was needed), "dns64" (synthesized), "recursion", "refused" or "error"."""
        if query.qclass != CLASS_IN or self.engine is None:
            return self._encode(query, REFUSED, (), (), limit), "refused"
        if is_meta_qtype(query.qtype):
            # the handler refuses these already; here too, so that no cache slot is ever reached
            return self._encode(query, NOTIMP, (), (), limit), "error"
        trace = _Trace()
        try:
            async with asyncio.timeout(self.settings.query_timeout):
                result = await self._answer(query, trace)
        except CacheMiss:
            return self._encode(query, REFUSED, (), (), limit), "refused"
        except ResolveError as exc:
            ede = EDE_NO_REACHABLE if exc.reason == "unreachable" else None
            return self._encode(query, SERVFAIL, (), (), limit, ede=ede), "error"
        except TimeoutError:  # the client budget ran out before any server of the zone answered
            return self._encode(query, SERVFAIL, (), (), limit, ede=EDE_NO_REACHABLE), "error"
        source = ("stale" if trace.stale else "dns64" if trace.synthesized
                  else "recursion" if trace.upstream else "cache")
        if result.security == dnssec_validator.BOGUS and not query.cd:
            return self._encode(query, SERVFAIL, (), (), limit, ede=result.ede), "error"
        ad = result.security == dnssec_validator.SECURE and bool(query.edns_do or query.flags & _AD)
        return self._encode(query, result.rcode, result.answer, result.authority, limit, ad=ad,
                            ede=result.ede), source

    async def resolve(self, qname: str, qtype: int, *, do: bool = False,
                      cd: bool = False) -> tuple[int, list[tuple[str, int, int, bytes]]]:
        """(rcode, [(owner, type, ttl, uncompressed rdata)]) for a name outside dnsd's zones (the
        target of an in-zone CNAME chased for a recursing client); an AAAA query gets DNS64 exactly
        as a direct one does (`do`, `cd`: the client's flags, RFC 6147 5.5)."""
        name = to_wire(qname)
        synthesis = self.dns64 and dns64.wants_synthesis(qtype, do, cd) and not dns64.under(
            qname.rstrip(".").lower(), self.config.zone)
        try:
            async with asyncio.timeout(self.settings.query_timeout):
                if synthesis:
                    result = await self._aaaa(name, False, _Trace(), cd)
                else:
                    result = await self._lookup(name, qtype, False, _Trace())
        except (ResolveError, TimeoutError, ValueError):
            return SERVFAIL, []
        if result.security == dnssec_validator.BOGUS:
            return SERVFAIL, []
        return result.rcode, [(text(rr.owner), rr.rtype, rr.ttl, rr.rdata) for rr in result.answer]

    # ---- resolution -------------------------------------------------------------------------

    async def _answer(self, query: Query, trace: _Trace) -> Answer:
        name = key(query.qname_wire)
        qtype = query.qtype
        cache_only = not query.rd
        synthesis = self.dns64 and not dns64.under(query.qname, self.config.zone)
        if synthesis:
            local = dns64.ipv4only_answer(query.qname, qtype, self.policy)
            if local is not None:
                trace.synthesized = qtype == AAAA
                return self._ipv4only(name, qtype, local)
            if qtype == PTR:
                target = dns64.ptr_target(query.qname, self.policy)
                if target is not None:
                    trace.synthesized = True
                    return await self._ptr(name, to_wire(target), cache_only, trace)
        if not (synthesis and dns64.wants_synthesis(qtype, query.edns_do, query.cd)):
            return await self._lookup(name, qtype, cache_only, trace)
        return await self._aaaa(name, cache_only, trace, query.cd)

    async def _aaaa(self, name: bytes, cache_only: bool, trace: _Trace, cd: bool) -> Answer:
        """An AAAA lookup with DNS64 (RFC 6147 5.1), for a client query or a chased CNAME target."""
        try:
            aaaa = await self._lookup(name, AAAA, cache_only, trace)
        except ResolveError:
            # RFC 6147 5.1.3: an error other than NXDOMAIN is treated like an empty answer, so
            # that names behind servers that fail AAAA queries still get synthesized addresses
            aaaa = Answer(SERVFAIL)
        if aaaa.security == dnssec_validator.BOGUS and not cd:
            # RFC 6147 5.5: the negative answer is validated before the A query; bogus stops here
            return replace(aaaa, ede=dnssec_validator.EDE_BOGUS)
        result = await self._synthesize(name, aaaa, cache_only, trace, cd)
        if result.rcode == SERVFAIL:
            raise ResolveError("aaaa")
        return result

    async def _lookup(self, name: bytes, qtype: int, cache_only: bool, trace: _Trace) -> Answer:
        """The full answer for (name, qtype), judged by the validator once and cached with its state."""
        result = await self._resolve(name, qtype, cache_only, trace)
        if self.validator is None or result.security != dnssec_validator.UNCHECKED:
            return result
        # concurrent queries for one answer share one judgement, as they share one resolution
        k = (key(name), qtype)
        pending = self._judging.get(k)
        if pending is not None:
            return await _join(pending)
        judged_meanwhile = self.cache.get(name, qtype, count=False)  # while this task waited to resume
        if judged_meanwhile is not None and judged_meanwhile.security != dnssec_validator.UNCHECKED:
            return judged_meanwhile
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._judging[k] = future
        try:
            judged = await self.validator.validate(name, qtype, result)
            stored = self.cache.put(name, qtype, judged)
            judged = stored if stored.security == judged.security else judged
            if self.aggressive is not None and judged.security == dnssec_validator.SECURE:
                self.aggressive.learn(judged)
            future.set_result(judged)
            return judged
        except Exception as exc:
            future.set_exception(exc)
            future.exception()
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._judging.get(k) is future:
                del self._judging[k]

    async def _fetch(self, name: bytes, qtype: int) -> Answer:
        """An unvalidated lookup for the validator's own DS and DNSKEY queries."""
        return await self._resolve(name, qtype, False, _Trace(), aggressive=False)

    async def _resolve(self, name: bytes, qtype: int, cache_only: bool, trace: _Trace,
                       aggressive: bool = True) -> Answer:
        """The full answer for (name, qtype): cache first, then the validated NSEC/NSEC3 ranges
        (RFC 8198; not for the validator's own DS and DNSKEY fetches, `aggressive` False), then one
        shared resolution."""
        cached = self.cache.get(name, qtype)
        if cached is not None:
            if cached.failed:
                stale = None if cache_only else self.cache.get_stale(name, qtype)
                if stale is not None:
                    return self._stale(stale, trace)  # RFC 8767: the refresh failed recently
                # RFC 9520: a recent failure is not retried at once
                raise ResolveError("unreachable" if cached.ede == EDE_NO_REACHABLE else "failed")
            if not cache_only and self.cache.prefetch_due(name, qtype):
                self._prefetch(name, qtype)
            return cached
        if aggressive and self.aggressive is not None and self.validator is not None \
                and not self.validator.covered(name):
            synthesized = self.aggressive.answer(name, qtype)
            if synthesized is not None:
                return synthesized
        if cache_only:
            raise CacheMiss
        trace.upstream = True
        stale = self.cache.get_stale(name, qtype)
        if stale is not None:
            return await self._refresh_or_stale(name, qtype, stale, trace)
        k = (key(name), qtype)
        pending = self._inflight.get(k)
        if pending is not None:
            return await _join(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[k] = future
        return await self._fetch_into(name, qtype, k, future)

    def _stale(self, stale: Answer, trace: _Trace) -> Answer:
        """A stale answer as served: TTL 30 (set by the cache) and EDE 3 (RFC 8767 section 4)."""
        trace.stale = True
        return replace(stale, ede=EDE_STALE)

    async def _refresh_or_stale(self, name: bytes, qtype: int, stale: Answer, trace: _Trace) -> Answer:
        """RFC 8767 section 5: refresh an expired answer, but serve the stale copy when the refresh
        fails or takes longer than `stale_wait`; the refresh runs in its own task, so it goes on (and
        refills the cache) after this client has its answer. Concurrent clients share one refresh."""
        k = (key(name), qtype)
        pending = self._inflight.get(k)
        if pending is None:
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._inflight[k] = future
            task = asyncio.create_task(self._fetch_into(name, qtype, k, future))
            self._refreshing.add(task)
            task.add_done_callback(_settled(self._refreshing))
            pending = future
        try:
            async with asyncio.timeout(self.settings.stale_wait):
                return await asyncio.shield(pending)
        except (ResolveError, TimeoutError):
            return self._stale(stale, trace)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return self._stale(stale, trace)

    def _prefetch(self, name: bytes, qtype: int) -> None:
        """Refresh a popular answer before it expires (Unbound's prefetch), once at a time, in the
        background: the client that asked has the cached answer already."""
        k = (key(name), qtype)
        if k in self._inflight:
            return
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[k] = future
        task = asyncio.create_task(self._fetch_into(name, qtype, k, future, refresh=True))
        self._refreshing.add(task)
        task.add_done_callback(_settled(self._refreshing))
        metrics.PREFETCHES.inc()

    async def _fetch_into(self, name: bytes, qtype: int, k: tuple[bytes, int],
                          future: asyncio.Future[Answer], refresh: bool = False) -> Answer:
        """One resolution of (name, qtype) whose result (or failure) goes to `future`'s waiters;
        `refresh`: past a cached answer (a prefetch)."""
        try:
            if self.engine is None:
                raise ResolveError("off")
            if isinstance(self.engine, Iterator):
                found = await self.engine.lookup(name, qtype, Budget(), refresh=refresh)
            else:
                found = await self.engine.lookup(name, qtype, Budget())
            result = self.cache.put(name, qtype, found)
            if result.rcode == NXDOMAIN and not result.answer:
                self.cache.put(name, NAME_WIDE, result)
            if not future.done():  # close() may have cancelled it
                future.set_result(result)
            return result
        except ResolveError as exc:
            if exc.reason not in _OWN_FAILURES:
                self.cache.put_failure(name, qtype, ede=EDE_NO_REACHABLE if exc.reason == "unreachable"
                                       else None)
            _fail(future, exc)
            raise
        except Exception as exc:
            _fail(future, exc)
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._inflight.get(k) is future:
                del self._inflight[k]

    async def _synthesize(self, name: bytes, aaaa: Answer, cache_only: bool,
                          trace: _Trace, cd: bool = False) -> Answer:
        """RFC 6147 section 5.1: decide on synthesis for one AAAA answer and do it."""
        if aaaa.rcode == NXDOMAIN:
            return aaaa  # 5.1.2: a name error is passed through, the A query is not even sent
        addresses = [rr for rr in aaaa.answer if rr.rtype == AAAA]
        usable = [rr for rr in addresses if not dns64.is_excluded(rr.rdata, self.policy)]
        if aaaa.rcode == NOERROR and usable:
            if len(usable) == len(addresses):
                return aaaa
            # 5.1.4: excluded addresses are removed from an answer that has others
            # (the AAAA RRset's signatures go too: they no longer cover what is left)
            return replace(aaaa, answer=tuple(rr for rr in aaaa.answer if rr in usable or not _is_aaaa(rr)))
        fallback = aaaa  # what stands when nothing is synthesized
        if addresses:
            # 5.1.4: an answer of excluded addresses only is treated as empty: what stands without
            # a synthesis is NODATA (the CNAME chain kept), not the excluded addresses; no DNSSEC
            # proof denies those addresses, so that NODATA is not secure
            fallback = replace(aaaa, answer=tuple(rr for rr in aaaa.answer if not _is_aaaa(rr)), security=(
                dnssec_validator.INSECURE if aaaa.security == dnssec_validator.SECURE else aaaa.security))
        # 5.1.6/5.1.7: the SOA of the negative AAAA answer bounds the synthesized TTL
        soa = next(((rr.ttl, soa_minimum(rr.rdata)) for rr in aaaa.authority if rr.rtype == SOA),
                   None)
        a: Answer | None
        try:
            a = await self._lookup(name, A, cache_only, trace)
        except (CacheMiss, ResolveError):
            return fallback  # no A answer: the AAAA answer stands as it was
        if a.security == dnssec_validator.BOGUS and not cd:
            return replace(a, ede=dnssec_validator.EDE_BOGUS)  # 5.5: never synthesize from bogus data
        if a.rcode != NOERROR:
            return fallback
        synthesized: list[RR] = []
        for rr in a.answer:
            if rr.rtype == RRSIG:
                continue  # signatures over the A records (or the chain) do not cover synthesized data
            if rr.rtype != A:
                synthesized.append(rr)  # the CNAME/DNAME chain is kept as it was (5.1.6: other
                continue                # records of the A answer are copied unchanged)
            for rdata in dns64.synthesize([rr.rdata], self.policy):
                synthesized.append(RR(rr.owner, AAAA, CLASS_IN,
                                      dns64.synthesized_ttl(rr.ttl, soa), rdata))
        if not any(rr.rtype == AAAA for rr in synthesized):
            # no A, or every A non-global under the WKP (RFC 6052 3.1): nothing to offer. An answer
            # of excluded addresses only stands as a NODATA (5.1.4), with the A answer's SOA when
            # the AAAA answer had none, so that it is cached as a negative answer
            if addresses and not a.answers(A) and not any(rr.rtype == SOA for rr in fallback.authority):
                return replace(fallback, authority=tuple(rr for rr in a.authority if rr.rtype == SOA))
            return fallback
        metrics.DNS64_SYNTHESIZED.labels(kind="aaaa").inc()
        trace.synthesized = True
        # 5.5 case 2: AD when the A answer and the AAAA answer's denial were both secure
        if aaaa.security and a.security:
            security = max(a.security, aaaa.security)
        else:  # the AAAA answer was an error (5.1.3), so nothing proves that no AAAA exists
            security = dnssec_validator.INSECURE if a.security else dnssec_validator.UNCHECKED
        return Answer(NOERROR, tuple(synthesized), (), security, dnssec_validator.EDE_SYNTHESIZED)

    async def _ptr(self, name: bytes, target: bytes, cache_only: bool, trace: _Trace) -> Answer:
        """RFC 6147 5.3.1: alias the prefix's ip6.arpa name to in-addr.arpa and resolve that (from
        dnsd's own reverse zone when it holds the name)."""
        local = None if self.zone is None else authority.answer(self.zone, text(target), PTR)
        if local is not None:
            result = _from_zone(local.response)
        else:
            result = await self._lookup(target, PTR, cache_only, trace)
        ttls = [rr.ttl for rr in (*result.answer, *result.authority)]
        ttl = min([dns64.NO_SOA_TTL_CAP, *ttls])
        alias = RR(name, CNAME, CLASS_IN, ttl, target)
        metrics.DNS64_SYNTHESIZED.labels(kind="ptr").inc()
        # the alias is dnsd's own, so the answer is never secure; bogus stays bogus (SERVFAIL unless CD=1)
        if result.security == dnssec_validator.BOGUS:
            security, ede = dnssec_validator.BOGUS, result.ede
        elif result.security:
            security, ede = dnssec_validator.INSECURE, dnssec_validator.EDE_SYNTHESIZED
        else:
            security, ede = dnssec_validator.UNCHECKED, None
        return Answer(result.rcode, (alias, *result.answer), result.authority, security, ede)

    def _ipv4only(self, name: bytes, qtype: int, local: tuple[int, list[bytes]]) -> Answer:
        """RFC 8880 7.2: ipv4only.arpa answered locally, never sent upstream."""
        rcode, rdatas = local
        records = tuple(RR(name, qtype, CLASS_IN, dns64.IPV4ONLY_TTL, r) for r in rdatas)
        if qtype == AAAA and records:
            metrics.DNS64_SYNTHESIZED.labels(kind="ipv4only").inc()
        soa = () if records else (_ipv4only_soa(),)
        return Answer(rcode, records, soa)

    # ---- encoding ---------------------------------------------------------------------------

    def _encode(self, query: Query, rcode: int, answer: tuple[RR, ...],
                authority: tuple[RR, ...], limit: int, ad: bool = False, ede: int | None = None) -> bytes:
        """Response bytes: question echoed as asked, RD/CD echoed, RA set, OPT iff the query had
        one, owners equal to the qname compressed to 0xC00C; TC with no records when over `limit`.
        AD as given; the DNSSEC records only for DO=1 (or when asked for); EDE `ede` in the OPT."""
        flags = QR | RA | (query.flags & (RD | CD)) | (rcode & 0xF) | (_AD if ad else 0)
        if not query.edns_do:
            answer = tuple(rr for rr in answer if rr.rtype not in DNSSEC_TYPES or rr.rtype == query.qtype)
            authority = tuple(rr for rr in authority if rr.rtype not in DNSSEC_TYPES)
        question = query.qname_wire + struct.pack("!HH", query.qtype, query.qclass)
        opt = opt_record(self.config.edns_udp_size, query.edns_do) if query.edns else b""
        if opt and ede is not None:
            option = struct.pack("!HHH", _EDE_OPTION, 2, ede)
            opt = opt[:-2] + struct.pack("!H", len(option)) + option
        qkey = key(query.qname_wire)
        body = bytearray()
        for rr in (*answer, *authority):
            body += encode_rr(rr, owner=b"\xc0\x0c" if key(rr.owner) == qkey else None)
        arcount = 1 if opt else 0
        if 12 + len(question) + len(body) + len(opt) > limit:
            header = _HEADER.pack(query.id, flags | TC, 1, 0, 0, arcount)
            return header + question + opt
        header = _HEADER.pack(query.id, flags, 1, len(answer), len(authority), arcount)
        return header + question + bytes(body) + opt


def _is_aaaa(rr: RR) -> bool:
    """An AAAA record or a signature over AAAA records."""
    return rr.rtype == AAAA or (rr.rtype == RRSIG and rr.rdata[:2] == b"\x00\x1c")


def _from_zone(response: Response) -> Answer:
    """An authoritative zone answer as the recursor's records (names and SOA in wire form)."""

    def records(section: list[Any]) -> tuple[RR, ...]:
        out = []
        for owner, rtype, ttl, rdata in section:
            if isinstance(rdata, str):
                data = to_wire(rdata)
            elif isinstance(rdata, tuple) and len(rdata) == 7:  # SOA: mname, rname, five numbers
                data = to_wire(rdata[0]) + to_wire(rdata[1]) + struct.pack("!IIIII", *rdata[2:])
            elif isinstance(rdata, tuple):  # SRV: priority, weight, port, target
                data = struct.pack("!HHH", *rdata[:3]) + to_wire(rdata[3])
            else:
                data = bytes(rdata)
            out.append(RR(to_wire(owner), rtype, CLASS_IN, ttl, data))
        return tuple(out)

    return Answer(response.rcode, records(response.answer), records(response.authority))


def _settled(tasks: set[asyncio.Task[Answer]]) -> Any:
    """A done-callback that forgets a background refresh and retrieves its outcome (a failed
    refresh is normal: the stale answer was served)."""

    def done(task: asyncio.Task[Answer]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


async def _join(pending: asyncio.Future[Answer]) -> Answer:
    """Wait for a lookup (or judgement) another query started; its cancellation is not ours."""
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we ourselves are being cancelled
        raise ResolveError("cancelled") from None  # the lookup we joined was cancelled


def _fail(future: asyncio.Future[Answer], exc: Exception) -> None:
    """Hand `exc` to the waiters of a shared lookup (unless close() cancelled it already)."""
    if not future.done():
        future.set_exception(exc)
        future.exception()  # mark retrieved: waiters (if any) re-raise it themselves


def _ipv4only_soa() -> RR:
    """The SOA of the IANA ipv4only.arpa zone, for local negative answers (RFC 8880 7.2)."""
    rdata = (to_wire("a.iana-servers.net") + to_wire("nstld.iana.org")
             + struct.pack("!IIIII", 2015081200, 7200, 3600, 604800, 3600))
    return RR(to_wire(dns64.IPV4ONLY_ARPA), SOA, CLASS_IN, 3600, rdata)


__all__ = ["Recursor", "Settings", "CacheMiss"]
