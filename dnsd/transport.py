"""UDP and TCP listeners: bytes and a client address in, bytes out; no DNS semantics here.

UDP sockets get a large receive buffer (as NSD does): the kernel default holds only a couple of
hundred packets, and a burst beyond that is lost before any server code runs. TCP follows RFC 7766:
two-byte length framing, several queries per connection (pipelining, answered as they complete, so
out of order when one needs recursion), an idle timeout that closes quiet connections (and those
that trickle a partial message), reading paused while a client leaves its answers unread, and
bounded connection counts (total and per client) so that a flood of idle connections cannot exhaust
memory.
All sockets set SO_REUSEPORT so that `--workers` processes can share the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dnsd.config import Endpoint
from dnsd.metrics import LIMIT_HITS

logger = logging.getLogger(__name__)

#: An AsyncIterator reply is a multi-message answer (a zone transfer): TCP writes its messages one by
#: one, yielding to the loop between them and waiting while the client leaves them unread.
Responder = Callable[[bytes, str, bool], bytes | Awaitable[bytes | None] | AsyncIterator[bytes] | None]

#: Receive buffer asked for on UDP sockets; the kernel caps it at net.core.rmem_max unless we are root.
UDP_RECEIVE_BUFFER = 8 * 1024 * 1024
#: TCP connections accepted at once, in total and from one client address (defaults of
#: --tcp-max-connections and --tcp-max-per-client).
MAX_TCP_CONNECTIONS = 1024
MAX_TCP_PER_CLIENT = 64
#: Queries in flight on one TCP connection before reading pauses (RFC 7766 6.2.1.1 allows a limit).
MAX_TCP_PIPELINE = 100


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_socket(endpoint: Endpoint, kind: socket.SocketKind, dual_stack: bool) -> socket.socket:
    """A bound socket; `::` listens for IPv4 too unless an IPv4 listener shares the port."""
    family = _family(endpoint.host)
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        if kind == socket.SOCK_DGRAM:
            _grow_receive_buffer(sock)
        sock.bind((endpoint.host, endpoint.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, UDP_RECEIVE_BUFFER)
            return
        except OSError:
            pass  # not privileged: fall back to what rmem_max allows
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)


class UdpProtocol(asyncio.DatagramProtocol):
    """One UDP socket: answer synchronously when possible, spawn a task only for recursion."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is no subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self.respond(data, addr[0], False)
        if reply is None:
            return
        if isinstance(reply, bytes):
            if self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        if isinstance(reply, AsyncIterator):  # never a stream over UDP (and never on the hot path)
            return
        task = asyncio.ensure_future(self._send_later(reply, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_later(self, pending: Awaitable[bytes | None], addr: tuple[Any, ...]) -> None:
        reply = await pending
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)  # ICMP unreachable from a vanished client: nothing to do


class TcpServerState:
    """Connection accounting shared by all TCP listeners of a process."""

    def __init__(self, idle_timeout: float, max_connections: int = MAX_TCP_CONNECTIONS,
                 max_per_client: int = MAX_TCP_PER_CLIENT) -> None:
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.connections: set[TcpProtocol] = set()


class TcpProtocol(asyncio.Protocol):
    """One TCP connection: length-prefixed messages, pipelined, closed when idle."""

    def __init__(self, respond: Responder, state: TcpServerState) -> None:
        self.respond = respond
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.pending = 0
        self.idle: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepted = False
        self.write_paused = False
        self.writable: asyncio.Event | None = None  # created for the first streamed answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is no subclass
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        state = self.state
        if state.total >= state.max_connections:
            LIMIT_HITS.labels("tcp_connections").inc()
            transport.abort()  # type: ignore[attr-defined]  # a stream transport
            return
        if state.per_client.get(self.client, 0) >= state.max_per_client:
            LIMIT_HITS.labels("tcp_per_client").inc()
            transport.abort()  # type: ignore[attr-defined]
            return
        self.accepted = True
        state.total += 1
        state.per_client[self.client] = state.per_client.get(self.client, 0) + 1
        state.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if not self.accepted:
            return
        state = self.state
        state.total -= 1
        left = state.per_client.get(self.client, 1) - 1
        if left:
            state.per_client[self.client] = left
        else:
            state.per_client.pop(self.client, None)
        state.connections.discard(self)
        for task in self.tasks:
            task.cancel()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.state.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        if self.pending == 0 and self.transport is not None:
            self.transport.close()  # RFC 7766 6.2.3: the server closes idle connections
        else:
            self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        buffer = self.buffer
        complete = False
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            complete = True
            self._handle(message)
        if complete:
            # Only whole messages restart the clock: a client trickling a byte now and then
            # (slowloris) is still closed one idle timeout after its last complete query.
            self._arm_idle()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its queries, so that answers cannot
        # pile up in our send buffer without bound.
        self.write_paused = True
        if self.writable is not None:
            self.writable.clear()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if (self.transport is not None and not self.transport.is_closing() and not self.write_paused
                and self.pending < MAX_TCP_PIPELINE):
            self.transport.resume_reading()

    def _handle(self, message: bytes) -> None:
        reply = self.respond(message, self.client, True)
        if reply is None:
            return
        if isinstance(reply, bytes):
            self._write(reply)
            return
        self.pending += 1
        if self.pending >= MAX_TCP_PIPELINE and self.transport is not None:
            self.transport.pause_reading()
        if isinstance(reply, AsyncIterator):
            task = asyncio.ensure_future(self._write_stream(reply))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        task = asyncio.ensure_future(self._write_later(reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _write_later(self, pending: Awaitable[bytes | None]) -> None:
        try:
            reply = await pending
            if reply is not None:
                self._write(reply)
        finally:
            self.pending -= 1
            self._maybe_resume()

    async def _write_stream(self, messages: AsyncIterator[bytes]) -> None:
        """Write a multi-message answer; the idle timer is held off while it runs."""
        if self.writable is None:
            self.writable = asyncio.Event()
            if not self.write_paused:
                self.writable.set()
        try:
            async for message in messages:
                if self.transport is None or self.transport.is_closing():
                    break
                self._write(message)
                if not self.writable.is_set():
                    try:  # a client that stops reading a transfer is closed like an idle one
                        await asyncio.wait_for(self.writable.wait(), self.state.idle_timeout)
                    except TimeoutError:
                        self.transport.abort()
                        break
                await asyncio.sleep(0)  # let other clients' answers go out between messages
        finally:
            await messages.aclose()  # type: ignore[attr-defined]  # an async generator
            self.pending -= 1
            self._maybe_resume()

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Listeners:
    """Every UDP and TCP socket of the process, opened together and closed together."""

    def __init__(self, endpoints: tuple[Endpoint, ...], respond: Responder, idle_timeout: float,
                 max_connections: int = MAX_TCP_CONNECTIONS, max_per_client: int = MAX_TCP_PER_CLIENT) -> None:
        self.endpoints = endpoints
        self.respond = respond
        self.tcp_state = TcpServerState(idle_timeout, max_connections, max_per_client)
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.tcp_servers: list[asyncio.AbstractServer] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        """Bind everything or nothing: an OSError leaves no socket open."""
        loop = asyncio.get_running_loop()
        ipv4_ports = {e.port for e in self.endpoints if _family(e.host) == socket.AF_INET}
        try:
            for endpoint in self.endpoints:
                dual = endpoint.host == "::" and endpoint.port not in ipv4_ports
                udp_sock = make_socket(endpoint, socket.SOCK_DGRAM, dual)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.respond), sock=udp_sock
                )
                self.udp_transports.append(transport)
                port = udp_sock.getsockname()[1]
                # Port 0 means "any": TCP then takes the port UDP got, so both serve one address.
                tcp_endpoint = Endpoint(endpoint.host, port)
                tcp_sock = make_socket(tcp_endpoint, socket.SOCK_STREAM, dual)
                tcp_sock.listen(1024)
                server = await loop.create_server(
                    lambda: TcpProtocol(self.respond, self.tcp_state), sock=tcp_sock
                )
                self.tcp_servers.append(server)
                self.bound.append((endpoint.host, port))
        except OSError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop accepting, close open connections, close UDP sockets."""
        for server in self.tcp_servers:
            server.close()
        for connection in list(self.tcp_state.connections):
            connection.close()
        for server in self.tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        for transport in self.udp_transports:
            transport.close()
        self.tcp_servers.clear()
        self.udp_transports.clear()
