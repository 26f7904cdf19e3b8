"""Upstream transport: one query to one server, UDP with EDNS fallback, TCP on TC, spoofing checks.

Every UDP query gets a fresh socket bound to a random source port and a random ID, both drawn from
`secrets` (RFC 5452 section 9.2 and 10: ID and port are the entropy an off-path attacker must guess).
The socket is connected, so the kernel already drops datagrams from other addresses or ports; the
protocol checks again anyway (address, port, ID, QR, question) and silently ignores anything that does
not match, waiting on for the real answer until the timeout, as RFC 5452 section 9.1 asks.

`Infra` remembers per server what the iterator and forwarder need to choose well: a smoothed RTT
(Unbound's infra cache idea; unknown servers start optimistic so that each gets tried), whether the
server mishandles EDNS (then it is asked without OPT: RFC 6891 section 7 fallback), and consecutive
failures for the forwarder's health tracking.

`AddressPolicy` is the contract's rule for addresses learned from referrals and glue: never one
of dnsd's own listeners, never an unspecified address, and loopback or link-local only when the
configured root hints or forwarders are themselves loopback or link-local (Unbound's
`do-not-query-localhost`, made automatic so that a loopback test hierarchy needs no flag). An
attacker's glue pointing at 127.0.0.1 or a node-local service is therefore never queried.

`Nat64` maps IPv4 server addresses into the NAT64 prefix when this host has no IPv4 route (Unbound's
`do-nat64`): the test is a `connect()` of a UDP socket, which consults the routing table without
sending a packet, so it works the same whatever the configuration says.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from dnsd import dns64, metrics
from dnsd.recursor import message
from dnsd.recursor.message import FORMERR, NOTIMP, QR, Message, MessageError, key

#: RFC 8767-era default: the DNS Flag Day 2020 size, safe from IP fragmentation.
EDNS_SIZE = 1232
#: Unbound's starting RTT for a server never asked (376 ms): optimistic enough to explore it.
UNKNOWN_RTT = 0.376
#: RTT assigned after a timeout is doubled up to this bound.
MAX_RTT = 12.0
_MAX_TCP_MESSAGE = 65535
_OPCODE_MASK = 0x7800


class UpstreamError(Exception):
    """A query got no usable response; `reason` is a bounded metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ServerState:
    rtt: float = UNKNOWN_RTT
    no_edns: bool = False
    failures: int = 0
    down_until: float = 0.0


class Infra:
    """Per-server RTT, EDNS capability and health, bounded in size (oldest forgotten first)."""

    def __init__(self, max_servers: int = 10_000) -> None:
        self.max_servers = max_servers
        self._servers: dict[tuple[str, int], ServerState] = {}

    def state(self, address: str, port: int) -> ServerState:
        k = (address, port)
        state = self._servers.get(k)
        if state is None:
            if len(self._servers) >= self.max_servers:
                self._servers.pop(next(iter(self._servers)))
            state = self._servers[k] = ServerState()
        return state

    def rtt(self, address: str, port: int) -> float:
        state = self._servers.get((address, port))
        return UNKNOWN_RTT if state is None else state.rtt

    def success(self, address: str, port: int, rtt: float) -> None:
        state = self.state(address, port)
        state.rtt = rtt if state.rtt == UNKNOWN_RTT else 0.7 * state.rtt + 0.3 * rtt
        state.failures = 0
        state.down_until = 0.0

    def failure(self, address: str, port: int, timeout: bool) -> None:
        """Count a failure; after 3 in a row the server is considered down for a growing while."""
        state = self.state(address, port)
        # a timeout or an error both make the server less attractive (Unbound backs off likewise)
        state.rtt = min(MAX_RTT, max(state.rtt, 0.1) * (2 if timeout else 1.5))
        state.failures += 1
        if state.failures >= 3:
            state.down_until = time.monotonic() + min(60.0, 2.0 ** (state.failures - 2))

    def answered(self, address: str, port: int) -> bool:
        """Whether the last exchange with this server succeeded (health reporting, not routing)."""
        state = self._servers.get((address, port))
        return state is not None and state.failures == 0 and state.rtt != UNKNOWN_RTT

    def seen(self) -> list[tuple[str, int]]:
        """Every server with a state, for health reporting."""
        return list(self._servers)

    def up(self, address: str, port: int) -> bool:
        state = self._servers.get((address, port))
        return state is None or state.down_until <= time.monotonic()


class AddressPolicy:
    """Which server addresses learned from the Internet may be queried (see the module docstring)."""

    def __init__(self, configured: list[str], listeners: list[tuple[str, int]], port: int) -> None:
        parsed = [ipaddress.ip_address(a) for a in configured]
        self.local_ok = any(a.is_loopback or a.is_link_local for a in parsed)
        self.port = port
        self.listeners = {(ipaddress.ip_address(h), p) for h, p in listeners}
        if any(h.is_unspecified and p == port for h, p in self.listeners):
            # a wildcard listener on the servers' port is reached through the host's own
            # loopback addresses (other loopback addresses may be bound by other servers)
            self.listeners |= {(ipaddress.ip_address("127.0.0.1"), port),
                               (ipaddress.ip_address("::1"), port)}

    def allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified or (ip, self.port) in self.listeners or ip.is_multicast:
            return False
        if ip.version == 4 and ip.packed[0] == 0:
            return False  # 0.0.0.0/8, "this network" (RFC 1122): the kernel treats it as local
        if ip.is_loopback or ip.is_link_local:
            return self.local_ok
        return True


class Nat64:
    """Reach IPv4-only servers through the NAT64 prefix when IPv4 itself is not routed."""

    def __init__(self, prefix: ipaddress.IPv6Network | None) -> None:
        self.prefix = prefix
        self._routes: dict[int, bool] = {}

    def has_route(self, address: str) -> bool:
        """Whether the routing table has a route to `address` (no packet is sent)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect((address, 53))
            return True
        except OSError as exc:
            return exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
                                     errno.EAFNOSUPPORT)
        finally:
            sock.close()

    def ipv4_routed(self, address: str) -> bool:
        """Whether IPv4 `address` is routed; answers are remembered (bounded) per address."""
        packed = int(ipaddress.IPv4Address(address))
        known = self._routes.get(packed)
        if known is None:
            if len(self._routes) >= 4096:
                self._routes.clear()
            known = self._routes[packed] = self.has_route(address)
        return known

    def map(self, address: str) -> str | None:
        """The address to send to: `address` itself, its NAT64 form, or None when unreachable."""
        if ":" in address:
            return address
        if self.ipv4_routed(address):
            return address
        v4 = ipaddress.IPv4Address(address)
        if self.prefix is None or not dns64.may_synthesize(v4, dns64.Policy(self.prefix)):
            return None  # RFC 6052 3.1: the WKP cannot carry non-global addresses; NAT64 would not either
        return str(dns64.embed(self.prefix, v4))


def new_id() -> int:
    return secrets.randbits(16)


def _matches(msg: Message, ident: int, qname: bytes, qtype: int) -> bool:
    """RFC 5452 section 9.1: only a response with our ID and our question is an answer."""
    if not msg.flags & QR or msg.id != ident:
        return False
    if msg.flags & _OPCODE_MASK:
        return False  # RFC 1035 4.1.1: the response's opcode is the query's (QUERY, 0); NOTIFY/UPDATE are not answers
    if msg.qname == b"":
        # some servers omit the question in FORMERR/NOTIMP answers to EDNS; accept only those
        return msg.rcode in (FORMERR, NOTIMP)
    return key(msg.qname) == key(qname) and msg.qtype == qtype and msg.qclass == message.CLASS_IN


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, peer: tuple[str, int], ident: int, qname: bytes, qtype: int) -> None:
        self.peer = peer
        self.ident = ident
        self.qname = qname
        self.qtype = qtype
        self.result: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.rejected = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.result.done():
            return
        if ipaddress.ip_address(str(addr[0])) != ipaddress.ip_address(self.peer[0]) or \
                addr[1] != self.peer[1]:
            self.rejected += 1
            return
        try:
            msg = message.parse(data)
        except MessageError:
            self.rejected += 1
            return
        if not _matches(msg, self.ident, self.qname, self.qtype):
            self.rejected += 1
            return
        self.result.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(UpstreamError("unreachable"))


def _random_port_socket(family: int) -> socket.socket:
    """A UDP socket bound to a random port from `secrets` (RFC 5452 10), kernel choice as a fallback."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for _ in range(8):
        try:
            sock.bind((any_addr, 1024 + secrets.randbelow(65536 - 1024)))
            return sock
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                break
    sock.bind((any_addr, 0))
    return sock


async def udp(address: str, port: int, wire_query: bytes, ident: int, qname: bytes, qtype: int,
              wait: float) -> tuple[Message, int]:
    """Send one UDP query and wait for the matching response: (message, datagrams rejected)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = _random_port_socket(family)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise UpstreamError("unreachable") from None
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpExchange((address, port), ident, qname, qtype), sock=sock)
    try:
        transport.sendto(wire_query)
        async with asyncio.timeout(wait):
            msg = await protocol.result
        return msg, protocol.rejected
    except TimeoutError:
        raise UpstreamError("timeout") from None
    finally:
        transport.close()


async def tcp(address: str, port: int, wire_query: bytes, ident: int, qname: bytes, qtype: int,
              wait: float) -> Message:
    """One query over TCP (RFC 7766); the answer must match like a UDP one."""
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                writer.write(struct.pack("!H", len(wire_query)) + wire_query)
                await writer.drain()
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
            finally:
                writer.close()
    except TimeoutError:
        raise UpstreamError("timeout") from None
    except (OSError, asyncio.IncompleteReadError):
        raise UpstreamError("tcp") from None
    try:
        msg = message.parse(data)
    except MessageError:
        raise UpstreamError("malformed") from None
    if not _matches(msg, ident, qname, qtype):
        raise UpstreamError("mismatch")
    return msg


async def query(address: str, port: int, qname: bytes, qtype: int, *, rd: bool, infra: Infra,
                mode: str, wait: float, edns_size: int = EDNS_SIZE, do: bool = False,
                cd: bool = False) -> Message:
    """Ask one server: UDP with EDNS (falling back to none), then TCP when truncated.

    Records RTT and failures in `infra`; raises UpstreamError (label-safe `reason`) on failure.
    """
    state = infra.state(address, port)
    started = time.monotonic()
    edns: int | None = None if state.no_edns else edns_size
    try:
        for _attempt in range(2):
            ident = new_id()
            wire_query = message.build_query(ident, qname, qtype, rd=rd, edns_size=edns, do=do, cd=cd)
            metrics.UPSTREAM_QUERIES.labels(mode=mode, transport="udp").inc()
            msg, rejected = await udp(address, port, wire_query, ident, qname, qtype, wait)
            if rejected:
                metrics.UPSTREAM_FAILURES.labels(mode=mode, reason="rejected").inc(rejected)
            if edns is not None and msg.rcode in (FORMERR, NOTIMP) and not msg.edns:
                state.no_edns = True  # RFC 6891 7: a server that rejects OPT is asked without it
                edns = None
                continue
            break
        if msg.tc:
            ident = new_id()
            wire_query = message.build_query(ident, qname, qtype, rd=rd, edns_size=edns, do=do, cd=cd)
            metrics.UPSTREAM_QUERIES.labels(mode=mode, transport="tcp").inc()
            msg = await tcp(address, port, wire_query, ident, qname, qtype, wait * 2)
    except UpstreamError as exc:
        metrics.UPSTREAM_FAILURES.labels(mode=mode, reason=exc.reason).inc()
        infra.failure(address, port, timeout=exc.reason == "timeout")
        raise
    infra.success(address, port, time.monotonic() - started)
    return msg
