"""Benchmark: dnsd signing its zone (a CSK, ECDSAP256SHA256, NSEC3) next to Knot signing the same zone.

Run: `.venv/bin/python bench/dnssec_zone_bench.py [--services 10000] [--runs 3] [--duration 5]
[--resign-services 100000]`. Not a test: it prints a markdown table and says which targets were met.

Both servers get the data of `bench/lab.py`'s `Cluster` (dnsd from the manifests file, Knot from the
equivalent zone file, `dnssec-signing: on` with a policy of one CSK, ECDSAP256SHA256, NSEC3 with 0
iterations, empty salt, no opt-out: the RFC 9276 parameters dnsd uses), one core each (core 0, one
worker: Knot `udp-workers: 1`, dnsd `--workers 1`), dnsperf on core 1 (`-c 8 -q 200`, closed loop,
`-D`: DO=1 on every query), the two servers measured alternately, median of `--runs` runs:

- "DO=1 zone answers": `Cluster.zone_queries` (80 % AAAA, 5 % A NODATA, 5 % SRV, 5 % headless, 5 %
  NXDOMAIN), every answer with its RRSIGs, the denials with their NSEC3 proofs. Target >= 0.6x Knot.
- "DO=1 random-name flood (NSEC3)": `Cluster.flood_queries` (every other query one of 300,000 names
  never asked before under an existing namespace, NXDOMAIN with a closest-encloser proof of up to three
  NSEC3 records and their RRSIGs). Target >= 0.5x Knot.

Before measuring, a sample of DO=1 questions is asked of both: rcodes must agree and every answer must
carry RRSIGs (and denials NSEC3). In-process (no sockets), as dnsd/app.py wires the parts (a
`ZoneIndex`, its `InternetView`, a signer for each):

- signing cost per event: one Service's address changed (`ZoneIndex.put_service`), 200 times, until
  the handler's DO=1 answer carries the new address signed: wall time per event, CPU time per event
  and per RRSIG made, next to the same events on an unsigned index;
- the first signing and a full re-signing (`Signer._resign_all`, what a key rollover does) of a zone
  of `--resign-services` Services (published to both views: `--publish-networks fd00::/8`, so both
  signers sign everything, the worst case), with the RSS after it.

The machine may be shared with other work (the report prints the load average before and after):
ratios of servers measured alternately are the figures to read, not absolute rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab
from compare import load_average
from lab import HOST, MB, PYTHON, REPO, ZONE, Cluster, Dnsd, Knot, cpu_seconds, dnsperf, machine, median, write_lines

from dnsd.kube import model  # the working tree's dnsd (lab put the repository on sys.path)

POLICY = """policy:
  - id: bench
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
    nsec3-opt-out: off
"""


@dataclasses.dataclass
class SignedKnot(Knot):
    """Knot signing its zones itself: one CSK, NSEC3 with the RFC 9276 parameters."""

    def prepare(self) -> None:
        super().prepare()
        conf = self.workdir / "knot.conf"
        text = conf.read_text().replace("template:\n", POLICY + "template:\n", 1)
        text = text.replace("    semantic-checks: off\n",
                            "    semantic-checks: off\n    dnssec-signing: on\n    dnssec-policy: bench\n", 1)
        conf.write_text(text)

    def ready_probe(self) -> tuple[str, str, bool]:
        return f"{ZONE}.", "DNSKEY", False


def check_sample(ports: dict[str, int], lines: list[str]) -> list[str]:
    """Rcodes of both servers agree on DO=1 questions, and every answer is signed; the problems found."""
    problems: list[str] = []
    for line in lines:
        qname, qtype = line.split()
        replies = {}
        for label, port in ports.items():
            query = dns.message.make_query(qname, qtype, want_dnssec=True, payload=1232)
            query.flags &= ~dns.flags.RD
            replies[label] = dns.query.udp(query, HOST, port=port, timeout=3)
        rcodes = {label: reply.rcode() for label, reply in replies.items()}
        if len(set(rcodes.values())) != 1:
            problems.append(f"{line}: rcodes {rcodes}")
        for label, reply in replies.items():
            types = {rrset.rdtype for rrset in reply.answer + reply.authority}
            denial = reply.rcode() == dns.rcode.NXDOMAIN or not reply.answer
            if dns.rdatatype.RRSIG not in types or (denial and dns.rdatatype.NSEC3 not in types):
                problems.append(f"{line}: {label} answer not signed")
    return problems


def measure(title: str, queries: Path, servers: list[lab.Server], runs: int, seconds: float, dnssec: bool = True
            ) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {s.label: {"qps": [], "cpu": []} for s in servers}
    for server in servers:  # one pass first: dnsd stores each answer on its first query (Knot needs none)
        dnsperf(server.port, queries, 0, once=True, clients=4, outstanding=50, timeout=3.0, dnssec=dnssec)
    for run in range(runs):
        for server in servers if run % 2 == 0 else list(reversed(servers)):
            before = cpu_seconds(server.pid)
            result = dnsperf(server.port, queries, seconds, dnssec=dnssec)
            used = (cpu_seconds(server.pid) - before) / seconds
            figures[server.label]["qps"].append(result.qps)
            figures[server.label]["cpu"].append(used)
            print(f"  {title:32} {server.label:6} {result.qps:9.0f} q/s  server CPU {used:4.0%}  lost {result.lost}  "
                  f"rcodes {result.rcodes}", flush=True)
    return figures


# ---- in-process: signing cost -----------------------------------------------------------------------------


def _service(i: int, generation: int, namespaces: int = 50) -> model.ServiceRecord:
    return model.ServiceRecord(f"ns{i % namespaces}", f"svc{i}", False, (Cluster.cluster_ip(i, generation),),
                               None, (model.Port("http", "tcp", 80),), False, True, None)


def _zone(services: int, publish_all: bool) -> tuple[object, object, object]:
    from dnsd import config as config_module
    from dnsd.views import InternetView
    from dnsd.zone import ZoneIndex

    options: dict[str, object] = {"zone": ZONE, "recursion": "off", "allow_recursion": ["127.0.0.1/32"],
                                  "dnssec_validation": False}
    if publish_all:
        options["publish_networks"] = ["fd00::/8"]
    cfg = config_module.from_mapping(options)
    zone = ZoneIndex(cfg)
    internet = InternetView(cfg, zone)
    namespaces = [f"ns{n}" for n in range(50)]
    zone.replace([_service(i, 0) for i in range(services)], [], namespaces)
    zone.mark_synced()
    return cfg, zone, internet


def _signers(zone: object, internet: object) -> tuple[object, object, float, float]:
    from dnsd.dnssec import crypto, keys
    from dnsd.dnssec.signer import Signer

    made = [keys.generate(ZONE, crypto.ECDSAP256SHA256)]
    wall, cpu = time.perf_counter(), time.process_time()
    internet_signer = Signer(internet, made)  # type: ignore[arg-type]
    cluster_signer = Signer(zone, made)  # type: ignore[arg-type]
    return cluster_signer, internet_signer, time.perf_counter() - wall, time.process_time() - cpu


def event_cost(services: int, events: int = 200) -> dict[str, float]:
    """Per Service change: wall and CPU time until the DO=1 answer is the new one, signed; and unsigned."""
    from dnsd.handler import Handler
    from dnsd.metrics import QueryStats

    out: dict[str, float] = {}
    for signed in (False, True):
        cfg, zone, internet = _zone(services, publish_all=True)
        handler = Handler(cfg, zone, QueryStats(), None, internet)  # type: ignore[arg-type]
        if signed:
            cluster_signer, internet_signer, _, _ = _signers(zone, internet)
            handler.signer, handler.internet_signer = cluster_signer, internet_signer  # type: ignore[assignment]
            made_before = cluster_signer.signatures_made + internet_signer.signatures_made  # type: ignore[attr-defined]
        gc.collect()
        wall = cpu = 0.0
        for k in range(events):
            i = (k * 7919) % services
            query = dns.message.make_query(Cluster(services).service_name(i), "AAAA", want_dnssec=True)
            started, started_cpu = time.perf_counter(), time.process_time()
            zone.put_service(_service(i, 1 + k))  # type: ignore[attr-defined]
            reply = handler.respond(query.to_wire(), "127.0.0.1", False)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            if not isinstance(reply, bytes):
                raise RuntimeError("no answer")
            message = dns.message.from_wire(reply)
            if Cluster.cluster_ip(i, 1 + k) not in message.to_text() or (
                    signed and not any(r.rdtype == dns.rdatatype.RRSIG for r in message.answer)):
                raise RuntimeError(f"not the new signed answer:\n{message.to_text()}")
        kind = "signed" if signed else "unsigned"
        out[f"{kind}_wall_ms"] = wall / events * 1e3
        out[f"{kind}_cpu_ms"] = cpu / events * 1e3
        if signed:
            made = cluster_signer.signatures_made + internet_signer.signatures_made - made_before  # type: ignore[attr-defined]
            out["rrsigs_per_event"] = made / events
            out["cpu_ms_per_rrsig"] = (out["signed_cpu_ms"] - out["unsigned_cpu_ms"]) / (made / events)
    return out


def resign_cost(services: int) -> dict[str, float]:
    """First signing and a full re-signing of a zone of `services` Services, both views; RSS after."""
    started = time.perf_counter()
    _cfg, zone, internet = _zone(services, publish_all=True)
    built = time.perf_counter() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cluster_signer, internet_signer, first_wall, first_cpu = _signers(zone, internet)
    made = cluster_signer.signatures_made + internet_signer.signatures_made  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter(), time.process_time()
    internet_signer._resign_all()  # type: ignore[attr-defined]
    cluster_signer._resign_all()  # type: ignore[attr-defined]
    resign_wall, resign_cpu = time.perf_counter() - wall, time.process_time() - cpu
    resigned = cluster_signer.signatures_made + internet_signer.signatures_made - made  # type: ignore[attr-defined]
    return {"services": services, "index_s": built, "first_wall_s": first_wall, "first_cpu_s": first_cpu,
            "first_rrsigs": made, "resign_wall_s": resign_wall, "resign_cpu_s": resign_cpu,
            "resign_rrsigs": resigned, "rss_unsigned_mb": rss_before / MB,
            "rss_signed_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB}


def resign_in_child(services: int) -> dict[str, float]:
    """`resign_cost` in a fresh interpreter (pinned to core 0), so that its RSS is its own."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); import dnssec_zone_bench as b; "
            f"print(json.dumps(b.resign_cost({services})))")
    done = subprocess.run(["taskset", "-c", lab.SERVER_CPUS, PYTHON, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=3600)
    import json

    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    parser.add_argument("--flood-names", type=int, default=300_000)
    parser.add_argument("--resign-services", type=int, default=100_000)
    parser.add_argument("--skip-servers", action="store_true", help="only the in-process figures")
    parser.add_argument("--rows", default="", help="comma-separated row titles to measure (default: all)")
    parser.add_argument("--skip-in-process", action="store_true", help="only the dnsperf rows")
    args = parser.parse_args(argv)
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-dnssec-zone-"))
    cluster = Cluster(args.services)
    manifests = tmp / "cluster.yaml"
    manifests.write_text(cluster.manifests())
    zone_lines = cluster.zone_queries(max(args.services, 10_000))
    zone_q = write_lines(tmp / "zone.txt", zone_lines)
    flood_lines = cluster.flood_queries(args.flood_names)
    flood_q = write_lines(tmp / "flood.txt", flood_lines)
    keys = tmp / "keys"
    keys.mkdir()
    subprocess.run([PYTHON, "-m", "dnsd", "keygen", ZONE, "--algorithm", "ecdsap256sha256", "--dir", str(keys)],
                   cwd=REPO, check=True, capture_output=True)
    print(f"machine: {machine()}; load average before: {load_before}", flush=True)
    rows: list[tuple[str, float, dict[str, dict[str, list[float]]]]] = []
    rss: dict[str, float] = {}
    notes: list[str] = []
    if not args.skip_servers:
        servers: list[lab.Server] = []
        try:
            print("starting Knot (signing the zone) and dnsd (--dnssec-keys) ...", flush=True)
            started = time.monotonic()
            knot = SignedKnot("knot", zones={ZONE: cluster.zone_file()}).start(timeout=600)
            servers.append(knot)
            knot_start = time.monotonic() - started
            started = time.monotonic()
            dnsd = Dnsd("dnsd", manifests=manifests, probe=cluster.last_name,
                        extra=("--dnssec-keys", str(keys))).start()
            servers.append(dnsd)
            dnsd_start = time.monotonic() - started
            notes.append(f"start-up until answering (loading and signing {args.services:,} Services): "
                         f"dnsd {dnsd_start:.1f} s, Knot {knot_start:.1f} s")
            sample = zone_lines[:150] + flood_lines[:100:2]
            problems = check_sample({"dnsd": dnsd.port, "knot": knot.port}, sample)
            notes.append(f"DO=1 check: {len(sample)} questions asked of both, {len(problems)} problems"
                         + (f" (e.g. {problems[0]})" if problems else ""))
            print(notes[-1], flush=True)
            for title, queries, target, dnssec in (("DO=1 zone answers", zone_q, 0.6, True),
                                                   ("DO=1 random-name flood (NSEC3)", flood_q, 0.5, True),
                                                   ("DO=0 zone answers (for scale)", zone_q, 0.0, False),
                                                   ("DO=0 random-name flood (for scale)", flood_q, 0.0, False)):
                if args.rows and title not in {t.strip() for t in args.rows.split(",")}:
                    continue
                rows.append((title, target, measure(title, queries, [dnsd, knot], args.runs, args.duration,
                                                    dnssec)))
            rss = {"dnsd": dnsd.rss() / MB, "knot": knot.rss() / MB}
            fast = dnsd.metric("dnsd_fast_path_answers_total")
            answered = dnsd.metric("dnsd_queries_total")
            notes.append(f"dnsd answered {fast / answered:.1%} of all its queries on the fast path")
        finally:
            for server in reversed(servers):
                server.stop()
    events: dict[str, float] = {}
    resign: dict[str, float] = {}
    if not args.skip_in_process:
        print(f"in-process: signing cost per event ({args.services:,} Services) ...", flush=True)
        events = event_cost(args.services)
        print(f"in-process: first signing and full re-signing of {args.resign_services:,} Services ...", flush=True)
        resign = resign_in_child(args.resign_services)
    load_after = load_average()

    out = [f"## DNSSEC zone signing: dnsd vs Knot ({args.services:,} Services, CSK ECDSAP256SHA256, NSEC3)", "",
           f"machine: {machine()}; load average before {load_before}, after {load_after}"
           + (" (shared: other work ran meanwhile, read the ratios)" if float(load_before.split()[0]) > 0.5
              or float(load_after.split()[0]) > 1.5 else ""), ""]
    if rows:
        out += ["| row | dnsd q/s | Knot q/s | x Knot | target | dnsd CPU | Knot CPU | q/s per core dnsd / Knot |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for title, target, figures in rows:
            d, k = median(figures["dnsd"]["qps"]), median(figures["knot"]["qps"])
            ratio = d / k if k else float("nan")
            goal = f">= {target} {'met' if ratio >= target else 'NOT met'}" if target else "-"
            dc, kc = median(figures["dnsd"]["cpu"]), median(figures["knot"]["cpu"])
            out.append(f"| {title} | {d:,.0f} | {k:,.0f} | {ratio:.2f} | {goal} | {dc:.0%} | {kc:.0%} | "
                       f"{d / dc if dc else 0:,.0f} / {k / kc if kc else 0:,.0f} |")
        out += ["", f"RSS after the runs: dnsd {rss['dnsd']:.0f} MB, Knot {rss['knot']:.0f} MB", ""]
    if events and resign:
        out += [f"Signing cost per event (one Service's address changed, {args.services:,} Services, both views "
                "published, until the DO=1 answer is the new one, signed; mean of 200):",
                "",
                "| | wall ms/event | CPU ms/event | RRSIGs/event | CPU ms per RRSIG |", "|---|---:|---:|---:|---:|",
                f"| unsigned | {events['unsigned_wall_ms']:.2f} | {events['unsigned_cpu_ms']:.2f} | - | - |",
                f"| signed | {events['signed_wall_ms']:.2f} | {events['signed_cpu_ms']:.2f} | "
                f"{events['rrsigs_per_event']:.1f} | {events['cpu_ms_per_rrsig']:.3f} |", "",
                f"Zone of {resign['services']:,.0f} Services (both views): index built in {resign['index_s']:.1f} s; "
                f"first signing {resign['first_wall_s']:.1f} s ({resign['first_rrsigs']:,.0f} RRSIGs, "
                f"{resign['first_cpu_s'] / resign['first_rrsigs'] * 1e6:.0f} us CPU each); full re-signing "
                f"(`_resign_all`, a key rollover) {resign['resign_wall_s']:.1f} s "
                f"({resign['resign_rrsigs']:,.0f} RRSIGs); "
                f"peak RSS {resign['rss_unsigned_mb']:.0f} MB unsigned, {resign['rss_signed_mb']:.0f} MB signed", ""]
    out += [f"- {note}" for note in notes]
    text = "\n".join(out) + "\n"
    print()
    print(text)
    lab.RESULTS.mkdir(parents=True, exist_ok=True)
    (lab.RESULTS / "dnssec_zone.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
