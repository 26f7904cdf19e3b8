"""Where the zone's memory goes: the informer benchmark's objects loaded in-process, bytes per structure.

Run: `.venv/bin/python bench/zone_memory.py` (options: `--services N`, `--ingresses N`, `--routes N`,
`--gateways N`, `--top N`). It builds the same API objects as `bench/informer_bench.py`, slims them with
the informer's converters (`kube.model`), and feeds a cluster `ZoneIndex` plus the Internet's
`InternetView` (following it, as `app` wires them) the way the informer does: one stepped resync per
kind, then `mark_synced`. Not a test and not a timing: it prints

- tracemalloc's total and its top allocation sites (file:line) for the load;
- a `sys.getsizeof`-based deep size of each structure of each view (`_names`, `_present`, `_below`,
  `_contributions`, `_first_labels`, `services`, `slices`, `objects`, ...). An object reachable from
  several structures is counted once, in the first one listed (the cluster view's first), so the
  Internet view's figures are what it adds on top of what it shares with the cluster view;
- the process's RSS before and after, and after `malloc_trim(0)` (glibc keeps freed memory).

It differs from the real process in what it leaves out (the HTTP client, JSON pages, the event loop's
buffers), which is the point: the difference to the benchmark's RSS is the informer's own.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.informer_bench import HOSTS, ZONE, cluster_ip, gateway_obj, ingress_obj, route_obj  # noqa: E402
from dnsd.config import load  # noqa: E402
from dnsd.kube.model import (  # noqa: E402
    gateway_from_api,
    ingress_from_api,
    route_from_api,
    service_from_api,
    slice_from_api,
)
from dnsd.views import InternetView  # noqa: E402
from dnsd.zone import ZoneIndex  # noqa: E402
from tests.fakekube import endpoint_slice, service  # noqa: E402

STRUCTURES = ("_names", "_present", "_below", "_contributions", "_first_labels", "services", "slices",
              "_slices_by_service", "objects", "_routes_by_gateway", "namespaces")


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of obj and everything it references that `seen` does not hold yet (iterative)."""
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (tuple, list, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__slots__") and not isinstance(item, type):
            stack.extend(getattr(item, slot) for slot in item.__slots__ if hasattr(item, slot))
    return total


def build(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    """The benchmark's objects, slimmed: (services, slices, host objects)."""
    services, slices = [], []
    for i in range(args.services):
        namespace = f"team{i % 100}"
        services.append(service_from_api(service(namespace, f"svc{i}", [cluster_ip(i)])))
        slices.append(slice_from_api(endpoint_slice(
            namespace, f"svc{i}-x1", f"svc{i}",
            [f"fd00:10:244:{i // 65536:x}::{i % 65536:x}:1", f"fd00:10:244:{i // 65536:x}::{i % 65536:x}:2"])))
    objects: list[Any] = [ingress_from_api(ingress_obj(i)) for i in range(args.ingresses)]
    if args.routes:
        objects.extend(gateway_from_api(gateway_obj(g)) for g in range(args.gateways))
        objects.extend(route_from_api(route_obj(i, args.gateways), "HTTPRoute") for i in range(args.routes))
    return services, slices, objects


async def feed(zone: ZoneIndex, services: list[Any], slices: list[Any], objects: list[Any]) -> None:
    """As the informer: one resync per kind (in its list order), then synced."""
    await zone.resync_services(services, None, 1)
    await zone.resync_slices(slices, None, 2)
    for kind in ("ingress", "gateway", "httproute"):
        await zone.resync_objects((kind,), [o for o in objects if o.ident[0] == kind], None, 3)
    zone.mark_synced()


def malloc_trim() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50_000)
    parser.add_argument("--ingresses", type=int, default=10_000)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    argv = ["--zone", ZONE, "--source", "kubernetes"]
    if args.ingresses or args.routes:
        argv += ["--zone", HOSTS, "--ingress", "--gateway-api"]
    config = load(argv)
    mb = 1024 * 1024

    rss_start = rss()
    tracemalloc.start(1)
    services, slices, objects = build(args)
    built = tracemalloc.get_traced_memory()[0]
    cluster = ZoneIndex(config)
    internet = InternetView(config, cluster)
    asyncio.run(feed(cluster, services, slices, objects))
    del services, slices, objects
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"{args.services} services + slices, {args.ingresses} ingresses, {args.routes} HTTPRoutes "
          f"on {args.gateways} gateways")
    print(f"tracemalloc: {traced / mb:.1f} MB live after the load (slim records alone: {built / mb:.1f} MB "
          f"before the views; the views share them)")
    print(f"top {args.top} allocation sites:")
    for stat in snapshot.statistics("lineno")[: args.top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {stat.size / mb:7.1f} MB {stat.count:9d} blocks  {where}")

    seen: set[int] = set()
    # Module-level tables and the config count once, first, so that neither view is charged for them.
    deep_size(config, seen)
    for label, view in (("cluster", cluster), ("internet", internet)):
        print(f"{label} view (objects already counted elsewhere excluded):")
        total = 0
        for attr in STRUCTURES:
            value = getattr(view, attr)
            size = deep_size(value, seen)
            total += size
            print(f"  {attr:20s} {len(value):8d} entries  {size / mb:7.1f} MB")
        print(f"  {'total':20s} {'':8s}          {total / mb:7.1f} MB")
    gc.collect()
    before_trim = rss()
    trimmed = malloc_trim()
    print(f"RSS: {rss_start / mb:.1f} MB at start, {before_trim / mb:.1f} MB loaded (tracemalloc's own "
          f"overhead included)" + (f", {rss() / mb:.1f} MB after malloc_trim(0)" if trimmed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
