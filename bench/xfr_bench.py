"""Zone transfer benchmark: dnsd as hidden primary against Knot, and change-to-secondary delay.

Two measurements, both on 127.0.0.1 only:

1. **AXFR time** for 10,000 and 100,000 Services (`--sizes`): dnsd serves `bench.lab.Cluster`'s manifests
   file, Knot serves the same records from the equivalent zone file (`Cluster.zone_file`, the same
   owner names, records and TTLs; the record counts of both transfers are printed and must match), each
   pinned to core 0. The client is `kdig +noall AXFR` (C, pinned to core 1), the same for both; the
   figure is the median wall time of `--repeats` transfers, kdig's start-up included for both (a few ms).
   dnsd's RSS is sampled every 10 ms during its transfers: the peak minus the RSS before them is what a
   transfer costs in memory (a second copy of a 100,000-Service zone would be well over 100 MB).
2. **Change to answer at a Knot secondary**: the fake Kubernetes API (`tests/fakekube.py`), dnsd watching
   it with `--notify` and `--transfer-allow` for a Knot secondary with a TSIG key (its refresh timer is
   the SOA's two hours, so only NOTIFY and IXFR explain a change arriving). `--changes` times (default
   200) one Service gets a new address through the API; the delay is from the API write to the first
   answer from Knot carrying the new address (polled over UDP every millisecond). Median and p99.

Run: `.venv/bin/python bench/xfr_bench.py` (about two minutes; `--sizes 10000` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lab import (
    HOST,
    LOAD_CPUS,
    PYTHON,
    ZONE,
    Cluster,
    Dnsd,
    Knot,
    free_port,
    machine,
    percentile,
    rss_bytes,
    tool_versions,
)
from tests.fakekube import FakeKube, service
from tests.hierarchy import require
from tests.secondaries import Secondary


class TransferKnot(Knot):
    """The lab's Knot, allowing AXFR from 127.0.0.1."""

    def prepare(self) -> None:
        super().prepare()
        conf = self.workdir / "knot.conf"
        text = conf.read_text().replace(
            "template:", "acl:\n  - id: xfr\n    address: 127.0.0.1\n    action: transfer\ntemplate:", 1)
        text = text.replace('    file: "', '    acl: xfr\n    file: "')
        conf.write_text(text)


def kdig_axfr(port: int, key: str | None = None) -> tuple[float, int]:
    """(seconds, records) of one AXFR by kdig pinned to the load core."""
    argv = [require("taskset"), "-c", LOAD_CPUS, require("kdig"), "-p", str(port), f"@{HOST}", "AXFR", ZONE,
            "+noall", "+answer", "+nocomments"]
    if key is not None:
        argv[3:3] = ["-y", key]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    elapsed = time.perf_counter() - started
    return elapsed, sum(1 for line in result.stdout.splitlines() if line and not line.startswith(";"))


class PeakRss:
    """The highest VmRSS of a process while the `with` block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def axfr_times(sizes: list[int], repeats: int) -> None:
    print("| Services | records | dnsd AXFR (median) | Knot AXFR (median) | dnsd / Knot | dnsd RSS before | "
          "peak during AXFR |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        cluster = Cluster(size)
        tmp = Path(tempfile.mkdtemp(prefix="xfr-bench-"))
        try:
            manifests = tmp / "cluster.yaml"
            manifests.write_text(cluster.manifests())
            dnsd = Dnsd("dnsd", manifests=manifests, probe=cluster.last_name,
                        extra=("--transfer-allow", "127.0.0.0/8"))
            with dnsd:
                before = rss_bytes(dnsd.pid)
                with PeakRss(dnsd.pid) as peak:
                    dnsd_runs = [kdig_axfr(dnsd.port) for _ in range(repeats)]
            with TransferKnot("knot", zones={ZONE: cluster.zone_file()}) as knot:
                knot_runs = [kdig_axfr(knot.port) for _ in range(repeats)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        d = statistics.median(t for t, _ in dnsd_runs)
        k = statistics.median(t for t, _ in knot_runs)
        records = {n for _, n in dnsd_runs}, {n for _, n in knot_runs}
        note = "" if records[0] == records[1] else f" (records differ: dnsd {records[0]}, Knot {records[1]})"
        print(f"| {size:,} | {min(records[0]):,} | {d * 1000:.0f} ms | {k * 1000:.0f} ms | {d / k:.1f}x | "
              f"{before / 2**20:.0f} MB | {peak.peak / 2**20:.0f} MB |{note}", flush=True)


async def change_delay(changes: int) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="xfr-bench-"))
    fake = FakeKube()
    await fake.start()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    key_path = tmp / "knot-xfr.key"
    key_path.write_text(f'key "knot-xfr" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    try:
        for i in range(200):
            fake.put(service("default", f"s{i}", [f"fd00:10:96::{i:x}"]))
        kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig")
        port = free_port()
        knot = Secondary("knot", tmp / "knot", ZONE, port, "knot-xfr", secret)
        argv = [PYTHON, "-m", "dnsd", "--zone", ZONE, "--source", "kubernetes", "--kubeconfig",
                str(kubeconfig), "--recursion", "off", "--listen", f"{HOST}:{port}", "--http", "off",
                "--lame-duck", "0", "--log-level", "warning", "--tsig-key-file", str(key_path),
                "--transfer-allow", "127.0.0.0/8=knot-xfr", "--notify", f"{HOST}:{knot.port}=knot-xfr"]
        log = (tmp / "dnsd.log").open("wb")
        dnsd = subprocess.Popen([require("taskset"), "-c", "0", *argv], cwd=Path(__file__).resolve().parents[1],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.to_thread(_wait_soa, port)
            knot.start()
            serial = await asyncio.to_thread(_serial_of, port)
            await asyncio.to_thread(knot.wait_serial, serial, 60)
            delays = []
            for n in range(changes):
                address = f"fd00:10:97::{n + 1:x}"
                started = time.perf_counter()
                fake.put(service("default", "moving", [address]))
                qname = f"moving.default.svc.{ZONE}"
                deadline = started + 30
                while address not in await asyncio.to_thread(knot.addresses, qname):
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"change {n} did not reach Knot:\n{knot.log_text()[-3000:]}")
                    await asyncio.sleep(0.001)
                delays.append(time.perf_counter() - started)
            return delays
        finally:
            dnsd.terminate()
            dnsd.wait(15)
            log.close()
            knot.stop()
    finally:
        await fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_soa(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = dns.query.udp(dns.message.make_query(ZONE, "SOA"), HOST, port=port, timeout=0.5)
            if reply.rcode() == 0 and reply.answer:
                return
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError("dnsd did not answer the SOA")


def _serial_of(port: int) -> int:
    reply = dns.query.udp(dns.message.make_query(ZONE, "SOA"), HOST, port=port, timeout=2)
    return int(next(r for r in reply.answer if r.rdtype == dns.rdatatype.SOA)[0].serial)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    print(f"# {machine()}\n# {tool_versions()}\n")
    if args.sizes:
        axfr_times(args.sizes, args.repeats)
    if args.changes:
        delays = asyncio.run(change_delay(args.changes))
        print(f"\nKubernetes change -> changed answer at a Knot secondary, {len(delays)} changes: "
              f"median {statistics.median(delays) * 1000:.0f} ms, p99 {percentile(delays, 99) * 1000:.0f} ms, "
              f"max {max(delays) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
