"""UDP and TCP listeners: bytes and a client address in, bytes out; no DNS semantics here.

UDP sockets get a large receive buffer (as NSD does): the kernel default holds only a couple of
hundred packets, and a burst beyond that is lost before any server code runs. TCP follows RFC 7766:
two-byte length framing, several queries per connection (pipelining, answered as they complete, so
out of order when one needs recursion), an idle timeout that closes quiet connections (and those
that trickle a partial message), reading paused while a client leaves its answers unread, and
bounded connection counts (total and per client) so that a flood of idle connections cannot exhaust
memory.

A client that stops reading its answers is *aborted*, not closed (RFC 7766 6.2.2-6.2.3 and 10):
`close()` waits for the unsent output to drain, which never happens when the client has stopped
reading, so the connection would keep its slot in the connection limits for as long as the client
liked (and pin its buffers). Writes paused for longer than the idle timeout (the write timeout), or
an idle timer that fires while output is still queued (in our buffer, or unsent or unacknowledged
in the kernel's send queue, which grows to megabytes by itself), reset the connection (SO_LINGER 0,
so that the kernel drops its queue too instead of keeping an orphan) unless the client has
acknowledged more of its answers since the last look (TCP_INFO's bytes_acked): a slow reader that
keeps reading, a large transfer to a distant secondary, is given another timeout each time it makes
progress; one that stopped reading is reset within the timeout. (The first look at a connection
idle with output only in the kernel takes a short grace period to measure progress.) While writes
are paused no further queries are answered: complete messages already read wait in the connection's
buffer, so what one connection holds in memory is bounded by the transport's high-water mark plus
one read.
All sockets set SO_REUSEPORT so that `--workers` processes can share the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
import termios
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


_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST and drops the send queue
_QUEUE_SIZE = struct.Struct("i")
_TCP_INFO_SIZE = 128
_BYTES_ACKED = struct.Struct("=Q")  # struct tcp_info's tcpi_bytes_acked, at offset 120 (Linux 4.1+)


def _bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """Bytes of our output the client has acknowledged so far; None when the kernel does not say."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    return int(_BYTES_ACKED.unpack_from(info, 120)[0]) if len(info) >= _TCP_INFO_SIZE else None


def _kernel_send_queue(transport: asyncio.BaseTransport) -> int:
    """Bytes in the kernel's send queue (unsent or unacknowledged) of a TCP transport; 0 when unknown."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(_QUEUE_SIZE.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


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
        self.write_timer: asyncio.TimerHandle | None = None
        # bytes_acked when the write timer / the idle stall check last looked (None: not looked yet)
        self.acked_paused: int | None = None
        self.acked_idle: int | None = None
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
        if self.write_timer is not None:
            self.write_timer.cancel()
        if self.writable is not None:
            self.writable.set()  # wakes a transfer waiting to write: it sees the closed transport and stops
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

    def _arm_idle(self, delay: float | None = None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.state.idle_timeout if delay is None else delay, self._on_idle)

    def _on_idle(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.write_paused:
            self._arm_idle()  # the write timer judges a paused connection
        elif transport.get_write_buffer_size() or _kernel_send_queue(transport):
            # Answers still unsent after an idle timeout: close() would wait for a client that has
            # stopped reading forever (or the kernel would, for an orphan), so judge its progress.
            acked = _bytes_acked(transport)
            if acked is not None and self.acked_idle is None:
                self.acked_idle = acked
                self._arm_idle(self._grace())  # measure progress from now
            elif acked is not None and self.acked_idle is not None and acked > self.acked_idle:
                self.acked_idle = acked
                self._arm_idle()  # still reading, slowly: another idle timeout
            else:
                self._abort()
        elif self.pending == 0:
            transport.close()  # RFC 7766 6.2.3: the server closes idle connections
        else:
            self._arm_idle()

    def _abort(self) -> None:
        """Reset a connection whose client stopped reading (frees its slot and buffers at once)."""
        LIMIT_HITS.labels("tcp_write_stalled").inc()
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self._process():
            # Only whole messages restart the clock: a client trickling a byte now and then
            # (slowloris) is still closed one idle timeout after its last complete query.
            self.acked_idle = None
            self._arm_idle()

    def _process(self) -> bool:
        """Answer the complete messages in the buffer until writes pause; True when there was one."""
        buffer = self.buffer
        complete = False
        while len(buffer) >= 2 and not self.write_paused:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            complete = True
            self._handle(message)
        return complete

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading (and answering) its queries, so that
        # answers cannot pile up in our send buffer, and give it one idle timeout to catch up.
        self.write_paused = True
        if self.writable is not None:
            self.writable.clear()
        if self.transport is not None:
            self.transport.pause_reading()
        if self.write_timer is None:
            self.write_timer = asyncio.get_running_loop().call_later(self._grace(), self._write_baseline)

    def _grace(self) -> float:
        """A short wait before measuring progress: acknowledgements of what was just sent (delayed
        ACKs, up to 40 ms on Linux) must not count as the client reading."""
        return min(1.0, self.state.idle_timeout / 4)

    def _write_baseline(self) -> None:
        self.write_timer = None
        if not self.write_paused or self.transport is None or self.transport.is_closing():
            return
        self.acked_paused = _bytes_acked(self.transport)
        self.write_timer = asyncio.get_running_loop().call_later(self.state.idle_timeout - self._grace(),
                                                                 self._write_stalled)

    def _write_stalled(self) -> None:
        self.write_timer = None
        transport = self.transport
        if not self.write_paused or transport is None or transport.is_closing():
            return
        acked = _bytes_acked(transport)
        if acked is not None and self.acked_paused is not None and acked > self.acked_paused:
            # Paused all along, but the client took some of its answers: a slow reader, not a stalled one.
            self.acked_paused = acked
            self.write_timer = asyncio.get_running_loop().call_later(self.state.idle_timeout, self._write_stalled)
            return
        self._abort()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.transport is not None and not self.transport.is_closing() and self._process():
            self.acked_idle = None
            self._arm_idle()
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
                # While the client does not read, the write timer judges it (reset without progress
                # for an idle timeout, patience while a slow secondary still takes its bytes);
                # connection_lost sets the event, so an aborted transfer ends here too.
                await self.writable.wait()
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


#: Tries at a UDP and TCP pair on one port when the configured port is 0 ("any").
_ANY_PORT_TRIES = 16


def _bind_pair(endpoint: Endpoint, dual: bool) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same port of `endpoint`.

    Port 0 means "any": TCP then takes the port UDP got, so both serve one address. The kernel only
    promised that port free for UDP, and a TCP socket (a listener or an outgoing connection's local
    port) may hold it already, so with port 0 a collision means trying another port, not failing.
    """
    for attempt in range(_ANY_PORT_TRIES):
        udp_sock = make_socket(endpoint, socket.SOCK_DGRAM, dual)
        try:
            tcp_sock = make_socket(Endpoint(endpoint.host, udp_sock.getsockname()[1]), socket.SOCK_STREAM, dual)
        except OSError as exc:
            udp_sock.close()
            if endpoint.port != 0 or exc.errno != errno.EADDRINUSE or attempt == _ANY_PORT_TRIES - 1:
                raise
            continue
        return udp_sock, tcp_sock
    raise AssertionError("unreachable")  # the loop returns or raises


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
                udp_sock, tcp_sock = _bind_pair(endpoint, dual)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.respond), sock=udp_sock
                )
                self.udp_transports.append(transport)
                port = udp_sock.getsockname()[1]
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
