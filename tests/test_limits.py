"""Limits that keep dnsd answering under abuse, exceeded on purpose against the real process.

* Response rate limiting: a flood of one question from one /24 is cut to the configured rate, with
  every second limited response sent truncated (slip); another /24, another question, TCP and the
  clients allowed to recurse are not affected; random names in one zone share its NXDOMAIN bucket.
* TCP: connections beyond the per-client and total limits are closed at once, and a client that
  trickles a partial message is closed after the idle timeout even though bytes keep arriving.
* Recursion: queries in progress beyond the per-client and total limits get SERVFAIL at once
  (without waiting for the slow upstream), and the budget comes back when they complete.

Clients use distinct source addresses in 127.0.0.0/8 (all local on Linux), so "another network"
is real without leaving loopback.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.conftest import EXAMPLE_ARGS
from tests.dnsd_process import DnsdProcess

Z = "c2.k8s.ooo"
NAME = f"sample-service.default.svc.{Z}"
RATE = 10


def burst(proc: DnsdProcess, source: str, names: list[str], qtype: str = "AAAA",
          rd: bool = False) -> tuple[int, int, int]:
    """Send every query at once from `source`; (full answers, truncated answers, unanswered)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i, name in enumerate(names):
            query = dns.message.make_query(name, qtype, use_edns=False, id=i)
            if not rd:
                query.flags &= ~dns.flags.RD
            sock.sendto(query.to_wire(), (proc.host, proc.port))
        full = truncated = 0
        sock.settimeout(0.5)
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                break
            reply = dns.message.from_wire(data)
            if reply.flags & dns.flags.TC:
                assert reply.answer == [] and reply.question[0].name.to_text().rstrip(".") in names
                truncated += 1
            else:
                full += 1
    return full, truncated, len(names) - full - truncated


def at_second_start() -> None:
    """Wait until just after a whole second of the monotonic clock (dnsd's RRL windows use it)."""
    while time.monotonic() % 1 > 0.05:
        time.sleep(0.01)


@pytest.fixture(scope="module")
def limited() -> Iterator[DnsdProcess]:
    with DnsdProcess(*EXAMPLE_ARGS, "--rrl-responses-per-second", str(RATE), "--rrl-slip", "2",
                     "--allow-recursion", "127.0.0.1/32", http="127.0.0.1:0") as proc:
        yield proc


def test_rrl_limits_one_network_and_slips_truncated_answers(limited: DnsdProcess) -> None:
    at_second_start()
    full, truncated, lost = burst(limited, "127.0.1.7", [NAME] * 200)
    assert RATE <= full <= 2 * RATE  # one window, or two if the burst straddled a second
    limited_count = 200 - full
    assert abs(truncated - limited_count / 2) <= 1  # slip 2: every second limited response is TC
    assert lost == limited_count - truncated
    assert limited.metric("dnsd_rrl_responses_total", action="slipped") >= truncated
    assert limited.metric("dnsd_rrl_responses_total", action="dropped") >= lost

    # The same second, the same network: another question has its own bucket, TCP is never
    # limited; another /24 and a client allowed to recurse are answered in full.
    assert limited.query(f"frontend.shop.svc.{Z}", "AAAA", host="127.0.0.1").rcode() == dns.rcode.NOERROR
    with socket.create_connection((limited.host, limited.port), source_address=("127.0.1.7", 0)) as conn:
        assert tcp_works(conn)
    assert burst(limited, "127.0.2.7", [NAME] * RATE) == (RATE, 0, 0)
    assert burst(limited, "127.0.0.1", [NAME] * 100) == (100, 0, 0)


def test_rrl_puts_random_names_in_one_negative_bucket(limited: DnsdProcess) -> None:
    at_second_start()
    names = [f"nosuch{i}.default.svc.{Z}" for i in range(100)]
    full, truncated, lost = burst(limited, "127.0.3.7", names)
    assert full <= 2 * RATE and truncated >= 30 and lost >= 30


# ---- TCP ------------------------------------------------------------------------------------

def tcp_works(conn: socket.socket) -> bool:
    """Send one query on an open connection; True when an answer comes back."""
    query = dns.message.make_query(NAME, "AAAA").to_wire()
    try:
        conn.sendall(struct.pack("!H", len(query)) + query)
        conn.settimeout(2)
        header = conn.recv(2)
        if len(header) < 2:
            return False
        length = struct.unpack("!H", header)[0]
        data = b""
        while len(data) < length:
            chunk = conn.recv(length - len(data))
            if not chunk:
                return False
            data += chunk
    except OSError:
        return False
    return dns.message.from_wire(data).rcode() == dns.rcode.NOERROR


def test_tcp_connection_limits_per_client_and_total() -> None:
    with DnsdProcess(*EXAMPLE_ARGS, "--tcp-max-per-client", "3", "--tcp-max-connections", "5",
                     http="127.0.0.1:0") as proc:
        def connect(source: str) -> socket.socket:
            return socket.create_connection((proc.host, proc.port), timeout=2, source_address=(source, 0))

        first = [connect("127.0.1.9") for _ in range(3)]
        assert all(tcp_works(c) for c in first)
        extra = connect("127.0.1.9")
        assert not tcp_works(extra)  # a fourth from the same client: closed at once
        others = [connect("127.0.2.9") for _ in range(2)]
        assert all(tcp_works(c) for c in others)
        over_total = connect("127.0.3.9")
        assert not tcp_works(over_total)  # five open in total
        assert proc.metric("dnsd_limit_hits_total", limit="tcp_per_client") == 1
        assert proc.metric("dnsd_limit_hits_total", limit="tcp_connections") == 1
        assert proc.metric("dnsd_tcp_connections") == 5

        first.pop().close()
        deadline = time.monotonic() + 3
        while True:  # the server notices the close asynchronously
            again = connect("127.0.3.9")
            if tcp_works(again) or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.05)
        assert tcp_works(again)
        for conn in (*first, extra, *others, over_total, again):
            conn.close()


def test_tcp_trickling_client_is_closed_after_the_idle_timeout() -> None:
    with DnsdProcess(*EXAMPLE_ARGS, "--tcp-idle-timeout", "0.5") as proc:
        query = dns.message.make_query(NAME, "AAAA").to_wire()
        framed = struct.pack("!H", len(query)) + query
        with socket.create_connection((proc.host, proc.port), timeout=3) as slow:
            started = time.monotonic()
            closed_after = None
            for i in range(len(framed) - 1):  # never completes the message
                try:
                    slow.sendall(framed[i : i + 1])
                    slow.settimeout(0.15)
                    if slow.recv(1) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            assert closed_after is not None and closed_after < 2.0

        with socket.create_connection((proc.host, proc.port), timeout=3) as steady:
            for _ in range(6):  # complete queries every 0.3 s keep the connection open past 0.5 s
                assert tcp_works(steady)
                time.sleep(0.3)


# ---- recursion ------------------------------------------------------------------------------

class SlowUpstream:
    """A UDP name server on loopback that answers every A query with 192.0.2.1 after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SlowUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.RA
            response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.1"))
            timer = threading.Timer(self.delay, self._send, (response.to_wire(), addr))
            timer.daemon = True
            timer.start()

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:
            pass


def test_recursion_outstanding_limits_answer_servfail_at_once() -> None:
    with SlowUpstream(delay=1.0) as upstream, DnsdProcess(
        *EXAMPLE_ARGS[:-2], "--recursion", "forward", "--forwarder", f"127.0.0.1:{upstream.port}",
        "--no-dns64", "--recursion-max-per-client", "4", "--recursion-max-outstanding", "6",
        "--recursion-jostle-timeout", "0",  # never pushed out: the newest is refused (jostling: test_recursor_hostile)
        "--allow-recursion", "127.0.0.0/8", http="127.0.0.1:0",
    ) as proc:
        results: dict[str, list[tuple[int, float]]] = {}

        def ask_many(source: str, count: int) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((source, 0))
                started = time.monotonic()
                for i in range(count):
                    query = dns.message.make_query(f"n{i}.{source}.example", "A", id=i)
                    sock.sendto(query.to_wire(), (proc.host, proc.port))
                got: list[tuple[int, float]] = []
                sock.settimeout(3)
                while len(got) < count:
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        break
                    got.append((dns.message.from_wire(data).rcode(), time.monotonic() - started))
                results[source] = got

        first = threading.Thread(target=ask_many, args=("127.0.1.11", 10))
        first.start()
        time.sleep(0.2)  # let the first client's queries be admitted before the second's arrive
        ask_many("127.0.2.11", 5)
        first.join()

        one, two = results["127.0.1.11"], results["127.0.2.11"]
        assert len(one) == 10 and len(two) == 5
        # client one: 4 admitted (its own limit), 6 refused at once; client two: 2 admitted (6 in total)
        assert sorted(rcode for rcode, _ in one) == [0] * 4 + [dns.rcode.SERVFAIL] * 6
        assert sorted(rcode for rcode, _ in two) == [0] * 2 + [dns.rcode.SERVFAIL] * 3
        assert all(elapsed < 0.5 for rcode, elapsed in one + two if rcode == dns.rcode.SERVFAIL)
        assert all(elapsed >= 0.9 for rcode, elapsed in one + two if rcode == dns.rcode.NOERROR)
        assert upstream.received == 6
        assert proc.metric("dnsd_limit_hits_total", limit="recursion_per_client") == 6
        assert proc.metric("dnsd_limit_hits_total", limit="recursion_outstanding") == 3

        # the budget is back once they completed
        reply = proc.query("later.example", "A", rd=True, timeout=4)
        assert reply.rcode() == dns.rcode.NOERROR
