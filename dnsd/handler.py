"""The query pipeline: bytes and a client address in, bytes (or nothing) out.

Two paths, one result:

* The **fast path** (`Handler.fast`) looks the raw question up in a dictionary of pre-encoded
  responses. The key is the question as it arrives on the wire, lower-cased (name, type, class),
  plus one byte for what changes the answer: EDNS present, DO, CD, and whether the client may recurse
  (it decides RA and REFUSED). A hit costs a few slices: the ID, the RD bit and the question's case
  are copied from the query. No decoding, no encoding, no await.
* The **slow path** (`Handler.slow`) parses the whole message (`wire.parse_query`), applies the
  rules, asks the authority (or the recursor), encodes, and, when the result is a complete answer
  that the zone alone decided, stores it for the fast path. It is the reference: the tests run
  every zone query through both and compare the bytes.

Invalidation is exact: every stored response remembers the owner names it was built from, and the
zone reports the names each change touched; responses carrying the SOA (negative answers, the apex)
or the not-yet-synced SERVFAIL are dropped on every change, because the serial is in them.

This is the only place where problems become rcodes; nothing raised here reaches the transport.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from dnsd import authority, wire
from dnsd.config import Config
from dnsd.metrics import QueryStats, qtype_label, rcode_label
from dnsd.zone import ZoneIndex

logger = logging.getLogger(__name__)
query_logger = logging.getLogger("dnsd.query")

#: Upper bound on stored responses; past it the store starts afresh (random names cannot grow memory).
MAX_CACHED_RESPONSES = 200_000
#: Upper bound on remembered client-address -> may-recurse decisions.
MAX_ACL_ENTRIES = 65_536

_FLAG_EDNS, _FLAG_DO, _FLAG_CD, _FLAG_RECURSE = 1, 2, 4, 8
_OPT_TYPE = b"\x00\x29"
_ONE_QUESTION_ONLY = b"\x00\x01\x00\x00\x00\x00"

Reply = bytes | None | Coroutine[Any, Any, bytes | None]


class Recursor(Protocol):
    """What the handler needs from the recursive resolver (dnsd.recursor.Recursor)."""

    async def answer_with_source(self, query: wire.Query, limit: int) -> tuple[bytes, str]: ...


class Acl:
    """Which clients may recurse: a CIDR list, with IPv4-mapped IPv6 clients treated as IPv4."""

    def __init__(self, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> None:
        self.networks = networks
        self._decisions: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        """True when `host` (as the socket reports it) is inside one of the networks."""
        decision = self._decisions.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(self._decisions) >= MAX_ACL_ENTRIES:
                self._decisions.clear()
            self._decisions[host] = decision
        return decision

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


class Handler:
    """Answers queries for one process; the transports call `respond`."""

    def __init__(self, config: Config, zone: ZoneIndex, stats: QueryStats,
                 recursor: Recursor | None = None) -> None:
        self.config = config
        self.zone = zone
        self.stats = stats
        self.recursor = recursor if config.recursion != "off" else None
        self.acl = Acl(config.allow_recursion)
        self.edns_size = config.edns_udp_size
        self.fast_path = True
        self._responses: dict[bytes, tuple[bytes, tuple[str, str, str, str], tuple[str, str, str, str]]] = {}
        self._keys_by_name: dict[str, list[bytes]] = {}
        self._volatile: set[bytes] = set()
        self._query_log_sample = config.query_log_sample
        zone.subscribe(self.invalidate)

    # ---- cache ----------------------------------------------------------------------------------

    def invalidate(self, changed: set[str]) -> None:
        """Drop every stored response built from a changed name, and all SOA-bearing ones."""
        responses = self._responses
        for name in changed:
            for key in self._keys_by_name.pop(name, ()):
                responses.pop(key, None)
        for key in self._volatile:
            responses.pop(key, None)
        self._volatile.clear()

    @property
    def cached_responses(self) -> int:
        """Number of pre-encoded responses held (for metrics and tests)."""
        return len(self._responses)

    def _store(self, key: bytes, response: bytes, answer: authority.Answer, qtype: int, rcode: int,
               source: str) -> None:
        if len(self._responses) >= MAX_CACHED_RESPONSES:
            self._responses.clear()
            self._keys_by_name.clear()
            self._volatile.clear()
        # RD is copied from each query at send time, so the template carries it clear.
        template = response[:2] + bytes((response[2] & 0xFE,)) + response[3:]
        qt, rc = qtype_label(qtype), rcode_label(rcode)
        self._responses[key] = (template, ("udp", qt, rc, source), ("tcp", qt, rc, source))
        if answer.volatile:
            self._volatile.add(key)
        for name in answer.names:
            self._keys_by_name.setdefault(name, []).append(key)

    # ---- entry point ----------------------------------------------------------------------------

    def respond(self, data: bytes, host: str, tcp: bool) -> Reply:
        """The response to one query: bytes, None to drop, or a coroutine when recursion is needed."""
        if self.fast_path:
            reply = self.fast(data, host, tcp)
            if reply is not None:
                return reply
        return self.slow(data, host, tcp)

    def fast_key(self, data: bytes, host: str) -> tuple[bytes, int, int] | None:
        """(cache key, end of question, client's UDP limit) for a plain query, or None for anything else.

        Plain means: a QUERY with only RD among the first flag octet, one question, no answer or
        authority records, at most an OPT of version 0 whose options tile its rdata, nothing after.
        """
        length = len(data)
        if length < 17 or data[2] & 0xFE or data[4:10] != _ONE_QUESTION_ONLY:
            return None
        end = data.find(0, 12)
        if end < 0:
            return None
        qend = end + 5
        arcount = data[11] | (data[10] << 8)
        if arcount == 0:
            if length != qend:
                return None
            flags, limit = 0, wire.CLASSIC_UDP_SIZE
        elif arcount == 1:
            if length < qend + 11 or data[qend] != 0 or data[qend + 1 : qend + 3] != _OPT_TYPE:
                return None
            if data[qend + 6]:  # EDNS version: BADVERS is the slow path's business
                return None
            rdlength = (data[qend + 9] << 8) | data[qend + 10]
            if qend + 11 + rdlength != length:
                return None
            option = qend + 11
            while option < length:
                if option + 4 > length:
                    return None
                option += 4 + ((data[option + 2] << 8) | data[option + 3])
            if option != length:
                return None
            flags = _FLAG_EDNS | (_FLAG_DO if data[qend + 7] & 0x80 else 0)
            size = (data[qend + 3] << 8) | data[qend + 4]
            limit = max(wire.CLASSIC_UDP_SIZE, min(size, self.edns_size))
        else:
            return None
        if data[3] & 0x10:
            flags |= _FLAG_CD
        if self.acl.allows(host):
            flags |= _FLAG_RECURSE
        return data[12:qend].lower() + bytes((flags,)), qend, limit

    def fast(self, data: bytes, host: str, tcp: bool) -> bytes | None:
        """A stored response patched for this query, or None when the slow path must decide."""
        started = time.perf_counter()
        found = self.fast_key(data, host)
        if found is None:
            return None
        key, qend, limit = found
        entry = self._responses.get(key)
        if entry is None:
            return None
        template, udp_labels, tcp_labels = entry
        if not tcp and len(template) > limit:
            return None
        labels = tcp_labels if tcp else udp_labels
        reply = b"".join((
            data[:2], bytes((template[2] | (data[2] & 1),)), template[3:12], data[12:qend], template[qend:],
        ))
        self.stats.count(labels)
        self.stats.observe(labels[3], time.perf_counter() - started)
        return reply

    def slow(self, data: bytes, host: str, tcp: bool) -> Reply:
        """Full decode, decide, encode; stores zone answers for the fast path."""
        started = time.perf_counter()
        transport = "tcp" if tcp else "udp"
        try:
            query = wire.parse_query(data)
        except wire.DropPacket:
            self.stats.drop("malformed")
            return None
        may_recurse = self.acl.allows(host)
        ra = may_recurse and self.recursor is not None
        limit = 65535 if tcp else (
            max(wire.CLASSIC_UDP_SIZE, min(query.udp_size, self.edns_size)) if query.edns
            else wire.CLASSIC_UDP_SIZE
        )
        if query.error is not None:
            return self._finish(wire.encode_error(query, query.error, ra, self.edns_size), query,
                                query.error, "error", transport, started, host)
        if query.qclass not in (wire.CLASS_IN, wire.ANY):
            return self._finish(wire.encode_error(query, wire.REFUSED, ra, self.edns_size), query,
                                wire.REFUSED, "refused", transport, started, host)
        try:
            result = authority.answer(self.zone, query.qname, query.qtype)
        except Exception:  # a bug must cost one SERVFAIL, never the listener
            logger.exception("internal error answering %s/%d", query.qname, query.qtype)
            return self._finish(wire.encode_error(query, wire.SERVFAIL, ra, self.edns_size), query,
                                wire.SERVFAIL, "error", transport, started, host)
        if result is None:
            if self.recursor is not None and may_recurse:  # RD clear: the recursor answers from cache only
                return self._recurse(query, limit, transport, started, host)
            reply = wire.encode_error(query, wire.REFUSED, ra, self.edns_size)
            if not ra:  # with recursion available, RD (not part of the key) decides: never store
                self._maybe_store(data, host, reply, None, query, wire.REFUSED, "refused")
            return self._finish(reply, query, wire.REFUSED, "refused", transport, started, host)
        full = wire.encode(query, result.response, ra, 65535, self.edns_size)
        rcode = result.response.rcode
        if len(full) <= limit:
            self._maybe_store(data, host, full, result, query, rcode, "zone")
            reply = full
        else:
            reply = wire.encode(query, result.response, ra, limit, self.edns_size)
        return self._finish(reply, query, rcode, "zone", transport, started, host)

    def _maybe_store(self, data: bytes, host: str, reply: bytes, result: authority.Answer | None,
                     query: wire.Query, rcode: int, source: str) -> None:
        found = self.fast_key(data, host)
        if found is None:
            return
        if result is None:  # REFUSED for a name outside the zones: depends on nothing in the zone
            result = authority.Answer(wire.Response(), set(), False, self.zone.apexes[0])
        self._store(found[0], reply, result, query.qtype, rcode, source)

    async def _recurse(self, query: wire.Query, limit: int, transport: str, started: float,
                       host: str) -> bytes | None:
        if self.recursor is None:  # only called when recursion is configured
            return None
        try:
            reply, source = await self.recursor.answer_with_source(query, limit)
        except Exception:
            logger.exception("recursion failed for %s/%d", query.qname, query.qtype)
            reply, source = wire.encode_error(query, wire.SERVFAIL, True, self.edns_size), "error"
        rcode = reply[3] & 0xF if len(reply) >= 4 else wire.SERVFAIL
        return self._finish(reply, query, rcode, source, transport, started, host)

    def _finish(self, reply: bytes, query: wire.Query, rcode: int, source: str, transport: str,
                started: float, host: str) -> bytes:
        self.stats.count((transport, qtype_label(query.qtype), rcode_label(rcode), source))
        self.stats.observe(source, time.perf_counter() - started)
        if self._query_log_sample and random.random() < self._query_log_sample:
            query_logger.info("client=%s transport=%s qname=%s qtype=%d rcode=%s source=%s bytes=%d",
                              host, transport, query.qname or ".", query.qtype, rcode_label(rcode),
                              source, len(reply))
        return reply

