"""A UDP and TCP DNS proxy that counts the queries reaching an authoritative server.

The aggressive NSEC tests and the flood benchmark must show how many queries a victim zone's server
actually received; Knot keeps no per-query log without a control socket and a statistics module, so
the delegation points here instead and this proxy relays every datagram (each on its own upstream
socket, so that replies find their client) and every TCP connection to the Knot behind it, recording
each query's name. `delay` makes the victim slow (for the benchmark's slow victim zone).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections import Counter

import dns.exception
import dns.message


def _qname(wire: bytes) -> str | None:
    try:
        return dns.message.from_wire(wire, ignore_trailing=True).question[0].name.to_text().lower()
    except (dns.exception.DNSException, IndexError, ValueError):
        return None


class CountingProxy:
    """Listens on (host, port), relays to (backend, port); `queries` counts the names asked."""

    def __init__(self, host: str, backend: str, port: int = 53, delay: float = 0.0) -> None:
        self.host, self.backend, self.port, self.delay = host, backend, port, delay
        self.queries: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.queries.values())

    def _count(self, wire: bytes) -> None:
        name = _qname(wire)
        with self.lock:
            self.queries[name or "?"] += 1

    def start(self) -> CountingProxy:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._udp.bind((self.host, self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((self.host, self.port))
        self._tcp.listen(64)
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    def _serve_udp(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, None)
        pending: list[tuple[float, bytes, tuple[str, int]]] = []  # delayed queries: (due, wire, client)
        opened: dict[socket.socket, float] = {}
        while not self._stop.is_set():
            timeout = 0.05 if not pending else max(0.0, min(0.05, pending[0][0] - time.monotonic()))
            for event, _ in sel.select(timeout):
                sock = event.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data, source = sock.recvfrom(65535)
                except OSError:
                    continue
                if sock is self._udp:
                    self._count(data)
                    pending.append((time.monotonic() + self.delay, data, source))
                else:
                    try:
                        self._udp.sendto(data, event.data)
                    except OSError:
                        pass
                    sel.unregister(sock)
                    opened.pop(sock, None)
                    sock.close()
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, data, client = pending.pop(0)
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    upstream.sendto(data, (self.backend, self.port))
                except OSError:
                    upstream.close()
                    continue
                sel.register(upstream, selectors.EVENT_READ, client)
                opened[upstream] = now
            for sock, since in list(opened.items()):
                if now - since > 10:  # the backend never answered: forget the query
                    sel.unregister(sock)
                    del opened[sock]
                    sock.close()
        for sock in opened:
            sock.close()
        sel.close()

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._tcp.accept()
            except OSError:
                continue
            threading.Thread(target=self._relay_tcp, args=(client,), daemon=True).start()

    def _relay_tcp(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            with client, socket.create_connection((self.backend, self.port), timeout=10) as upstream:
                while True:
                    header = _read(client, 2)
                    if header is None:
                        return
                    (length,) = struct.unpack("!H", header)
                    body = _read(client, length)
                    if body is None:
                        return
                    self._count(body)
                    if self.delay:
                        time.sleep(self.delay)
                    upstream.sendall(header + body)
                    reply_header = _read(upstream, 2)
                    if reply_header is None:
                        return
                    reply = _read(upstream, struct.unpack("!H", reply_header)[0])
                    if reply is None:
                        return
                    client.sendall(reply_header + reply)
        except OSError:
            return


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
