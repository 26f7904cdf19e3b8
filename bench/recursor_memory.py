"""Memory under a flood of attacker names: dnsd's RSS stays within its cache budgets plus an overhead.

Run (as root: the fake servers bind port 53 on 127.53.2.0/24): `.venv/bin/python bench/recursor_memory.py`
(options: `--huge N` (300) distinct names with a 3,800-record answer, asked over TCP; `--fat N` (500)
distinct zones whose referral carries 2,500 NS names; `--small N` (5000) distinct names with one
small answer, asked over UDP; `--parallel N` (8) queries in flight). Not a test: it prints a markdown
summary and writes it to bench/results/recursor_memory.md.

Why (issue 18, finding 3): the byte bounds used to count only the wire form of an answer (the parsed
records cost 1.8-16.5 times more), the fast-path store of recursive answers had only an entry bound
(a 3,800-record TCP answer cost 380 KB there), and the delegation store had no byte bound at all
(a 3,000-NS referral cost 0.9 MB): 3,000 attacker names took RSS to 2.4 GB. Now every store has a
byte budget: the answer cache 64 MiB, the delegation store 16 MiB, the fast-path store 32 MiB
(no answer over 4 KiB). The verdict: RSS growth over the flood is at most the sum of the budgets
(112 MiB) plus a stated overhead of 48 MiB (allocator fragmentation, sockets, the in-flight work of
`--parallel` queries, interned names).

The "Internet" is tests/hostile.py's: a root, and an attacker whose server answers `h<i>.huge.attacker`
with 3,800 A records (61 KB, over TCP), `x.f<i>.fat.attacker` with a referral to `f<i>.fat.attacker`
listing 2,500 NS names (glueless, under `farm.attacker`, which answers NXDOMAIN), and `s<i>.small.attacker`
with one A record. dnsd runs with its defaults in iterate mode from that root. RSS is VmRSS of the dnsd
process, sampled after a warm-up query and after each phase.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lab import rss_bytes
from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess
from tests.hostile import ATTACKER, ROOT, ROOT_HINTS, ROOT_ZONE, Message, Network, Reply, Server, Zone, response

MIB = 1024 * 1024
BUDGETS = {"answer cache": 64 * MIB, "delegation store": 16 * MIB, "fast-path store": 32 * MIB}
OVERHEAD = 48 * MIB
SOA = "attacker. 60 IN SOA ns.attacker. h.attacker. 1 1800 900 604800 60"

_HUGE = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, f"10.{i // 250}.{i % 250}.1")
         for i in range(3800)]
_FARM = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, f"ns{i}.farm.attacker.") for i in range(2500)]


def _huge_template() -> tuple[bytes, int]:
    """A 3,800-record answer in wire form and where its question ends: every owner is the pointer
    to the question (0xC00C), so the same bytes answer any name once the question is swapped."""
    query = dns.message.make_query("h.huge.attacker.", "A", use_edns=0, payload=1232)
    query.flags = 0
    reply = response(query)
    reply.answer.append(dns.rrset.from_rdata_list(query.question[0].name, 300, _HUGE))
    return reply.to_wire(max_size=65535), 12 + len(query.question[0].name.to_wire() or b"") + 4


_HUGE_WIRE, _HUGE_QEND = _huge_template()


def attacker(query: Message) -> Reply:
    qname = query.question[0].name
    text = qname.to_text().lower()
    if text.endswith(".huge.attacker."):
        # built once: the fake server is one Python thread, and dnspython needs ~0.3 s for this
        question = bytes(qname.to_wire() or b"") + struct.pack("!HH", 1, 1)
        return struct.pack("!H", query.id) + _HUGE_WIRE[2:12] + question + _HUGE_WIRE[_HUGE_QEND:]
    if text.endswith(".fat.attacker.") and len(qname.labels) == 5:
        zone = qname.parent()
        reply = response(query, aa=False)
        reply.authority.append(dns.rrset.from_rdata_list(zone, 3600, _FARM))
        return reply
    if text.endswith(".small.attacker."):
        return response(query, answer=(f"{text} 300 IN A 192.0.2.1",))
    return response(query, rcode=dns.rcode.NXDOMAIN, authority=(SOA,))


def _huge(query: Message) -> bool:
    """Huge answers get TC over UDP without being built twice (the fake server is one thread)."""
    return bool(query.question[0].name.to_text().lower().endswith(".huge.attacker."))


def run_phase(proc: DnsdProcess, names: list[str], tcp: bool, parallel: int) -> tuple[int, float, str]:
    """Ask every name once, `parallel` at a time: (answers as expected, seconds, the others by
    rcode). Expected: the records for huge and small names, SERVFAIL for the fat referrals (their
    NS names do not exist)."""
    started = time.monotonic()
    others: Counter[str] = Counter()

    def one(name: str) -> bool:
        query = dns.message.make_query(name, "A")
        try:
            if tcp:
                reply = dns.query.tcp(query, proc.host, port=proc.port, timeout=10)
            else:
                reply = dns.query.udp(query, proc.host, port=proc.port, timeout=10)
        except (OSError, dns.exception.DNSException):
            others["no answer"] += 1
            return False
        if ".fat." in name:
            expected = reply.rcode() == dns.rcode.SERVFAIL
        else:
            records = sum(len(rrset) for rrset in reply.answer)
            expected = reply.rcode() == dns.rcode.NOERROR and records == (3800 if ".huge." in name else 1)
        if not expected:
            others[dns.rcode.to_text(reply.rcode())] += 1
        return expected

    with ThreadPoolExecutor(parallel) as pool:
        answered = sum(pool.map(one, names))
    return answered, time.monotonic() - started, ", ".join(f"{k} {v}" for k, v in others.items()) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--huge", type=int, default=300)
    parser.add_argument("--fat", type=int, default=500)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the fake servers bind port 53 on 127.53.2.0/24", file=sys.stderr)
        return 2
    network = Network(Server(ROOT, [Zone(".", ROOT_ZONE)]),
                      Server(ATTACKER, [], script=attacker, truncate=_huge)).start()
    hints = Path(tempfile.mkdtemp(prefix="dnsd-mem-")) / "root.hints"
    hints.write_text(ROOT_HINTS)
    rows: list[tuple[str, int, int, float, str, int]] = []
    try:
        with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}",
                         "--recursion", "iterate", "--root-hints", str(hints), http="127.0.0.1:0") as proc:
            if proc.proc is None:
                raise RuntimeError("dnsd did not start")
            pid = proc.proc.pid
            dns.query.udp(dns.message.make_query("warm.small.attacker.", "A"), proc.host, port=proc.port,
                          timeout=10)
            baseline = rss_bytes(pid)
            phases = (("huge answers (TCP)", [f"h{i}.huge.attacker." for i in range(args.huge)], True),
                      ("fat referrals", [f"x.f{i}.fat.attacker." for i in range(args.fat)], False),
                      ("small answers", [f"s{i}.small.attacker." for i in range(args.small)], False),
                      ("huge answers again", [f"h{i}.huge.attacker." for i in range(args.huge, 2 * args.huge)],
                       True))
            peak = baseline
            for title, names, tcp in phases:
                answered, seconds, others = run_phase(proc, names, tcp, args.parallel)
                rss = rss_bytes(pid)
                peak = max(peak, rss)
                rows.append((title, len(names), answered, seconds, others, rss))
            failures = ", ".join(f"{labels['reason']} {value:.0f}"
                                 for labels, value in proc.metric_samples("dnsd_upstream_failures_total"))
            limits = ", ".join(f"{labels['limit']} {value:.0f}"
                               for labels, value in proc.metric_samples("dnsd_limit_hits_total"))
    finally:
        network.stop()
    budget = sum(BUDGETS.values())
    growth = peak - baseline
    ok = growth <= budget + OVERHEAD
    lines = [
        "# dnsd RSS under a flood of attacker names (bench/recursor_memory.py)",
        "",
        f"Baseline RSS after one warm-up query: {baseline / MIB:.1f} MiB.",
        "",
        "| phase | names | answered as expected | others | seconds | RSS after (MiB) |",
        "|---|---|---|---|---|---|",
        *(f"| {t} | {n} | {a} | {o} | {s:.1f} | {r / MIB:.1f} |" for t, n, a, s, o, r in rows),
        "",
        "Budgets: " + ", ".join(f"{k} {v // MIB} MiB" for k, v in BUDGETS.items())
        + f"; stated overhead {OVERHEAD // MIB} MiB.",
        f"dnsd's upstream failures: {failures or 'none'}; limit hits: {limits or 'none'}.",
        "",
        f"Peak growth {growth / MIB:.1f} MiB, limit {(budget + OVERHEAD) / MIB:.0f} MiB: "
        + ("PASS" if ok else "FAIL"),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "recursor_memory.md").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    raise SystemExit(main())
