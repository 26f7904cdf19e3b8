"""How long a manifests reload holds the event loop, in CPU time, so that machine load does not blur it.

Run: `.venv/bin/python bench/reload_stall.py [--services 2000] [--reloads 20]`. Not a test: it loads a
manifests file of `--services` Services (the soak's cluster), then rewrites it `--reloads` times with 5
Services moved and one added or removed (the soak's churn), and applies each reload twice over, on two
zones: in one piece (`ZoneIndex.replace`, how reloads were applied before) and in steps
(`ManifestSource._apply_stepped`, how they are applied now). Meanwhile a ticker task runs whenever the
loop is free; the main thread's CPU time between two ticks is the longest stretch the loop could not
answer a query. Reported: the largest and the 99th percentile stretch per way, in milliseconds of CPU.
The parse itself (in a thread or a child process) is left out: it does not hold the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import Cluster, percentile, write_atomically
from soak import churn

import dnsd.config
from dnsd.kube.manifests import ManifestSource
from dnsd.zone import ZoneIndex


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-stall-"))
    cluster = Cluster(args.services)
    path = tmp / "cluster.yaml"
    write_atomically(path, cluster.manifests())
    config = dnsd.config.from_mapping({"zone": cluster.zone, "recursion": "off"})
    sources = {way: ManifestSource(path, ZoneIndex(config)) for way in ("one piece", "steps")}
    for source in sources.values():
        source.load()
        source.zone.mark_synced()
    stretches: dict[str, list[float]] = {way: [] for way in sources}
    current: list[str] = []
    last = [time.thread_time()]

    async def ticker() -> None:
        while True:
            now = time.thread_time()
            if current:
                stretches[current[0]].append((now - last[0]) * 1e3)
            last[0] = now
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    rng = random.Random(5)
    generations: dict[int, int] = {}
    for tick in range(1, args.reloads + 1):
        churn(cluster, generations, tick, 5, rng, path)
        parsed = {way: await asyncio.to_thread(source._read) for way, source in sources.items()}
        for way, source in sources.items():
            await asyncio.sleep(0)
            current[:] = [way]
            last[0] = time.thread_time()
            if way == "steps":
                await source._apply_stepped(parsed[way])
            else:
                source._apply(parsed[way])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            current.clear()
    task.cancel()
    return stretches


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    stretches = asyncio.run(measure(args))
    print(f"# reload stalls: {args.services:,} services, {args.reloads} reloads, CPU ms the loop was held")
    print("| way | stretches | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for way, values in stretches.items():
        print(f"| {way} | {len(values):,} | {percentile(sorted(values), 99):.1f} | {max(values, default=0):.1f} |")


if __name__ == "__main__":
    main()
