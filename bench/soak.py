"""Soak test: dnsd under a steady mixed load with cluster churn, watching for lost queries and memory growth.

Run: `.venv/bin/python bench/soak.py` (options: `--duration S` (600), `--rate Q` (5000 queries/s),
`--services N` (2000), `--churn-interval S` (1), `--churn-changes N` (5), `--garbage-share F` (0.05),
`--flood-share F` (0)). A random-subdomain flood: `--flood-share 1 --duration 300` adds one never-seen name
per valid query.
Not a test: it prints a markdown summary, writes it to bench/results/soak.md (raw figures in soak.json)
and gives a verdict on memory.

Why: a long-running server that leaks a little per query, per reload or per cache entry looks fine in a
ten-second benchmark and is killed by its memory limit after a week. This runs dnsd the way a cluster
runs it, for long enough to see a trend:
- dnsd serves a manifests file of `--services` services and recurses (forward mode, DNS64 on) to a local
  Knot that holds A-only names (TTL `--upstream-ttl`, 60 s by default, so cache entries expire and are
  fetched again during the run) and answers NXDOMAIN for others;
- a separate load process pinned to core 1 (dnsd has core 0 to itself) sends `--rate` queries per
  second at evenly spaced times (open loop, plain UDP sockets, a 2 s timeout) in a fixed mix: 45 % zone
  names (AAAA of services, SRV, headless, names that do not exist), 15 % A of upstream names (cached
  recursion), 25 % AAAA of the same A-only names (DNS64), 10 % upstream names that do not exist
  (NXDOMAIN, negatively cached), half of them with EDNS; plus `--garbage-share` garbage packets from
  a separate socket (random bytes, responses, truncated questions) that dnsd should drop or answer FORMERR;
- every `--churn-interval` seconds the manifests file is replaced (a new inode, as a ConfigMap volume
  does) with `--churn-changes` services moved to new addresses and one short-lived service added and
  removed; after each rewrite one changed name is polled until it answers with its new address, which
  gives the change-to-answer delay (dnsd polls the file every 0.25 s);
- with `--flood-share F`, F never-seen names per valid query on top (`r<12 hex>.ns<k>.svc.Z AAAA`, each
  name used once, under existing namespaces: NXDOMAIN), as a random-subdomain attack sends them;
- every `--sample-interval` seconds (10) dnsd's RSS (of the server process itself: the short-lived child
  that parses a large manifests file comes and goes and would only add noise) and CPU use are sampled,
  with dnsd's own count of answers by path (`dnsd_fast_path_answers_total` by kind, and the rest, which
  took the slow path): during a flood the "stored" rate must stay the known names' rate, i.e. the
  names people ask for keep their pre-encoded answers; and the load process keeps per-window counts
  and latency percentiles.

Reported: queries sent, answered, lost (no answer within 2 s) and answered with an unexpected rcode, by
kind, garbage excluded; latency p50/p99/p99.9/max overall and per window; the RSS time series; the
change-to-answer delays. Verdict: RSS does not grow after warm-up, i.e. the mean of the last third of
the samples is at most the mean of the second sixth plus max(5 %, 3 MB).
Loopback only; the load is bounded by `--rate` and `--duration`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import random
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab
from lab import (
    HOST,
    MB,
    RESULTS,
    UPSTREAM_ZONE,
    ZONE,
    Cluster,
    Dnsd,
    Knot,
    Upstream,
    ask,
    cpu_seconds,
    machine,
    percentile,
    write_atomically,
)

#: Kinds of queries, the rcode each should get, and whether it must carry answer records.
KINDS: dict[str, tuple[int, bool]] = {
    "zone": (dns.rcode.NOERROR, False),
    "zone-nx": (dns.rcode.NXDOMAIN, False),
    "recursion-a": (dns.rcode.NOERROR, True),
    "dns64-aaaa": (dns.rcode.NOERROR, True),
    "upstream-nx": (dns.rcode.NXDOMAIN, False),
    "flood": (dns.rcode.NXDOMAIN, False),
}
#: Share of each kind among the valid queries (garbage comes on top, from its own socket).
MIX = {"zone": 0.40, "zone-nx": 0.05, "recursion-a": 0.15, "dns64-aaaa": 0.25, "upstream-nx": 0.10,
       "zone-srv": 0.05}
SOCKETS = 16
#: Answer paths reported per sample: the kinds of dnsd_fast_path_answers_total, then the slow path.
PATHS = ("stored", "template", "cached", "slow")
TIMEOUT = 2.0


# ---- the load process ---------------------------------------------------------------------------------


def build_queries(cluster: Cluster, upstream: Upstream, count: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """`count` (kind, wire) pairs in the MIX proportions, shuffled; IDs are set at send time."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for k in range(count):
        roll = rng.random()
        edns = 0 if k % 2 else -1
        acc = 0.0
        kind = "zone"
        for name, share in MIX.items():
            acc += share
            if roll < acc:
                kind = name
                break
        if kind == "zone":
            qname, qtype = cluster.service_name(rng.randrange(cluster.services)), "AAAA"
        elif kind == "zone-srv":
            kind = "zone"
            if rng.random() < 0.5:
                qname, qtype = f"_http._tcp.{cluster.service_name(rng.randrange(cluster.services))}", "SRV"
            else:
                qname, qtype = f"pod-1.{cluster.headless_name(rng.randrange(cluster.headless_count))}", "AAAA"
        elif kind == "zone-nx":
            qname, qtype = f"nosuch{rng.randrange(10_000)}.ns{rng.randrange(cluster.namespaces)}.svc.{ZONE}", "AAAA"
        elif kind == "recursion-a":
            qname, qtype = upstream.host(rng.randrange(upstream.names)), "A"
        elif kind == "dns64-aaaa":
            qname, qtype = upstream.host(rng.randrange(upstream.names)), "AAAA"
        else:
            qname, qtype = upstream.missing(rng.randrange(upstream.names)), rng.choice(("A", "AAAA"))
        out.append((kind, dns.message.make_query(qname, qtype, use_edns=edns).to_wire()))
    return out


class Flood:
    """Never-seen names for the flood: a query per namespace, its 12 hex digits rewritten for each name."""

    def __init__(self, cluster: Cluster) -> None:
        self.templates = [dns.message.make_query(f"r{0:012x}.ns{k}.svc.{ZONE}", "AAAA", use_edns=0).to_wire()
                          for k in range(cluster.namespaces)]
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        template = self.templates[self.count % len(self.templates)]
        return template[:14] + f"{self.count * 0x9E3779B1 & 0xFFFFFFFFFFFF:012x}".encode() + template[26:]


def garbage(rng: random.Random, valid: list[tuple[str, bytes]]) -> bytes:
    """A packet dnsd should drop (or answer FORMERR): noise, a response, a cut question, a short header."""
    roll = rng.randrange(4)
    if roll == 0:
        return rng.randbytes(rng.randrange(1, 120))
    template = bytearray(rng.choice(valid)[1])
    template[0:2] = rng.randbytes(2)
    if roll == 1:
        template[2] |= 0x80  # QR set: a response, never answered
        return bytes(template)
    if roll == 2:
        return bytes(template[: rng.randrange(12, len(template) - 1)])  # question cut short
    return bytes(template[: rng.randrange(0, 12)])  # not even a header


@dataclass
class Window:
    """What the load process saw in one sampling window."""

    start: float
    sent: int = 0
    answered: int = 0
    lost: int = 0
    unexpected: int = 0
    latencies: array[float] = field(default_factory=lambda: array("f"))

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1e3 if ordered else math.nan

        return {"start": self.start, "sent": self.sent, "answered": self.answered, "lost": self.lost,
                "unexpected": self.unexpected, "p50_ms": pick(50), "p99_ms": pick(99), "p999_ms": pick(99.9),
                "max_ms": pick(100)}


def load(port: int, queries: list[tuple[str, bytes]], rate: float, duration: float, garbage_share: float,
         window_s: float, cpus: str, out: Connection, flood: Flood | None = None, flood_share: float = 0.0) -> None:
    """In a child process: the open-loop load; sends its figures through `out` at the end."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    rng = random.Random(11)
    socks = []
    for _ in range(SOCKETS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        sock.connect((HOST, port))
        sock.setblocking(False)
        socks.append(sock)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk.connect((HOST, port))
    junk.setblocking(False)
    poller = select.epoll()
    by_fd = {}
    for index, sock in enumerate(socks):
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = index
    poller.register(junk.fileno(), select.EPOLLIN)

    kinds = [*KINDS]
    sent = dict.fromkeys(kinds, 0)
    answered = dict.fromkeys(kinds, 0)
    lost = dict.fromkeys(kinds, 0)
    unexpected = dict.fromkeys(kinds, 0)
    rcodes: dict[str, dict[str, int]] = {k: {} for k in kinds}
    garbage_sent = garbage_answered = late = send_errors = behind = 0
    latencies: array[float] = array("f")
    windows: list[Window] = []
    outstanding: dict[tuple[int, int], tuple[float, str, Window]] = {}
    next_id = [rng.randrange(65536) for _ in range(SOCKETS)]

    interval = 1.0 / (rate * (1 + flood_share))
    flood_every = (1 + flood_share) / flood_share if flood_share else 0.0
    flood_due = flood_every
    begin = time.perf_counter()
    end = begin + duration
    due = begin
    position = 0
    window = Window(0.0)
    windows.append(window)
    next_window = begin + window_s
    next_expiry = begin + 0.1
    while True:
        now = time.perf_counter()
        if now >= end and not outstanding:
            break
        if now >= next_window:
            window = Window(next_window - begin)
            windows.append(window)
            next_window += window_s
        # send everything that is due (catching up at most 0.5 s: beyond that the sender was starved)
        if now < end:
            if now - due > 0.5:
                skipped = int((now - due) / interval)
                behind += skipped
                due += skipped * interval
            while due <= now and due < end:
                if rng.random() < garbage_share:
                    with contextlib.suppress(OSError):
                        junk.send(garbage(rng, queries))
                        garbage_sent += 1
                flood_due -= 1
                if flood is not None and flood_due <= 0:
                    flood_due += flood_every
                    kind, wire = "flood", flood.next()
                else:
                    kind, wire = queries[position]
                    position = (position + 1) % len(queries)
                index = position % SOCKETS
                qid = next_id[index] = (next_id[index] + 1) & 0xFFFF
                key = (index, qid)
                if key in outstanding:  # an ID still waiting after 65,536 sends on this socket: skip it
                    qid = next_id[index] = (qid + 1) & 0xFFFF
                    key = (index, qid)
                try:
                    socks[index].send(qid.to_bytes(2, "big") + wire[2:])
                except OSError:
                    send_errors += 1
                    due += interval
                    continue
                outstanding[key] = (time.perf_counter(), kind, window)
                sent[kind] += 1
                window.sent += 1
                due += interval
        # expire queries that waited too long
        if now >= next_expiry:
            next_expiry = now + 0.1
            limit = now - TIMEOUT
            for key in [k for k, v in outstanding.items() if v[0] < limit]:
                _, kind, _w = outstanding.pop(key)
                lost[kind] += 1
                window.lost += 1
        wait = max(0.0, min(due, next_expiry) - time.perf_counter()) if now < end else 0.05
        for fd, _event in poller.poll(wait):
            if fd == junk.fileno():
                while True:
                    try:
                        junk.recv(65535)
                    except BlockingIOError:
                        break
                    garbage_answered += 1
                continue
            index = by_fd[fd]
            sock = socks[index]
            while True:
                try:
                    reply = sock.recv(65535)
                except BlockingIOError:
                    break
                except OSError:
                    break
                received = time.perf_counter()
                if len(reply) < 12:
                    continue
                entry = outstanding.pop((index, int.from_bytes(reply[0:2], "big")), None)
                if entry is None:
                    late += 1
                    continue
                sent_at, kind, _w = entry
                latency = received - sent_at
                latencies.append(latency)
                window.latencies.append(latency)
                answered[kind] += 1
                window.answered += 1
                rcode = reply[3] & 0x0F
                name = dns.rcode.to_text(dns.rcode.Rcode(rcode)) if rcode < 11 else str(rcode)
                rcodes[kind][name] = rcodes[kind].get(name, 0) + 1
                want_rcode, want_answer = KINDS[kind]
                if rcode != want_rcode or (want_answer and reply[6:8] == b"\0\0"):
                    unexpected[kind] += 1
                    window.unexpected += 1
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        "elapsed": time.perf_counter() - begin,
        "sent": sent, "answered": answered, "lost": lost, "unexpected": unexpected, "rcodes": rcodes,
        "garbage_sent": garbage_sent, "garbage_answered": garbage_answered, "late": late,
        "send_errors": send_errors, "behind": behind,
        "p50_ms": percentile(ordered, 50) * 1e3, "p99_ms": percentile(ordered, 99) * 1e3,
        "p999_ms": percentile(ordered, 99.9) * 1e3, "max_ms": (ordered[-1] * 1e3) if ordered else math.nan,
        "windows": [w.summary() for w in windows],
    }
    # After warm-up: without the first window, where every recursive name is fetched for the first time
    # (the load starts at full rate on a cold cache), so that the steady state has a figure of its own.
    steady = sorted(x for w in windows[1:] for x in w.latencies)
    result.update({"steady_p50_ms": percentile(steady, 50) * 1e3, "steady_p99_ms": percentile(steady, 99) * 1e3,
                   "steady_p999_ms": percentile(steady, 99.9) * 1e3,
                   "steady_max_ms": (steady[-1] * 1e3) if steady else math.nan})
    out.send(result)
    out.close()


# ---- the soak -----------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss: int
    cpu: float  # share of one core used since the previous sample
    paths: dict[str, float] = field(default_factory=dict)  # answers per second since the previous sample


def answer_paths(dnsd: Dnsd) -> dict[str, float]:
    """dnsd's answer counts so far by path: fast-path kinds, and "slow" (everything else)."""
    text = dnsd.metrics()
    counts: dict[str, float] = {"stored": 0.0, "template": 0.0, "cached": 0.0}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dnsd_fast_path_answers_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("dnsd_queries_total{"):
            total += float(line.rsplit(" ", 1)[1])
    counts["slow"] = total - sum(counts.values())
    return counts


def churn(cluster: Cluster, generations: dict[int, int], tick: int, changes: int, rng: random.Random,
          path: Path) -> tuple[str, str]:
    """Rewrite the manifests file with `changes` services moved; (name, new address) of one moved service."""
    moved = rng.sample(range(cluster.services), changes)
    for i in moved:
        generations[i] = generations.get(i, 0) + 1
    # one short-lived extra service: added on odd ticks, gone on even ones
    text = cluster.manifests(generations)
    if tick % 2:
        text += "\n".join([
            "- apiVersion: v1", "  kind: Service", "  metadata:", f"    name: churn{tick}", "    namespace: ns0",
            "  spec:", f'    clusterIPs: ["fd00:10:97::{tick % 65536:x}"]',
        ]) + "\n"
    write_atomically(path, text)
    return cluster.service_name(moved[0]), cluster.cluster_ip(moved[0], generations[moved[0]])


def churn_loop(port: int, cluster: Cluster, path: Path, args: argparse.Namespace, delays: list[float],
               stop: threading.Event) -> None:
    """In a thread: rewrite the manifests every churn interval and time how soon dnsd answers the change.

    The thread runs at nice 10: writing 2,000 Services of YAML takes tens of milliseconds of CPU on
    the load generator's core, and at the same priority it delayed the load process's reading of
    answers, which showed as dnsd's latency (the p99.9 once blamed on reloads).
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # this thread only (Linux)
    generations: dict[int, int] = {}
    rng = random.Random(5)
    tick = 0
    next_churn = time.monotonic() + args.churn_interval
    while not stop.wait(max(0.0, next_churn - time.monotonic())):
        tick += 1
        qname, address = churn(cluster, generations, tick, args.churn_changes, rng, path)
        delay = wait_change(port, qname, address, limit=max(2.0, args.churn_interval * 5), stop=stop)
        if not (stop.is_set() and delay != delay):  # a wait cut short by the end of the run is no figure
            delays.append(delay)
        next_churn = max(next_churn + args.churn_interval, time.monotonic())


def wait_change(port: int, qname: str, address: str, limit: float, stop: threading.Event | None = None) -> float:
    """Seconds until `qname` answers `address` (polled every 10 ms); NaN after `limit` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < limit and not (stop is not None and stop.is_set()):
        try:
            reply = ask(port, qname, "AAAA", timeout=0.5)
            if any(rd.to_text() == address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA
                   for rd in rrset):
                return time.monotonic() - started
        except (dns.exception.DNSException, OSError):
            pass  # a timeout or a bad answer: ask again
        time.sleep(0.01)
    return math.nan


def rss_verdict(samples: list[Sample], duration: float) -> tuple[bool | None, str]:
    """RSS of the last third vs the second sixth of the run (after warm-up)."""
    second_sixth = [s.rss for s in samples if duration / 6 <= s.t < duration / 3]
    last_third = [s.rss for s in samples if s.t >= duration * 2 / 3]
    if not second_sixth or not last_third:
        return None, "too few samples for a verdict (run longer than 6 sample intervals)"
    early = sum(second_sixth) / len(second_sixth)
    late = sum(last_third) / len(last_third)
    allowed = max(early * 0.05, 3 * MB)
    growth = late - early
    text = (f"mean RSS {early / MB:.1f} MB in the second sixth, {late / MB:.1f} MB in the last third: "
            f"{growth / MB:+.1f} MB (allowed +{allowed / MB:.1f} MB)")
    return growth <= allowed, text


def fmt_ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def report(args: argparse.Namespace, result: dict[str, Any], samples: list[Sample], delays: list[float],
           verdict: tuple[bool | None, str], dropped: float, started: float) -> str:
    kinds = [*KINDS]
    sent = sum(result["sent"].values())
    lost = sum(result["lost"].values())
    unexpected = sum(result["unexpected"].values())
    out = ["# dnsd soak test", ""]
    out.append(f"- machine: {machine()}; load average at the end {Path('/proc/loadavg').read_text().split()[0]}")
    out.append(f"- dnsd: {args.services:,} services (+{Cluster(args.services).headless_count} headless) from a "
               f"manifests file, `--recursion forward` to a local Knot ({args.services:,} A-only names, TTL "
               f"{args.upstream_ttl} s), DNS64 on, `--workers {args.workers}`, core {args.server_cpus}")
    out.append(f"- load: {args.rate:,.0f} queries/s for {args.duration:g} s from one process on core "
               f"{args.load_cpus} (open loop, {SOCKETS} sockets, {TIMEOUT:g} s timeout), plus "
               f"{args.garbage_share:.0%} garbage; churn: {args.churn_changes} services moved and one added or "
               f"removed every {args.churn_interval:g} s")
    if args.flood_share:
        out.append(f"- flood: {args.flood_share:g} never-seen name per valid query on top "
                   f"({args.rate * args.flood_share:,.0f} queries/s, `r<hex>.ns<k>.svc.{ZONE} AAAA`, each name once)")
    out.append(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}, took {time.monotonic() - started:.0f} s")
    out.append("")
    out.append("| kind | sent | answered | lost | unexpected rcode | rcodes |")
    out.append("|---|---:|---:|---:|---:|---|")
    for kind in kinds:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(result["rcodes"][kind].items()))
        out.append(f"| {kind} | {result['sent'][kind]:,} | {result['answered'][kind]:,} | {result['lost'][kind]:,} | "
                   f"{result['unexpected'][kind]:,} | {codes} |")
    out.append(f"| all valid | {sent:,} | {sum(result['answered'].values()):,} | {lost:,} "
               f"({lost / max(sent, 1):.3%}) | {unexpected:,} | |")
    out.append(f"| garbage | {result['garbage_sent']:,} | {result['garbage_answered']:,} answered | | | "
               f"dnsd counted {dropped:,.0f} dropped packets |")
    out.append("")
    achieved = sent / result["elapsed"] if result["elapsed"] else math.nan
    out.append(f"Latency of answered queries: p50 {fmt_ms(result['p50_ms'])} ms, p99 {fmt_ms(result['p99_ms'])} ms, "
               f"p99.9 {fmt_ms(result['p999_ms'])} ms, max {fmt_ms(result['max_ms'])} ms; achieved "
               f"{achieved:,.0f} queries/s (sender fell behind by {result['behind']} queries; {result['late']} "
               "answers came after their timeout).")
    out.append(f"After warm-up (the first {args.sample_interval:g} s left out): "
               f"p50 {fmt_ms(result['steady_p50_ms'])} ms, p99 {fmt_ms(result['steady_p99_ms'])} ms, "
               f"p99.9 {fmt_ms(result['steady_p999_ms'])} ms, "
               f"max {fmt_ms(result['steady_max_ms'])} ms.")
    good = [d for d in delays if d == d]
    if delays:
        out.append(f"Change to answer ({len(delays)} rewrites, {len(delays) - len(good)} not seen within the "
                   f"limit): median {fmt_ms(percentile(good, 50) * 1e3)} ms, p99 "
                   f"{fmt_ms(percentile(good, 99) * 1e3)} ms, max {fmt_ms(max(good, default=math.nan) * 1e3)} ms.")
    out.append("")
    ok, text = verdict
    out.append(f"**Memory verdict: {'n/a' if ok is None else ('PASS' if ok else 'FAIL')}**: {text}.")
    out.append(f"**Lost queries (garbage excluded): {lost:,}**; unexpected rcodes: {unexpected:,}.")
    out.append("")
    out.append("Answers per second by path, from dnsd's `dnsd_fast_path_answers_total` (stored: a pre-encoded "
               "answer for that name; template: NXDOMAIN/NODATA from the zone's template; cached: a cached "
               "recursive answer) and `dnsd_queries_total` (the rest took the slow path).")
    out.append("")
    out.append("| t (s) | RSS MB | dnsd CPU | sent | lost | unexpected | p50 ms | p99 ms | p99.9 ms | max ms | "
               "stored/s | template/s | cached/s | slow/s |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    windows = {round(w["start"] / args.sample_interval): w for w in result["windows"]}
    for sample in samples:  # each sample shows the last window that ended before it
        w = windows.get(int(sample.t // args.sample_interval) - 1, {})
        out.append(f"| {sample.t:.0f} | {sample.rss / MB:.1f} | {sample.cpu:.0%} | {w.get('sent', 0):,} | "
                   f"{w.get('lost', 0):,} | {w.get('unexpected', 0):,} | {fmt_ms(w.get('p50_ms', math.nan))} | "
                   f"{fmt_ms(w.get('p99_ms', math.nan))} | {fmt_ms(w.get('p999_ms', math.nan))} | "
                   f"{fmt_ms(w.get('max_ms', math.nan))} | "
                   + " | ".join(f"{sample.paths.get(k, math.nan):,.0f}" for k in PATHS) + " |")
    out.append("")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with contextlib.suppress(OSError):  # this process is part of the load side
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-soak-"))
    cluster = Cluster(args.services)
    upstream = Upstream(args.services, ttl=args.upstream_ttl)
    manifests = tmp / "cluster.yaml"
    manifests.write_text(cluster.manifests())
    queries = build_queries(cluster, upstream, 50_000)
    flood = Flood(cluster) if args.flood_share else None
    print(f"machine: {machine()}; files in {tmp}", flush=True)

    origin = Knot("knot-upstream", zones={UPSTREAM_ZONE: upstream.zone_file()}, cpus=args.load_cpus).start()
    dnsd: Dnsd | None = None
    samples: list[Sample] = []
    delays: list[float] = []
    result: dict[str, Any] = {}
    dropped = math.nan
    try:
        dnsd = Dnsd("dnsd", manifests=manifests, probe=cluster.last_name, recursion="forward",
                    forwarder=origin.port, workers=args.workers, cpus=args.server_cpus)
        dnsd.start()
        print(f"dnsd pid {dnsd.pid} on port {dnsd.port}, RSS {dnsd.rss() / MB:.1f} MB; "
              f"{args.rate:g} q/s for {args.duration:g} s", flush=True)
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        loader = context.Process(target=load, args=(dnsd.port, queries, args.rate, args.duration,
                                                    args.garbage_share, args.sample_interval, args.load_cpus, sender,
                                                    flood, args.flood_share))
        loader.start()
        sender.close()
        begin = time.monotonic()
        stop = threading.Event()
        churner = threading.Thread(target=churn_loop, args=(dnsd.port, cluster, manifests, args, delays, stop),
                                   daemon=True)
        if args.churn_interval > 0:
            churner.start()
        next_sample = begin + args.sample_interval
        last_cpu = cpu_seconds(dnsd.pid)
        last_t = begin
        last_paths = answer_paths(dnsd)
        try:
            while time.monotonic() < begin + args.duration:
                if dnsd.proc is not None and dnsd.proc.poll() is not None:
                    raise RuntimeError(f"dnsd exited with {dnsd.proc.returncode}:\n{dnsd.log_tail()}")
                time.sleep(max(0.0, min(next_sample, begin + args.duration) - time.monotonic()))
                now = time.monotonic()
                if now >= next_sample:
                    cpu = cpu_seconds(dnsd.pid)
                    paths = answer_paths(dnsd)
                    rates = {k: (v - last_paths.get(k, 0.0)) / (now - last_t) for k, v in paths.items()}
                    samples.append(Sample(now - begin, lab.rss_bytes(dnsd.pid), (cpu - last_cpu) / (now - last_t),
                                          rates))
                    last_cpu, last_t, last_paths = cpu, now, paths
                    seen = [d for d in delays if d == d]
                    print(f"  t={now - begin:5.0f} s  RSS {samples[-1].rss / MB:6.1f} MB  CPU {samples[-1].cpu:4.0%}  "
                          f"change-to-answer median so far {percentile(seen, 50) * 1e3:.0f} ms", flush=True)
                    next_sample += args.sample_interval
        finally:
            stop.set()
            if churner.is_alive():
                churner.join(10)
        if receiver.poll(args.duration + 60):
            result = receiver.recv()
        loader.join(30)
        now = time.monotonic()
        if now - last_t > args.sample_interval / 2:
            cpu = cpu_seconds(dnsd.pid)
            samples.append(Sample(now - begin, lab.rss_bytes(dnsd.pid), (cpu - last_cpu) / (now - last_t)))
        dropped = dnsd.metric("dnsd_dropped_packets_total")
    finally:
        if dnsd is not None:
            dnsd.stop()
        origin.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if not result:
        print("the load process sent no result", file=sys.stderr)
        return 1
    verdict = rss_verdict(samples, args.duration)
    text = report(args, result, samples, delays, verdict, dropped, started)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text(text)
    raw = {"args": vars(args), "load": result, "delays_s": delays,
           "samples": [{"t": s.t, "rss_bytes": s.rss, "cpu": s.cpu} for s in samples]}
    (RESULTS / "soak.json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"written to {RESULTS / 'soak.md'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=5000.0, help="valid queries per second (default 5000)")
    parser.add_argument("--services", type=int, default=2000, help="services in the manifests file (default 2000)")
    parser.add_argument("--upstream-ttl", type=int, default=60, help="TTL of the upstream names (default 60)")
    parser.add_argument("--churn-interval", type=float, default=1.0, help="seconds between rewrites (0: none)")
    parser.add_argument("--churn-changes", type=int, default=5, help="services moved per rewrite (default 5)")
    parser.add_argument("--garbage-share", type=float, default=0.05, help="garbage packets per valid query")
    parser.add_argument("--sample-interval", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--workers", type=int, default=1, help="dnsd --workers (default 1)")
    parser.add_argument("--flood-share", type=float, default=0.0,
                        help="never-seen names per valid query, on top of --rate (default 0: no flood)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of dnsd (default 0)")
    parser.add_argument("--load-cpus", default="1", help="CPU list of the load process and Knot (default 1)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    lab.SERVER_CPUS, lab.LOAD_CPUS = parsed.server_cpus, parsed.load_cpus
    sys.exit(main(parsed))
