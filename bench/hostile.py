"""Hostile clients, measured: what stuffed queries and non-reading TCP clients cost everyone else.

Run: `.venv/bin/python bench/hostile.py` (options: `--duration S` (5) per latency phase, `--stuffed-rate Q`
(15 stuffed queries/s), `--probe-rate Q` (200 probe queries/s)). Not a test: it prints a markdown report.

Why: issue 17's review found that a 64 KB query carrying ~5,000 records was parsed in full (47-63 ms
each), so 15 such queries a second pushed another client's median latency from 0.2 ms to 67 ms; and that
TCP clients that send a burst and never read kept their connection slots (and ~1 MB of memory each)
forever. The tests show the fixed behaviour (`tests/test_hostile_clients.py`); this puts numbers on it:

- the parser's cost for a normal query and for 64 KB stuffed ones (answer, authority, additional), in
  process, best of several `timeit` rounds;
- a probe client's UDP latency (median, p99) alone and while another client sends `--stuffed-rate`
  64 KB stuffed queries a second over TCP (each answered FORMERR);
- the non-reading TCP scenario of the test (8 connections from two addresses, `--tcp-idle-timeout 2`,
  limits 4 per client and 8 in all, each sending 30,000 queries for a 2.9 KB answer and reading
  nothing): how long after they go quiet a new client gets an answer, what happened to the hostile
  connections, and dnsd's RSS before, while they are held, and after.

Loopback only, free ports, bounded load (the rates and the duration above).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dns.message  # noqa: E402

from dnsd import wire  # noqa: E402
from tests.conftest import EXAMPLE_ARGS  # noqa: E402
from tests.dnsd_process import DnsdProcess  # noqa: E402
from tests.test_hostile_clients import (  # noqa: E402  # the tests' scenario, measured instead of asserted
    BIG,
    HOSTILE_SOURCES,
    IDLE,
    PER_CLIENT,
    Z,
    _stuffed,
    drain,
    frame,
    headless_service,
    hostile_connections,
    read_frame,
    rss_kib,
    tcp_answer,
)

PROBE = f"sample-service.default.svc.{Z}"


def parse_costs() -> list[tuple[str, int, float]]:
    """(case, bytes, microseconds per parse_query call), best of 5 rounds of at least 0.2 s."""
    cases = [("normal query with EDNS", dns.message.make_query(PROBE, "AAAA", use_edns=0).to_wire())]
    for section, label in ((1, "answer"), (2, "authority"), (3, "additional")):
        cases.append((f"4,000 A records in the {label} section", _stuffed(section, 4_000, edns=True)))
    out = []
    for label, data in cases:
        timer = timeit.Timer(lambda data=data: wire.parse_query(data))
        number, _ = timer.autorange()  # calls enough for 0.2 s, whatever one costs
        best = min(timer.repeat(repeat=5, number=number))
        out.append((label, len(data), best / number * 1e6))
    return out


def probe_latency(proc: DnsdProcess, seconds: float, rate: float) -> list[float]:
    """Round-trip times (ms) of one UDP query every 1/rate s for `seconds`; lost ones are left out."""
    query = dns.message.make_query(PROBE, "AAAA", use_edns=0)
    query.flags = 0
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.connect((proc.host, proc.port))
        interval = 1 / rate
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        ident = 0
        while next_at < end:
            ident = (ident + 1) & 0xFFFF
            query.id = ident
            sent = time.perf_counter()
            sock.send(query.to_wire())
            try:
                while struct.unpack("!H", sock.recv(65535)[:2])[0] != ident:
                    pass
                rtts.append((time.perf_counter() - sent) * 1000)
            except TimeoutError:
                pass
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    return rtts


def stuff(proc: DnsdProcess, rate: float, stop: threading.Event, counts: list[int]) -> None:
    """Send `rate` 64 KB stuffed queries a second over one TCP connection, reading each FORMERR."""
    payload = frame(_stuffed(3, 4_000, edns=False))
    with socket.create_connection((proc.host, proc.port), timeout=5) as conn:
        next_at = time.monotonic()
        while not stop.is_set():
            conn.sendall(payload)
            reply = read_frame(conn)
            counts[reply[3] & 0xF] += 1
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))


def summary(rtts: list[float]) -> str:
    if not rtts:
        return "no answers"
    ordered = sorted(rtts)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered):.2f} / {p99:.2f} ms ({len(ordered)} answered)"


def stalled_tcp(workdir: Path) -> list[str]:
    """The test's non-reading scenario, timed and sized."""
    manifests = headless_service(workdir / "big.yaml", "big", 100)
    limits = ("--tcp-idle-timeout", str(IDLE), "--tcp-max-per-client", str(PER_CLIENT),
              "--tcp-max-connections", str(PER_CLIENT * len(HOSTILE_SOURCES)))
    lines = []
    with DnsdProcess("--zone", Z, "--source", f"file:{manifests}", "--recursion", "off", *limits,
                     http="127.0.0.1:0") as proc:
        before = rss_kib(proc)
        hostile, sent = hostile_connections(proc)
        quiet = time.monotonic()
        held = rss_kib(proc)
        answered_after = None
        while time.monotonic() < quiet + 30:
            if tcp_answer(proc, "127.0.5.1", timeout=0.5, name=BIG) is not None:
                answered_after = time.monotonic() - quiet
                break
        deadline = time.monotonic() + 30
        while proc.metric("dnsd_tcp_connections") and time.monotonic() < deadline:
            time.sleep(0.05)
        outcomes: dict[str, int] = {}
        for sock in hostile:
            sock.setblocking(True)
            sock.settimeout(5)
            try:
                drain(sock)
                outcome = "closed (FIN)"
            except ConnectionResetError:
                outcome = "reset"
            except TimeoutError:
                outcome = "still open"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            sock.close()
        after = rss_kib(proc)
        stalled = proc.metric("dnsd_limit_hits_total", limit="tcp_write_stalled")
    lines.append(f"- {len(hostile)} connections sent {min(sent):,}-{max(sent):,} queries each "
                 f"(answers of 2.9 KB, none read), then went quiet")
    lines.append(f"- a new client got an answer {answered_after:.2f} s after that (idle timeout {IDLE:g} s)"
                 if answered_after is not None else "- a new client got no answer within 30 s")
    lines.append(f"- hostile connections: {', '.join(f'{n} {k}' for k, n in sorted(outcomes.items()))}; "
                 f"dnsd_limit_hits_total{{limit=\"tcp_write_stalled\"}} {stalled:g}")
    lines.append(f"- dnsd RSS: {before / 1024:.1f} MB before, {held / 1024:.1f} MB while held, "
                 f"{after / 1024:.1f} MB after")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per latency phase (default 5)")
    parser.add_argument("--stuffed-rate", type=float, default=15.0, help="stuffed queries/s (default 15)")
    parser.add_argument("--probe-rate", type=float, default=200.0, help="probe queries/s (default 200)")
    args = parser.parse_args()

    print("# Hostile clients\n")
    print("| parse_query input | bytes | µs per call |\n|---|---:|---:|")
    for label, size, micros in parse_costs():
        print(f"| {label} | {size:,} | {micros:.1f} |")

    with DnsdProcess(*EXAMPLE_ARGS) as proc:
        alone = probe_latency(proc, args.duration, args.probe_rate)
        stop = threading.Event()
        counts = [0] * 16
        thread = threading.Thread(target=stuff, args=(proc, args.stuffed_rate, stop, counts))
        thread.start()
        try:
            loaded = probe_latency(proc, args.duration, args.probe_rate)
        finally:
            stop.set()
            thread.join(10)
    print(f"\nProbe latency (median / p99), {args.probe_rate:g} UDP queries/s:\n")
    print(f"- alone: {summary(alone)}")
    print(f"- with {args.stuffed_rate:g} stuffed 64 KB queries/s over TCP: {summary(loaded)}; "
          f"the stuffed ones got FORMERR {counts[1]} times, another rcode {sum(counts) - counts[1]} times")

    print("\nNon-reading TCP clients:\n")
    with tempfile.TemporaryDirectory(prefix="dnsd-hostile-") as workdir:
        for line in stalled_tcp(Path(workdir)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
