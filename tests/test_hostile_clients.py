"""Hostile clients against the real process: the findings of issue 17's protocol review, each reproduced.

* TCP clients that send a burst of queries and never read the answers are reset (not closed, which
  would wait forever for the unsent answers) one idle timeout after they stop, so the connection
  limits cannot be held hostage, and dnsd's memory stays bounded meanwhile.
* RRL keeps NODATA per name, NXDOMAIN per zone and size-truncated answers apart, so that HTTPS
  queries (NODATA for most names) do not use up one shared bucket; slip answers carry an OPT when
  the query had EDNS, and the slip count is kept per bucket.
* Error answers (NOTIMP, FORMERR for QDCOUNT != 1) carry an OPT when the query had one.
* An answer that does not fit 65,535 bytes gets SERVFAIL over TCP (as Knot and BIND do), TC over UDP.
* The query parser reads only what a query may hold: a query stuffed with thousands of records gets
  FORMERR without being walked, and an OPT in the answer or authority section is a FORMERR.

Clients use distinct source addresses in 127.0.0.0/8 (all local on Linux), so "another client" and
"another network" are real without leaving loopback.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.dnsd_process import DnsdProcess

Z = "c2.k8s.ooo"
NAME = f"sample-service.default.svc.{Z}"


def headless_service(path: Path, name: str, endpoints: int) -> Path:
    """A manifests file with one headless Service of `endpoints` IPv6 endpoints (named pods, for SRV)."""
    addresses = "\n".join(
        f"  - addresses: ['2001:db8:44::{i:x}']\n    hostname: pod-{i}" for i in range(1, endpoints + 1)
    )
    path.write_text(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        "spec:\n  clusterIP: None\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n"
        f"addressType: IPv6\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{addresses}\n"
    )
    return path


def rss_kib(proc: DnsdProcess) -> int:
    """dnsd's resident set size in KiB, from /proc/<pid>/status."""
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 2:
        chunk = sock.recv(2 - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    (length,) = struct.unpack("!H", data)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return body


def drain(sock: socket.socket) -> int:
    """Read until the peer closes; the bytes read (raises ConnectionResetError on a reset)."""
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total


def tcp_answer(proc: DnsdProcess, source: str, timeout: float = 1.0,
               name: str = NAME) -> dns.message.Message | None:
    """One AAAA query over a fresh TCP connection from `source`; None when refused, reset or unanswered."""
    query = dns.message.make_query(name, "AAAA")
    try:
        with socket.create_connection((proc.host, proc.port), timeout=timeout,
                                      source_address=(source, 0)) as conn:
            conn.sendall(frame(query.to_wire()))
            return dns.message.from_wire(read_frame(conn))
    except (OSError, ConnectionError):
        return None


# ---- finding 1: TCP clients that stop reading --------------------------------------------------

IDLE = 2.0
BIG = f"big.default.svc.{Z}"  # 100 AAAA records: a 2.9 KB answer, so the burst asks for ~90 MB
HOSTILE_SOURCES = ("127.0.4.1", "127.0.4.2")
PER_CLIENT = 4
QUERIES_PER_CONNECTION = 30_000


def hostile_connections(proc: DnsdProcess) -> tuple[list[socket.socket], list[int]]:
    """Connections with a tiny receive buffer that each send a burst of queries and never read.

    All of them send at once (round robin, non-blocking), until the server stops reading from each
    (our send stays blocked): by then the answers asked for overflow both sockets' buffers by far.
    Returns the sockets (left open) and how many queries each got out.
    """
    socks = []
    for source in HOSTILE_SOURCES:
        for _ in range(PER_CLIENT):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
            sock.bind((source, 0))
            sock.settimeout(5)
            sock.connect((proc.host, proc.port))
            sock.setblocking(False)
    query = frame(dns.message.make_query(BIG, "AAAA", use_edns=0).to_wire())
    blob = query * QUERIES_PER_CONNECTION
    sent = [0] * len(socks)
    stalled_since: list[float | None] = [None] * len(socks)
    done = [False] * len(socks)
    while not all(done):
        progress = False
        for i, sock in enumerate(socks):
            if done[i]:
                continue
            try:
                sent[i] += sock.send(blob[sent[i] : sent[i] + 65536])
                stalled_since[i] = None
                progress = True
                done[i] = sent[i] >= len(blob)
            except BlockingIOError:
                now = time.monotonic()
                since = stalled_since[i]
                if since is None:
                    stalled_since[i] = now
                elif now - since > 0.3:
                    done[i] = True  # the server stopped reading: it is paused on our unread answers
        if not progress:
            time.sleep(0.01)
    return socks, [count // len(query) for count in sent]


def test_tcp_clients_that_stop_reading_are_reset_and_do_not_lock_others_out(tmp_path: Path) -> None:
    limits = ("--tcp-idle-timeout", str(IDLE), "--tcp-max-per-client", str(PER_CLIENT),
              "--tcp-max-connections", str(PER_CLIENT * len(HOSTILE_SOURCES)))
    manifests = headless_service(tmp_path / "big.yaml", "big", 100)
    with DnsdProcess("--zone", Z, "--source", f"file:{manifests}", "--recursion", "off", *limits,
                     http="127.0.0.1:0") as proc:
        first = tcp_answer(proc, "127.0.5.1", name=BIG)
        assert first is not None and len(first.answer[0]) == 100
        before = rss_kib(proc)
        hostile: list[socket.socket] = []
        try:
            hostile, sent = hostile_connections(proc)
            quiet = time.monotonic()  # every hostile client has gone quiet, its connection open
            assert min(sent) >= 5_000  # tens of MB of answers asked for in all, none read
            held = rss_kib(proc)
            assert proc.metric("dnsd_tcp_connections") == len(hostile)

            # Every slot is taken: a new client is reset at connect until the stalled ones are
            # aborted, one idle timeout after they went quiet; then it gets its answer.
            answered = None
            while answered is None and time.monotonic() < quiet + IDLE + 1.0:
                answered = tcp_answer(proc, "127.0.5.1", timeout=0.5, name=BIG)
            assert answered is not None, f"no TCP answer within {IDLE + 1.0}s of the hostile clients going quiet"
            assert answered.rcode() == dns.rcode.NOERROR and answered.answer

            # Every hostile connection goes, reset rather than closed: its client sees ECONNRESET
            # (the unread answers are discarded, in dnsd and in the kernel).
            deadline = time.monotonic() + 10 * IDLE
            while proc.metric("dnsd_tcp_connections") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.metric("dnsd_tcp_connections") == 0
            assert proc.metric("dnsd_limit_hits_total", limit="tcp_write_stalled") == len(hostile)
            for sock in hostile:
                sock.setblocking(True)
                sock.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    drain(sock)
        finally:
            for sock in hostile:
                sock.close()
        after = rss_kib(proc)
        # Bounded: a stalled connection holds at most the write high-water mark plus one read, so
        # eight of them cost a few MB, not the answers to everything they sent.
        assert held - before < 8 * 1024, (before, held)
        assert after - before < 8 * 1024, (before, after)
        assert tcp_answer(proc, "127.0.4.1", name=BIG) is not None  # the hostile addresses' slots are free again
