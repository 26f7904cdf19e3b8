"""Benchmark: a dnsd process fed 50,000 Services and 50,000 EndpointSlices by the fake API server,
plus 10,000 Ingresses and 10,000 HTTPRoutes (and the Gateways they attach to).

Run: `.venv/bin/python bench/informer_bench.py` (options: `--services N`, `--ingresses N`, `--routes N`,
`--gateways N`, `--changes N`, `--rate R`; `--ingresses 0 --routes 0` is the Services-only benchmark).
dnsd is pinned to core 0, and the query load and the fake API server (this process) to core 1, when there are two cores.
Not a test: it prints figures for the README and says which targets were met.

Reports
- time to first full sync: from launching `python -m dnsd` to the first NOERROR answer for the last
  listed service (includes interpreter start-up), and dnsd's own "synced ... in X s" figure;
- the same for the Ingress hosts and HTTPRoute hostnames (`--ingress --gateway-api`, zone example.net),
  and the event-to-answer delay of Ingress status updates (a new load-balancer address);
- dnsd's RSS after sync, and bytes per service: (RSS with the cluster - RSS of a dnsd synced to an
  empty cluster) / services (each service here has one EndpointSlice with two endpoints);
- event-to-answer delay: from the fake API server writing a MODIFIED event to the first DNS answer
  carrying the new address, polled every millisecond, over `--changes` changes at `--rate` per second;
- query latency during that churn, measured by a separate process (so that this process's event
  loop, which also runs the fake API server, does not inflate it) sending queries for random
  existing names at a fixed rate over plain UDP sockets.

Targets: sync < 20 s, RSS < 300 MB, event-to-answer p99 < 50 ms, query p99 during churn < 5 ms.
Loopback only; the load is bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import os
import random
import re
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakekube import FakeKube, endpoint_slice, service  # noqa: E402

ZONE = "c2.k8s.ooo"
HOSTS = "example.net"  # the second zone: Ingress hosts and route hostnames


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def svc_name(i: int) -> str:
    return f"svc{i}.team{i % 100}.svc.{ZONE}"


def cluster_ip(i: int, generation: int = 0) -> str:
    return str(ipaddress.IPv6Address(f"fd00:10:96:{generation:x}::{i // 65536:x}:{i % 65536:x}"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Dnsd:
    """A `python -m dnsd --source kubernetes` child process and its log lines."""

    def __init__(self, kubeconfig: Path, hosts: bool = False) -> None:
        self.kubeconfig = kubeconfig
        self.hosts = hosts
        self.port = free_port()
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("dnsd is not running")
        return self.proc.pid

    async def start(self) -> None:
        self.started = time.monotonic()
        extra = ["--zone", HOSTS, "--ingress", "--gateway-api"] if self.hosts else []
        self.proc = await asyncio.create_subprocess_exec(
            *pin(0),
            sys.executable,
            "-m",
            "dnsd",
            "--zone",
            ZONE,
            "--source",
            "kubernetes",
            "--kubeconfig",
            str(self.kubeconfig),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--http",
            "off",
            "--recursion",
            "off",
            "--lame-duck",
            "0",
            *extra,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        if self.proc is None or self.proc.stdout is None:
            return
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    async def ask(self, qname: str, qtype: str = "AAAA", timeout: float = 2.0) -> dns.message.Message:
        query = dns.message.make_query(qname, qtype)
        query.flags &= ~dns.flags.RD
        return await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, timeout=timeout)

    async def wait_noerror(self, qname: str, timeout: float = 120) -> float:
        """Seconds from process launch until qname answers NOERROR."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (await self.ask(qname, timeout=0.5)).rcode() == dns.rcode.NOERROR:
                    return time.monotonic() - self.started
            except (dns.exception.Timeout, OSError):
                pass
            await asyncio.sleep(0.02)
        raise RuntimeError("dnsd did not sync:\n" + "\n".join(self.lines[-20:]))


def pin(core: int) -> list[str]:
    """`taskset -c CORE` when this machine has two cores for us (server on 0, load on 1), else nothing."""
    try:
        cores = os.sched_getaffinity(0)
    except AttributeError:
        return []
    return ["taskset", "-c", str(core)] if {0, 1} <= cores and shutil.which("taskset") else []


def ingress_host(i: int) -> str:
    return f"ing{i}.team{i % 100}.{HOSTS}"


def route_host(i: int, gateways: int) -> str:
    return f"route{i}.apps{i % gateways}.{HOSTS}"


def ingress_obj(i: int, generation: int = 0) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"ing{i}", "namespace": f"team{i % 100}"},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": ingress_host(i), "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": f"svc{i}", "port": {
                    "number": 80}}}}]}}]},
            "status": {"loadBalancer": {"ingress": [{"ip": str(ipaddress.IPv6Address(
                f"2001:db8:{generation:x}::{i // 65536:x}:{i % 65536:x}"))}]}}}


def gateway_obj(g: int) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": f"gw{g}", "namespace": "infra"},
            "spec": {"gatewayClassName": "public", "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": f"*.apps{g}.{HOSTS}"}]},
            "status": {"addresses": [{"type": "IPAddress", "value": f"2001:db8:ff::{g:x}"}]}}


def route_obj(i: int, gateways: int) -> dict[str, Any]:
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra",
           "name": f"gw{i % gateways}", "sectionName": "https"}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"route{i}", "namespace": f"team{i % 100}"},
            "spec": {"parentRefs": [ref], "hostnames": [route_host(i, gateways)],
                     "rules": [{"backendRefs": [{"name": f"svc{i}", "port": 80}]}]},
            "status": {"parents": [{"parentRef": ref, "controllerName": "example.net/gateway",
                                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}]}}


def query_load(port: int, names: list[str], rate: float, seconds: float, out: Any) -> None:
    """In a child process: UDP queries at `rate` per second; puts (latencies, failures) on `out`."""
    if pin(1):
        os.sched_setaffinity(0, {1})
    wires = []
    for qname in names:
        message = dns.message.make_query(qname, "AAAA")
        message.flags &= ~dns.flags.RD
        wires.append(bytearray(message.to_wire()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    latencies: list[float] = []
    failures = 0
    interval = 1.0 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    qid = 0
    while time.perf_counter() < end:
        qid = (qid + 1) & 0xFFFF
        wire = random.choice(wires)
        wire[0:2] = qid.to_bytes(2, "big")
        start = time.perf_counter()
        sock.send(wire)
        try:
            while True:
                reply = sock.recv(4096)
                if reply[0:2] == wire[0:2]:
                    break
            latencies.append(time.perf_counter() - start)
            if reply[3] & 0x0F != 0:
                failures += 1
        except dns.exception.Timeout:
            failures += 1
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    out.put((latencies, failures))


async def baseline_rss(tmp: Path, hosts: bool) -> int:
    """RSS of a dnsd synced to an empty cluster (to subtract from the loaded one)."""
    fake = FakeKube()
    fake.put(service("default", "probe"))
    await fake.start()
    dnsd = Dnsd(fake.write_kubeconfig(tmp / "kubeconfig-empty"), hosts)
    await dnsd.start()
    try:
        await dnsd.wait_noerror(f"probe.default.svc.{ZONE}")
        await asyncio.sleep(0.5)
        return rss_bytes(dnsd.pid)
    finally:
        await dnsd.stop()
        await fake.stop()


async def main(args: argparse.Namespace) -> int:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"informer-bench-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    n = args.services
    print(f"building {n} services and {n} endpoint slices ...", flush=True)
    fake = FakeKube()
    objects: list[dict[str, Any]] = []
    for i in range(n):
        namespace = f"team{i % 100}"
        objects.append(service(namespace, f"svc{i}", [cluster_ip(i)]))
        objects.append(
            endpoint_slice(
                namespace,
                f"svc{i}-x1",
                f"svc{i}",
                [f"fd00:10:244:{i // 65536:x}::{i % 65536:x}:1", f"fd00:10:244:{i // 65536:x}::{i % 65536:x}:2"],
            )
        )
    hosts = bool(args.ingresses or args.routes)
    if hosts:
        print(f"... and {args.ingresses} ingresses, {args.routes} HTTPRoutes on {args.gateways} gateways", flush=True)
        objects.extend(ingress_obj(i) for i in range(args.ingresses))
        if args.routes:
            objects.extend(gateway_obj(g) for g in range(args.gateways))
            objects.extend(route_obj(i, args.gateways) for i in range(args.routes))
    fake.load(objects)
    del objects
    await fake.start()

    base = await baseline_rss(tmp, hosts)

    dnsd = Dnsd(fake.write_kubeconfig(tmp / "kubeconfig"), hosts)
    await dnsd.start()
    results: dict[str, Any] = {}
    try:
        results["sync_s"] = await dnsd.wait_noerror(svc_name(n - 1))
        if args.ingresses:
            await dnsd.wait_noerror(ingress_host(args.ingresses - 1))
        if args.routes:
            await dnsd.wait_noerror(route_host(args.routes - 1, args.gateways))
        results["sync_all_s"] = time.monotonic() - dnsd.started
        internal = next((m for line in dnsd.lines if (m := re.search(r"synced .* in ([\d.]+) s", line))), None)
        results["sync_internal_s"] = float(internal.group(1)) if internal else None
        await asyncio.sleep(1.0)
        results["rss_bytes"] = rss_bytes(dnsd.pid)
        results["baseline_rss_bytes"] = base
        results["bytes_per_service"] = (results["rss_bytes"] - base) / n
        await fake.wait_watching(2 + (5 if hosts else 0), timeout=30)

        # churn: `changes` modifications at `rate` per second, with a query load alongside
        duration = args.changes / args.rate
        queue: Any = multiprocessing.get_context("fork").Queue()
        names = [svc_name(i) for i in random.sample(range(n), min(n, 2000))]
        loader = multiprocessing.get_context("fork").Process(
            target=query_load, args=(dnsd.port, names, args.qps, duration + 1.0, queue)
        )
        loader.start()
        delays: list[float] = []
        misses = 0

        async def observe(qname: str, address: str, written: float) -> None:
            nonlocal misses
            deadline = written + 2.0
            while time.perf_counter() < deadline:
                try:
                    response = await dnsd.ask(qname, timeout=0.5)
                except dns.exception.Timeout:
                    continue
                if any(
                    rd.to_text() == address
                    for rrset in response.answer
                    if rrset.rdtype == dns.rdatatype.AAAA
                    for rd in rrset
                ):
                    delays.append(time.perf_counter() - written)
                    return
                await asyncio.sleep(0.001)
            misses += 1

        watchers = []
        start = time.perf_counter()
        for k in range(args.changes):
            at = start + k / args.rate
            pause = at - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            i = random.randrange(n)
            address = cluster_ip(i, k + 1)
            fake.put(service(f"team{i % 100}", f"svc{i}", [address]))
            watchers.append(asyncio.create_task(observe(svc_name(i), address, time.perf_counter())))
        await asyncio.gather(*watchers)
        latencies, failures = await asyncio.to_thread(queue.get, True, 60)
        loader.join(10)
        results["changes"] = len(delays)
        results["change_misses"] = misses
        results["event_to_answer_median_ms"] = statistics.median(delays) * 1000
        results["event_to_answer_p99_ms"] = percentile(delays, 99) * 1000
        results["churn_queries"] = len(latencies)
        results["churn_query_failures"] = failures
        results["churn_query_p50_ms"] = percentile(latencies, 50) * 1000
        results["churn_query_p99_ms"] = percentile(latencies, 99) * 1000
        host_delays: list[float] = []
        for k in range(args.host_changes if args.ingresses else 0):
            i = random.randrange(args.ingresses)
            obj = ingress_obj(i, k + 1)
            address = obj["status"]["loadBalancer"]["ingress"][0]["ip"]
            written = time.perf_counter()
            fake.update_status("ingresses", obj["metadata"]["namespace"], obj["metadata"]["name"], obj["status"])
            before = len(delays)
            await observe(ingress_host(i), address, written)
            if len(delays) > before:
                host_delays.append(delays.pop())
            await asyncio.sleep(1 / args.rate)
        if host_delays:
            results["ingress_event_median_ms"] = statistics.median(host_delays) * 1000
            results["ingress_event_p99_ms"] = percentile(host_delays, 99) * 1000
        results["rss_after_churn_bytes"] = rss_bytes(dnsd.pid)
    finally:
        await dnsd.stop()
        await fake.stop()

    mb = 1024 * 1024
    print(f"services / endpoint slices:      {n} / {n}"
          + (f"; ingresses {args.ingresses}, HTTPRoutes {args.routes}, gateways {args.gateways}" if hosts else ""))
    if hosts:
        print(f"all names answered (incl. ingress and route names): {results['sync_all_s']:.2f} s from launch")
    print(
        f"time to first full sync:         {results['sync_s']:.2f} s from launch "
        f"(dnsd's own figure: {results['sync_internal_s']} s)   target < 20 s"
    )
    print(
        f"RSS after sync:                  {results['rss_bytes'] / mb:.1f} MB "
        f"(empty-cluster baseline {base / mb:.1f} MB)   target < 300 MB"
    )
    print(f"bytes per service:               {results['bytes_per_service']:.0f} (service + 1 slice with 2 endpoints)")
    print(
        f"event to answer ({results['changes']} changes at {args.rate:g}/s, {misses} missed): "
        f"median {results['event_to_answer_median_ms']:.1f} ms, "
        f"p99 {results['event_to_answer_p99_ms']:.1f} ms   target p99 < 50 ms"
    )
    print(
        f"queries during churn ({results['churn_queries']} at {args.qps:g}/s, "
        f"{results['churn_query_failures']} failed): p50 {results['churn_query_p50_ms']:.2f} ms, "
        f"p99 {results['churn_query_p99_ms']:.2f} ms   target p99 < 5 ms"
    )
    if "ingress_event_p99_ms" in results:
        print(f"ingress status to answer ({args.host_changes} changes): median "
              f"{results['ingress_event_median_ms']:.1f} ms, p99 {results['ingress_event_p99_ms']:.1f} ms")
    print(f"RSS after churn:                 {results['rss_after_churn_bytes'] / mb:.1f} MB")
    if os.getloadavg()[0] > 1.5:
        print(f"note: the machine was shared (load average {os.getloadavg()[0]:.1f}): other work ran meanwhile")
    met = (
        results.get("sync_all_s", results["sync_s"]) < 20
        and results["rss_bytes"] < 300 * mb
        and results["event_to_answer_p99_ms"] < 50
        and results["churn_query_p99_ms"] < 5
    )
    print("all targets met" if met else "TARGET MISSED")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50_000)
    parser.add_argument("--ingresses", type=int, default=10_000)
    parser.add_argument("--routes", type=int, default=10_000, help="HTTPRoutes")
    parser.add_argument("--gateways", type=int, default=100, help="Gateways the routes attach to")
    parser.add_argument("--host-changes", type=int, default=200, help="Ingress status updates timed")
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--qps", type=float, default=500.0, help="queries per second during churn")
    if pin(1):
        # The fake API server runs in this process: it is part of the load, on the load's core, so that
        # dnsd (on core 0) does not share its core with the server it lists from.
        os.sched_setaffinity(0, {1})
    sys.exit(asyncio.run(main(parser.parse_args())))
