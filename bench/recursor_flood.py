"""Benchmark: what a random-subdomain flood on one slow victim zone does to a resolver's legitimate,
cached answers; dnsd next to Unbound, with and without aggressive use of the validated cache.

Run as root (the signed hierarchy binds port 53 on 127.54.0.0/16): `.venv/bin/python
bench/recursor_flood.py` (`--runs N`, `--duration S`, `--flood-rate Q`, `--delay S`, `--quick`). Not a
test: it prints a markdown report and writes it to bench/results/recursor_flood.md.

The "Internet" is tests/signed_hierarchy.py's signed loopback hierarchy plus three victim zones, each
delegated to a counting proxy (tests/counting_proxy.py) that holds every query `--delay` seconds
(default 0.2 s: a slow victim) before passing it to the zone's Knot: `victim-plain.test.` (unsigned),
`victim-nsec.test.` (NSEC) and `victim-nsec3.test.` (NSEC3, no opt-out), so the report can say how
many queries reached the victim. The resolvers iterate from the hierarchy's root and validate with its
key as trust anchor:

- dnsd (`--recursion iterate`, `--recursion-max-per-zone` at its default 100, aggressive NSEC on, as
  it always is with validation) and dnsd `--dnssec-validation off` (hence no aggressive NSEC);
- Unbound (`validator iterator`, one thread, `ratelimit: 0`, `ip-ratelimit: 0`) with
  `aggressive-nsec: yes` (Unbound's default) and with `aggressive-nsec: no`.

Per resolver and scenario (no flood; flood of the unsigned victim; flood of the NSEC victim; flood of
the NSEC3 victim): the legitimate load is dnsperf at its maximum (`-c 8 -q 100`, closed loop) on a
fixed set of names warmed into the cache first (A queries of every secure, insecure and victim
`www` name), for `--duration` seconds, the latency of every answer read from dnsperf's `-v` lines; the
flood meanwhile is a second dnsperf sending unique random names (`<12 random chars>.victim A`, never
repeated within a run) at `--flood-rate` per second. Reported: the legitimate q/s and p99 (median of
`--runs` runs), the share of legitimate answers that were NOERROR, the flood's answers per second
and how many flood queries reached the victim per second (the proxy's count).

Pinning: the resolver on core 0 (lab.SERVER_CPUS); both dnsperfs, the proxies (this process) and
the hierarchy's Knots on core 1 (lab.LOAD_CPUS). The machine may be shared with other work (the
report says so, with the load average): compare rows of one report, not across reports.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import string
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab
from lab import HOST, RESULTS, Cluster, Dnsd, Dnsperf, Server, cpu_seconds, dnsperf, machine, median, tool_versions

from tests.counting_proxy import CountingProxy
from tests.signed_hierarchy import NET, VICTIM_BACKENDS, VICTIMS, Signed

PLAIN = "victim-plain.test."
ZONES = {**VICTIMS, PLAIN: (NET + "32", "unsigned", "www A 192.0.2.132\n")}
BACKENDS = {**VICTIM_BACKENDS, PLAIN: NET + "132"}
LEGIT = ["www.nsec.test.", "www.nsec3.test.", "www.rsa.test.", "www.ed.test.", "www.insecure.test.",
         "www.victim-plain.test.", "www.victim-nsec.test.", "www.victim-nsec3.test.", "txt.nsec.test.",
         "www.unsigned.nsec.test."]
SCENARIOS = [("none", None), ("unsigned victim", PLAIN), ("NSEC victim", "victim-nsec.test."),
             ("NSEC3 victim", "victim-nsec3.test.")]


@dataclass
class UnboundIterating(Server):
    """A validating, iterating Unbound on the signed hierarchy (one thread, rate limits off)."""

    hints: str = ""
    anchor: str = ""
    aggressive: bool = True

    def prepare(self) -> None:
        w = self.workdir
        (w / "unbound.conf").write_text(f"""server:
    interface: {HOST}@{self.port}
    port: {self.port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{w}"
    pidfile: "{w}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    root-hints: "{self.hints}"
    trust-anchor-file: "{self.anchor}"
    do-not-query-localhost: no
    aggressive-nsec: {"yes" if self.aggressive else "no"}
    ratelimit: 0
    ip-ratelimit: 0
    msg-cache-size: 64m
    rrset-cache-size: 128m
    num-queries-per-thread: 4096
    outgoing-range: 8192
    prefetch: no
    minimal-responses: yes
    edns-buffer-size: 1232
    so-rcvbuf: 8m
    so-sndbuf: 8m
    local-zone: "test." nodefault
remote-control:
    control-enable: no
""")

    def command(self) -> list[str]:
        return [lab.require("unbound"), "-d", "-c", str(self.workdir / "unbound.conf")]

    def ready_probe(self) -> tuple[str, str, bool]:
        return "www.nsec.test.", "A", True


@dataclass
class Row:
    resolver: str
    scenario: str
    qps: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    ok_share: list[float] = field(default_factory=list)
    flood_answered: list[float] = field(default_factory=list)
    victim_qps: list[float] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)
    flood_nx: list[float] = field(default_factory=list)


def flood_file(path: Path, zone: str, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    return lab.write_lines(path, (f"{''.join(rng.choices(alphabet, k=12))}.{zone} A" for _ in range(count)))


def measure(server: Server, row: Row, legit: Path, victim: str | None, proxies: dict[str, CountingProxy],
            args: argparse.Namespace, tmp: Path, seed: int) -> None:
    flood: dict[str, Dnsperf] = {}
    thread = None
    proxy = proxies.get(victim) if victim else None
    before = proxy.total if proxy else 0
    if victim is not None:
        names = flood_file(tmp / f"flood-{seed}.txt", victim, int(args.flood_rate * (args.duration + 2)) + 100, seed)

        def run_flood() -> None:
            flood["result"] = dnsperf(server.port, names, args.duration + 1, rate=args.flood_rate, clients=4,
                                      outstanding=2000, timeout=3.0)

        thread = threading.Thread(target=run_flood)
        thread.start()
        time.sleep(0.5)  # the flood is under way before the legitimate load is measured
    cpu_before, began = cpu_seconds(server.pid), time.monotonic()
    result = dnsperf(server.port, legit, args.duration, clients=8, outstanding=100, verbose=True)
    row.cpu_share.append((cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - began))
    if thread is not None:
        thread.join()
    row.qps.append(result.qps)
    row.p99.append(result.p99 * 1e3)
    row.ok_share.append(100.0 * result.rcodes.get("NOERROR", 0) / max(1, result.completed))
    if victim is not None:
        f = flood["result"]
        row.flood_answered.append(f.completed / max(f.elapsed, 1e-9))
        row.flood_nx.append(100.0 * f.rcodes.get("NXDOMAIN", 0) / max(1, f.completed))
        reached = (proxy.total - before) if proxy else 0
        row.victim_qps.append(reached / (args.duration + 1))


def warm(server: Server) -> None:
    for name in LEGIT:
        lab.wait_answer(server.port, name, "A", rd=True, timeout=30)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        "# Random-subdomain flood: legitimate cached answers with and without the flood",
        "",
        f"Machine: {machine()}; {tool_versions()}. Load average at the end: {load}. "
        "**The machine was shared** (other work ran meanwhile): compare rows of this report only.",
        f"Resolver on core {lab.SERVER_CPUS}; dnsperf (legitimate and flood), the victim proxies and the "
        f"hierarchy's Knots on core {lab.LOAD_CPUS}. Median of {args.runs} runs of {args.duration:g} s; "
        f"flood {args.flood_rate:g} unique random names/s at a victim whose server takes {args.delay:g} s per "
        "query; legitimate load: dnsperf closed loop (-c 8 -q 100) over "
        f"{len(LEGIT)} cached names (A).",
        "",
        "| resolver | flood on | legit q/s | server CPU | legit q/s per core | legit p99 ms | legit NOERROR % | "
        "flood answers/s | flood NXDOMAIN % | flood queries reaching the victim /s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flood = f"{median(r.flood_answered):.0f}" if r.flood_answered else "-"
        victim = f"{median(r.victim_qps):.0f}" if r.victim_qps else "-"
        nx = f"{median(r.flood_nx):.1f}" if r.flood_nx else "-"
        per_core = median(q / c for q, c in zip(r.qps, r.cpu_share, strict=True) if c > 0)
        out.append(f"| {r.resolver} | {r.scenario} | {median(r.qps):.0f} | {100 * median(r.cpu_share):.0f} % | "
                   f"{per_core:.0f} | {median(r.p99):.2f} | {median(r.ok_share):.1f} | {flood} | {nx} | {victim} |")
    out += ["", "dnsd: `--recursion-max-per-zone 100` (default), aggressive NSEC (RFC 8198) with validation on; "
            "Unbound: `ratelimit: 0`, `ip-ratelimit: 0`, one thread. \"server CPU\": the share of its core the "
            "resolver used during the legitimate run (flood work included; well below 100 % means other work on "
            "the machine took the core); \"per core\" = legit q/s / server CPU, the figure least disturbed by "
            "that noise. Flood answers that are not NXDOMAIN are SERVFAIL (a limit, or the victim too slow)."]
    return "\n".join(out) + "\n"


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("needs root: the signed hierarchy binds port 53 on 127.54.0.0/16", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(c) for c in lab.LOAD_CPUS.split(",")})  # proxies and Knots: the load core
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-flood-bench-"))
    proxies = {zone: CountingProxy(ZONES[zone][0], BACKENDS[zone], delay=args.delay).start() for zone in ZONES}
    hierarchy = Signed(extra=ZONES, backends=BACKENDS)
    rows: list[Row] = []
    try:
        hierarchy.start()
        manifests = tmp / "cluster.yaml"
        manifests.write_text(Cluster(services=10).manifests())
        legit = lab.write_lines(tmp / "legit.txt", [f"{n} A" for n in LEGIT])
        resolvers: list[tuple[str, Server]] = [
            ("dnsd (aggressive NSEC)", Dnsd("dnsd", manifests=manifests, recursion="iterate", extra=(
                "--root-hints", hierarchy.root_hints, "--trust-anchor", hierarchy.anchor_file,
                "--dnssec-validation", "on"))),
            ("dnsd, validation off", Dnsd("dnsd-noval", manifests=manifests, recursion="iterate", extra=(
                "--root-hints", hierarchy.root_hints, "--dnssec-validation", "off"))),
            ("Unbound aggressive-nsec: yes", UnboundIterating("unbound", hints=hierarchy.root_hints,
                                                              anchor=hierarchy.anchor_file, aggressive=True)),
            ("Unbound aggressive-nsec: no", UnboundIterating("unbound-noagg", hints=hierarchy.root_hints,
                                                             anchor=hierarchy.anchor_file, aggressive=False)),
        ]
        seed = 0
        for label, server in resolvers:
            print(f"== {label}", flush=True)
            with server:
                warm(server)
                for scenario, victim in SCENARIOS:
                    row = Row(label, scenario)
                    for _ in range(args.runs):
                        seed += 1
                        measure(server, row, legit, victim, proxies, args, tmp, seed)
                    rows.append(row)
                    print(f"   {scenario:16} legit {median(row.qps):8.0f} q/s p99 {median(row.p99):7.2f} ms"
                          + (f"  victim {median(row.victim_qps):6.0f} q/s" if row.victim_qps else ""), flush=True)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        hierarchy.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(rows, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recursor_flood.md").write_text(text)
    print(text)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per legitimate dnsperf run")
    parser.add_argument("--flood-rate", type=float, default=500.0, help="flood queries per second")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the victim's server takes per query")
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s (a development pass)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration = 1, 3.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
