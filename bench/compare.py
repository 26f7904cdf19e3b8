"""Benchmark: dnsd next to Knot, NSD and Unbound on the same data, same machine, same load generator.

Run: `.venv/bin/python bench/compare.py` (options: `--services N`, `--runs N`, `--duration S`,
`--latency-duration S`, `--workers N`, `--quick` for a 1-run, 3-second, 1,000-service development pass).
Not a test: it prints a markdown report, writes it to bench/results/latest.md (raw figures beside it in
latest.json), and says which targets were met.

Why these comparisons: a DNS server's speed only means something next to a server people already run
on the same machine. Knot and NSD are the authoritative references (the zone answers dnsd gives from
the cluster), Unbound the recursive one (dnsd's cached recursion and DNS64). Every server gets the same
single core (core 0) and one worker; dnsperf gets the other core. All listen on 127.0.0.1.

What is measured, for each row:
- zone UDP: AAAA/A/SRV/NXDOMAIN queries for a cluster of `--services` ClusterIP services (plus a few
  headless ones): dnsd from a manifests file, Knot and NSD from the equivalent zone file (checked first:
  a sample of answers must be identical);
- zone TCP pipelined: the same queries over 8 TCP connections with many queries in flight on each;
- random-name flood: every other query a name never seen under an existing namespace
  (`r<hex>.ns<k>.svc.Z AAAA`, NXDOMAIN, 300,000 of them so that no store can hold them), the others the
  zone UDP mix: what an authoritative server meets in a random-subdomain attack;
- cached DNS64 AAAA: dnsd in forward mode and Unbound with `module-config: "dns64 iterator"`, both
  forwarding to one local Knot that holds A-only names with a one-hour TTL; both caches are warmed with
  one pass over every name first, so the measured part is cache hits only (dnsd's upstream query
  counter is checked to stay still);
- cached A: the same names, A queries, against dnsd and a plain Unbound (`module-config: "iterator"`).

Columns: queries/s is dnsperf's maximum (`-c 8 -q 200 -T 1`, closed loop), median of `--runs` runs of
`--duration` seconds; "x ref" its ratio to the row's reference (Knot for the zone, Unbound for
recursion); "server CPU" the share of its core the server used meanwhile (/proc/PID/stat; well below
100 % means the load generator or other work on the machine was the limit, not the server) and
"q/s per core" = queries/s / server CPU, the figure least disturbed by such noise; then, at a fixed
offered load of half the reference's maximum (`dnsperf -Q`, up to 1,000 queries in flight), the
average and p99 latency (per-query latencies from dnsperf's `-v` lines, the first second of answers
left out because dnsperf sends a burst while it ramps up) and the queries lost (no answer within 2 s);
RSS (VmRSS, summed over the process tree: NSD runs three processes) after the runs.
The socket receive buffers differ as each server chooses: dnsd asks for 8 MB, Unbound is given 8 MB
(`so-rcvbuf`), NSD takes 1 MB, Knot 3.2 keeps the kernel default (208 KB here) and has no option for it,
so under bursts Knot drops datagrams where the others queue them (the report counts such drops).

Separately: the RSS of a fresh dnsd loading 10,000 and 100,000 services (started, asked for the last
service until it answers, then VmRSS read), and the time that took.

Targets: zone UDP >= 0.6x Knot; random-name flood >= 0.6x Knot; cached DNS64 >= 0.6x Unbound dns64; zone
TCP >= Knot; dnsd p99 < 2 ms at half Knot's UDP rate with no loss; RSS < 80 MB with 10,000 services and
< 400 MB with 100,000. `--groups` picks rows by title (e.g. `--groups "zone UDP,random-name flood"`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab
from lab import (
    MB,
    REPO,
    RESULTS,
    UPSTREAM_ZONE,
    ZONE,
    Cluster,
    Dnsd,
    Knot,
    Nsd,
    Server,
    Unbound,
    Upstream,
    compare_answers,
    cpu_seconds,
    dnsperf,
    machine,
    median,
    tool_versions,
    write_lines,
)

CLIENTS = 8
OUTSTANDING = 200
RATE_OUTSTANDING = 1_000
#: Latencies of the first second of a fixed-rate run are left out: dnsperf -Q sends a burst while ramping up.
RATE_SKIP_SECONDS = 1.0


@dataclass
class Figures:
    """Every run's figures for one server in one group."""

    qps: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    load_cpu: list[float] = field(default_factory=list)
    lost_max: list[int] = field(default_factory=list)
    rate: float = 0.0
    achieved: list[float] = field(default_factory=list)
    avg_ms: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    lost_rate: list[int] = field(default_factory=list)
    sent_rate: list[int] = field(default_factory=list)
    socket_drops_rate: list[int] = field(default_factory=list)
    rcodes: dict[str, int] = field(default_factory=dict)
    rss: int = 0
    processes: int = 1


@dataclass
class Group:
    """One row group of the table: a query file, a transport, the servers and the reference."""

    title: str
    queries: Path
    tcp: bool
    servers: list[Server]
    reference: str
    figures: dict[str, Figures] = field(default_factory=dict)

    def ref(self) -> Figures:
        return self.figures[self.reference]


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "dnsd"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in dnsd/" if dirty else "")


def measure_max(group: Group, server: Server, seconds: float) -> None:
    figures = group.figures.setdefault(server.label, Figures())
    before = cpu_seconds(server.pid)
    result = dnsperf(server.port, group.queries, seconds, tcp=group.tcp, clients=CLIENTS, outstanding=OUTSTANDING)
    used = cpu_seconds(server.pid) - before
    figures.qps.append(result.qps)
    figures.cpu.append(used / seconds)
    figures.load_cpu.append(result.load_cpu / result.elapsed)
    figures.lost_max.append(result.lost)
    for rcode, count in result.rcodes.items():
        figures.rcodes[rcode] = figures.rcodes.get(rcode, 0) + count
    print(f"  {group.title:20} {server.label:14} {result.qps:9.0f} q/s  server CPU {used / seconds:4.0%}  "
          f"dnsperf CPU {result.load_cpu / result.elapsed:4.0%}  lost {result.lost}", flush=True)


def measure_rate(group: Group, server: Server, seconds: float, rate: float) -> None:
    figures = group.figures[server.label]
    figures.rate = rate
    result = dnsperf(server.port, group.queries, seconds, tcp=group.tcp, clients=CLIENTS,
                     outstanding=RATE_OUTSTANDING, rate=rate, verbose=True, skip_seconds=RATE_SKIP_SECONDS)
    figures.achieved.append(result.qps)
    figures.avg_ms.append(result.avg_latency * 1e3)
    figures.p50_ms.append(result.p50 * 1e3)
    figures.p99_ms.append(result.p99 * 1e3)
    figures.lost_rate.append(result.lost)
    figures.sent_rate.append(result.sent)
    figures.socket_drops_rate.append(result.socket_drops)
    print(f"  {group.title:20} {server.label:14} at {rate:7.0f} q/s: got {result.qps:7.0f}, avg "
          f"{result.avg_latency * 1e3:6.3f} ms, p99 {result.p99 * 1e3:7.3f} ms, lost {result.lost} "
          f"(socket buffer drops {result.socket_drops})", flush=True)


def warm(servers: list[Server], queries: list[Path]) -> None:
    """One pass over every name (twice: a query lost while the cache fills is retried the second time)."""
    for server in servers:
        for path in queries:
            for _ in range(2):
                dnsperf(server.port, path, 0, once=True, clients=4, outstanding=50, timeout=3.0)


def rss_of_fresh_dnsd(services: int, tmp: Path, workers: int) -> tuple[int, float, int]:
    """(RSS bytes, seconds from start to the last service answering, processes) of dnsd loading N services."""
    cluster = Cluster(services)
    path = tmp / f"cluster-{services}.yaml"
    path.write_text(cluster.manifests())
    dnsd = Dnsd(f"dnsd-{services}", manifests=path, probe=cluster.last_name, workers=workers,
                extra=("--http", "off"))
    started = time.monotonic()
    dnsd.start(timeout=900)
    loaded = time.monotonic() - started
    try:
        time.sleep(1.0)
        return dnsd.rss(), loaded, dnsd.processes()
    finally:
        dnsd.stop()
        path.unlink()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def rcode_notes(groups: list[Group]) -> list[str]:
    """A note for each server whose mix of response codes differs from its reference's (same queries)."""
    notes = []
    for group in groups:
        ref = group.ref().rcodes
        ref_total = sum(ref.values()) or 1
        for label, figures in group.figures.items():
            total = sum(figures.rcodes.values()) or 1
            for rcode in set(ref) | set(figures.rcodes):
                share, ref_share = figures.rcodes.get(rcode, 0) / total, ref.get(rcode, 0) / ref_total
                if abs(share - ref_share) > 0.02:
                    notes.append(f"{group.title}: {label} answered {rcode} to {share:.1%} of queries, "
                                 f"{group.reference} to {ref_share:.1%}")
    return notes


def fmt(value: float, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def report(args: argparse.Namespace, groups: list[Group], rss_rows: list[tuple[int, int, float, int]],
           notes: list[str], started: float) -> str:
    out = ["# dnsd compared with Knot, NSD and Unbound", ""]
    out.append(f"- machine: {machine()}")
    out.append(f"- tools: {tool_versions()}; dnsd at {git_describe()} (uvloop), `--workers {args.workers}`")
    out.append(f"- data: {args.services:,} ClusterIP services + {Cluster(args.services).headless_count} headless "
               f"in zone {ZONE}; {args.services:,} A-only upstream names in {UPSTREAM_ZONE} (TTL 3600)")
    out.append(f"- method: each server alone on core {args.server_cpus} (one worker), dnsperf on core "
               f"{args.load_cpus}; max = dnsperf -c {CLIENTS} -q {OUTSTANDING} -T 1, medians of {args.runs} x "
               f"{args.duration:g} s; latency = dnsperf -Q (half the reference's max) -q {RATE_OUTSTANDING} -v, "
               f"{args.runs} x {args.latency_duration:g} s, first {RATE_SKIP_SECONDS:g} s of answers left out")
    out.append(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}, took {time.monotonic() - started:.0f} s; "
               f"load average at start {args.load_before}, at end {load_average()} (other work on the machine "
               "shares both cores and shows up as noise)")
    out.append("")
    out.append("| test | server | queries/s | x ref | server CPU | q/s per core | lost (max) | offered q/s | "
               "avg ms | p99 ms | lost (rate) | RSS MB |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for group in groups:
        ref_qps = median(group.ref().qps)
        for server in group.servers:
            f = group.figures[server.label]
            qps = median(f.qps)
            cpu = median(f.cpu)
            per_core = qps / cpu if cpu > 0 else float("nan")
            relative = qps / ref_qps if ref_qps > 0 else float("nan")
            memory = f"{f.rss / MB:.1f}" + (f" ({f.processes} procs)" if f.processes > 1 else "")
            out.append(
                f"| {group.title} | {server.label} | {fmt(qps)} | {fmt(relative, 2)} | {fmt(cpu * 100)} % | "
                f"{fmt(per_core)} | {sum(f.lost_max)} | {fmt(f.rate)} | {fmt(median(f.avg_ms), 3)} | "
                f"{fmt(median(f.p99_ms), 3)} | {sum(f.lost_rate)} of {sum(f.sent_rate):,} | {memory} |")
    out.append("")
    if rss_rows:
        out.append("| dnsd loading | RSS MB | start to last name answering | target |")
        out.append("|---|---:|---:|---|")
        for services, resident, seconds, processes in rss_rows:
            limit = {10_000: 80, 100_000: 400}.get(services)
            target = f"< {limit} MB {verdict(resident < limit * MB)}" if limit else ""
            procs = f" ({processes} procs)" if processes > 1 else ""
            out.append(f"| {services:,} services | {resident / MB:.1f}{procs} | {seconds:.1f} s | {target} |")
        out.append("")

    by_title = {g.title: g for g in groups}

    def ratio(title: str, label: str) -> float:
        group = by_title[title]
        ref = median(group.ref().qps)
        return median(group.figures[label].qps) / ref if ref > 0 else float("nan")

    rss_by = {s: r for s, r, _, _ in rss_rows}
    checks: list[tuple[str, str, bool | None]] = []
    for title, target, ref in (("zone UDP", 0.6, "Knot"), ("random-name flood", 0.6, "Knot"),
                               ("cached DNS64 AAAA", 0.6, "Unbound dns64"), ("zone TCP pipelined", 1.0, "Knot")):
        if title in by_title:
            checks.append((f"{title} >= {target:g}x {ref}", f"{ratio(title, 'dnsd'):.2f}x",
                           ratio(title, "dnsd") >= target))
    if "zone UDP" in by_title:
        udp = by_title["zone UDP"].figures["dnsd"]
        checks.append((f"p99 < 2 ms at half Knot's UDP rate ({udp.rate:,.0f} q/s), no loss",
                       f"p99 {median(udp.p99_ms):.3f} ms, {sum(udp.lost_rate)} lost",
                       median(udp.p99_ms) < 2 and sum(udp.lost_rate) == 0))
    checks += [
        ("RSS with 10,000 services < 80 MB",
         f"{rss_by[10_000] / MB:.1f} MB" if 10_000 in rss_by else "not measured",
         rss_by[10_000] < 80 * MB if 10_000 in rss_by else None),
        ("RSS with 100,000 services < 400 MB",
         f"{rss_by[100_000] / MB:.1f} MB" if 100_000 in rss_by else "not measured",
         rss_by[100_000] < 400 * MB if 100_000 in rss_by else None),
    ]
    out.append("| target | dnsd | verdict |")
    out.append("|---|---:|---|")
    for name, figure, ok in checks:
        out.append(f"| {name} | {figure} | {verdict(ok)} |")
    out.append("")
    notes = [*notes, *rcode_notes(groups)]
    for group in groups:
        drops = {label: sum(f.socket_drops_rate) for label, f in group.figures.items()}
        if any(drops.values()):
            notes.append(f"{group.title}: datagrams the kernel dropped on full socket buffers during the fixed-rate "
                         "runs (either side; part of 'lost'): " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    if notes:
        out += [f"- {note}" for note in notes]
        out.append("")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-compare-"))
    cluster = Cluster(args.services)
    upstream = Upstream(args.services)
    manifests = tmp / "cluster.yaml"
    manifests.write_text(cluster.manifests())
    zone_text = cluster.zone_file()
    zone_lines = cluster.zone_queries(max(args.services, 10_000))
    zone_q = write_lines(tmp / "zone.txt", zone_lines)
    flood_lines = cluster.flood_queries(args.flood_names)
    flood_q = write_lines(tmp / "flood.txt", flood_lines)
    aaaa_q = write_lines(tmp / "dns64.txt", upstream.queries("AAAA"))
    a_q = write_lines(tmp / "a.txt", upstream.queries("A"))
    print(f"machine: {machine()}\n{args.services} services; files in {tmp}", flush=True)

    servers: list[Server] = []
    notes: list[str] = []
    groups: list[Group] = []
    rss_rows: list[tuple[int, int, float, int]] = []
    try:
        # the upstream of the recursion rows: not under test, so it stays off the server core
        origin = Knot("knot-upstream", zones={UPSTREAM_ZONE: upstream.zone_file()}, cpus=args.load_cpus).start()
        servers.append(origin)
        cpus = args.server_cpus
        knot = Knot("knot", zones={ZONE: zone_text}, cpus=cpus).start()
        nsd = Nsd("nsd", zone_text=zone_text, cpus=cpus).start()
        servers += [knot, nsd]
        print("starting dnsd (authoritative) ...", flush=True)
        dnsd = Dnsd("dnsd", manifests=manifests, probe=cluster.last_name, workers=args.workers, cpus=cpus).start()
        servers.append(dnsd)
        dnsd_rec = Dnsd("dnsd", manifests=manifests, probe=cluster.last_name, recursion="forward",
                        forwarder=origin.port, workers=args.workers, cpus=cpus).start()
        servers.append(dnsd_rec)
        unbound64 = Unbound("unbound-dns64", forward=origin.port, dns64=True, probe=upstream.host(0),
                            cpus=cpus).start()
        unbound = Unbound("unbound", forward=origin.port, probe=upstream.host(0), cpus=cpus).start()
        servers += [unbound64, unbound]

        sample = zone_lines[:300] + flood_lines[:100]
        problems = compare_answers({"knot": knot.port, "nsd": nsd.port, "dnsd": dnsd.port}, sample)
        notes.append(f"zone data check: {len(sample)} queries asked of Knot, NSD and dnsd, "
                     f"{len(problems)} different answers" + (f" (e.g. {problems[0]})" if problems else ""))
        rec_sample = [f"{upstream.host(i)} AAAA" for i in range(0, args.services, max(1, args.services // 100))]
        problems = compare_answers({"unbound-dns64": unbound64.port, "dnsd": dnsd_rec.port}, rec_sample, rd=True)
        notes.append(f"DNS64 check: {len(rec_sample)} AAAA queries asked of Unbound dns64 and dnsd, "
                     f"{len(problems)} different answers" + (f" (e.g. {problems[0]})" if problems else ""))
        print("\n".join(notes), flush=True)

        print("warming the caches ...", flush=True)
        warm([dnsd_rec, unbound64], [aaaa_q])
        warm([dnsd_rec, unbound], [a_q])
        upstream_before = dnsd_rec.metric("dnsd_upstream_queries_total")

        groups = [
            Group("zone UDP", zone_q, False, [dnsd, knot, nsd], "knot"),
            Group("random-name flood", flood_q, False, [dnsd, knot, nsd], "knot"),
            Group("zone TCP pipelined", zone_q, True, [dnsd, knot, nsd], "knot"),
            Group("cached DNS64 AAAA", aaaa_q, False, [dnsd_rec, unbound64], "unbound-dns64"),
            Group("cached A", a_q, False, [dnsd_rec, unbound], "unbound"),
        ]
        if args.groups:
            wanted = {title.strip() for title in args.groups.split(",")}
            groups = [g for g in groups if g.title in wanted]
        fast_before = dnsd.metric("dnsd_fast_path_answers_total")
        queries_before = dnsd.metric("dnsd_queries_total")
        print("maximum rate ...", flush=True)
        for _ in range(args.runs):
            for group in groups:
                for server in group.servers:
                    measure_max(group, server, args.duration)
        print("latency at half the reference's maximum ...", flush=True)
        for _ in range(args.runs):
            for group in groups:
                rate = max(100.0, median(group.ref().qps) / 2)
                for server in group.servers:
                    measure_rate(group, server, args.latency_duration, rate)
        for group in groups:
            for server in group.servers:
                group.figures[server.label].rss = server.rss()
                group.figures[server.label].processes = server.processes()
        upstream_after = dnsd_rec.metric("dnsd_upstream_queries_total")
        answered = dnsd.metric("dnsd_queries_total") - queries_before
        fast = dnsd.metric("dnsd_fast_path_answers_total") - fast_before
        notes.append(f"authoritative dnsd: {fast:,.0f} of {answered:,.0f} answers during the runs came from the fast "
                     f"path ({fast / answered:.2%}), {dnsd.metric('dnsd_cache_entries'):,.0f} answers stored at the "
                     "end" if answered else "authoritative dnsd: no answers counted")
        notes.append(f"dnsd upstream queries during the measured recursion runs: "
                     f"{upstream_after - upstream_before:.0f} (0 means cache hits only)")
        notes.append("dnsd rows: the authoritative rows use a dnsd with `--recursion off`, the recursion rows "
                     "a second dnsd with `--recursion forward` (same manifests)")
    finally:
        for server in reversed(servers):
            server.stop()

    for services in args.rss_services:
        print(f"RSS of dnsd loading {services} services ...", flush=True)
        try:
            rss, seconds, processes = rss_of_fresh_dnsd(services, tmp, args.workers)
        except RuntimeError as exc:
            notes.append(f"RSS with {services} services: dnsd failed: {str(exc).splitlines()[0]}")
            continue
        rss_rows.append((services, rss, seconds, processes))
        print(f"  {rss / MB:.1f} MB after {seconds:.1f} s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    text = report(args, groups, rss_rows, notes, started)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    raw = {
        "args": vars(args),
        "groups": {g.title: {label: asdict(f) for label, f in g.figures.items()} for g in groups},
        "rss": [{"services": s, "rss_bytes": r, "seconds": t, "processes": p} for s, r, t, p in rss_rows],
    }
    (RESULTS / "latest.json").write_text(json.dumps(raw, indent=1))
    print(f"written to {RESULTS / 'latest.md'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000, help="services in the cluster (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians are reported")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each maximum-rate run")
    parser.add_argument("--latency-duration", type=float, default=None,
                        help="seconds of each fixed-rate run (default: half of --duration)")
    parser.add_argument("--workers", type=int, default=1, help="dnsd --workers (default 1)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the servers (default 0)")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list of dnsperf (default 1)")
    parser.add_argument("--rss-services", default=None,
                        help="comma-separated cluster sizes for the RSS measurement (default 10000,100000)")
    parser.add_argument("--quick", action="store_true", help="1 run, 3 s, 1000 services, RSS at 10000 only")
    parser.add_argument("--groups", default="", help="comma-separated row titles to run (default: all)")
    parser.add_argument("--flood-names", type=int, default=300_000,
                        help="distinct never-seen names in the random-name flood (default 300000)")
    args = parser.parse_args(argv)
    args.load_before = load_average()
    if args.quick:
        args.runs, args.duration, args.services = 1, 3.0, 1000
        args.rss_services = args.rss_services or "10000"
    if args.latency_duration is None:
        args.latency_duration = max(2.0, args.duration / 2)
    args.rss_services = [int(n) for n in (args.rss_services or "10000,100000").split(",") if n.strip()]
    return args


if __name__ == "__main__":
    parsed = parse_args()
    lab.SERVER_CPUS, lab.LOAD_CPUS = parsed.server_cpus, parsed.load_cpus
    sys.exit(main(parsed))
