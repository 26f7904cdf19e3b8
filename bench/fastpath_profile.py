"""Where a fast-path answer's time goes: the handler's steps, timed one by one, per query.

Run: `.venv/bin/python bench/fastpath_profile.py [--iterations 200000]`. Not a test: it prints a
table of microseconds per query for each step of `Handler.fast` on a zone answer (and on a cached
recursive answer), next to the whole `Handler.respond`, and next to the cost of one UDP round trip
through the kernel on loopback (sendto + recvfrom on the server side), so that the next step is
clear: what is left in Python that could go, and what is the socket's floor.

The steps are the ones `Handler.fast` performs: `fast_key` (flag checks, find the end of the name,
lower-case it, the ACL lookup), the dictionary lookup, building the reply (ID, flags, question as
asked, then the template), and the metrics (`QueryStats.count` and `observe`). Each is timed in a
loop over a realistic mix of queries (plain and EDNS, different names and spellings).

Then the same for a name never seen (`r<hex>.default.svc.Z AAAA`, each query a new name, as in a
random-subdomain flood): the store misses, `_name_text` walks the labels and spells the name,
`ZoneIndex.existence` says it does not exist, and the zone's NXDOMAIN template is filled in.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnsd import config as config_module  # noqa: E402
from dnsd.handler import CachedAnswer, Handler, _name_text, ttl_positions  # noqa: E402
from dnsd.kube.manifests import ManifestSource  # noqa: E402
from dnsd.metrics import QueryStats  # noqa: E402
from dnsd.zone import ZoneIndex  # noqa: E402

Z = "c2.k8s.ooo"
NAMES = [f"sample-service.default.svc.{Z}", f"frontend.shop.svc.{Z}", f"db-0.db.shop.svc.{Z}",
         f"gateway.shop.svc.{Z}", f"_http._tcp.sample-service.default.svc.{Z}"]


def handler() -> Handler:
    cfg = config_module.from_mapping({
        "zone": Z, "source": f"file:{REPO / 'examples/cluster.yaml'}", "recursion": "off",
        "reverse_zone": ["2001:db8:42::/48"],
    })
    zone = ZoneIndex(cfg)
    ManifestSource(REPO / "examples/cluster.yaml", zone).load()
    zone.mark_synced()
    return Handler(cfg, zone, QueryStats())


def queries() -> list[bytes]:
    out = []
    for name in NAMES:
        for spelling in (name, name.upper()):
            for edns in (False, 0):
                query = dns.message.make_query(spelling, "SRV" if name.startswith("_") else "AAAA", use_edns=edns)
                query.flags &= ~dns.flags.RD
                out.append(query.to_wire())
    return out


def per_call(fn: Callable[[bytes], object], data: list[bytes], iterations: int) -> float:
    """Microseconds per call of fn over the query mix."""
    count = len(data)
    started = time.perf_counter()
    for i in range(iterations):
        fn(data[i % count])
    return (time.perf_counter() - started) / iterations * 1e6


def loop_overhead(data: list[bytes], iterations: int) -> float:
    return per_call(lambda d: None, data, iterations)


def udp_round_trip(iterations: int) -> float:
    """Server-side cost of one recvfrom + sendto on loopback, with a client thread feeding it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(server.getsockname())
    payload = queries()[0]
    total = 0.0
    for _ in range(iterations // 100):
        for _ in range(100):
            client.send(payload)
        started = time.perf_counter()
        for _ in range(100):
            data, addr = server.recvfrom(4096)
            server.sendto(data, addr)
        total += time.perf_counter() - started
        for _ in range(100):
            client.recv(4096)
    server.close()
    client.close()
    return total / (iterations // 100 * 100) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args()
    n = args.iterations
    h = handler()
    data = queries()
    for d in data:  # the slow path stores every answer for the fast path
        h.respond(d, "192.0.2.1", False)
    if not all(h.fast(d, "192.0.2.1", False) is not None for d in data):
        raise SystemExit("the slow path did not store every answer: nothing to profile")

    base = loop_overhead(data, n)
    keys = {d: h.fast_key(d, "192.0.2.1") for d in data}
    responses = h._responses
    entries = {d: responses[k[0]] for d, k in keys.items() if k is not None}
    stats = h.stats
    labels = ("udp", "AAAA", "NOERROR", "zone", "stored")

    def build(d: bytes) -> bytes:
        heads, tail = entries[d][0], entries[d][1]
        qend = keys[d][1]  # type: ignore[index]
        return b"".join((d[:2], heads[d[2] & 1], d[12:qend], tail))

    def metrics(d: bytes) -> None:
        stats.answered(labels, 0.00001)

    rows = [
        ("Handler.respond (fast path, whole)", per_call(lambda d: h.respond(d, "192.0.2.1", False), data, n)),
        ("  fast_key (checks, lower-case, ACL)", per_call(lambda d: h.fast_key(d, "192.0.2.1"), data, n)),
        ("  ACL lookup alone", per_call(lambda d: h.acl.allows("192.0.2.1"), data, n)),
        ("  dictionary lookup", per_call(lambda d: responses.get(keys[d][0]), data, n)),  # type: ignore[index]
        ("  build the reply (join)", per_call(build, data, n)),
        ("  metrics (QueryStats.answered)", per_call(metrics, data, n)),
        ("  perf_counter x2", per_call(lambda d: (time.perf_counter(), time.perf_counter()), data, n)),
    ]

    # A cached recursive answer: the same steps plus the clock check of CachedAnswer.at.
    reply = h.respond(data[0], "192.0.2.1", False)
    positions = ttl_positions(reply, data[0].index(0, 12) + 5) if isinstance(reply, bytes) else None
    if not isinstance(reply, bytes) or positions is None:
        raise SystemExit("no answer to build a cached recursive entry from")
    cached = CachedAnswer(reply, time.monotonic(), *positions, labels, labels)
    rows.append(("CachedAnswer.at (recursive: clock + expiry)", per_call(lambda d: cached.at(time.monotonic()),
                                                                         data, n)))

    # A flood of names never seen: every query a new name, answered from the NXDOMAIN template.
    unseen = [dns.message.make_query(f"r{i:x}.default.svc.{Z}", "AAAA", use_edns=i % 2 - 1) for i in range(n)]
    for query in unseen:
        query.flags &= ~dns.flags.RD
    flood = [query.to_wire() for query in unseen]
    h.respond(flood[0], "192.0.2.1", False)
    h.respond(flood[1], "192.0.2.1", False)  # one slow-path answer per template (with and without EDNS)
    if h.fast(flood[2], "192.0.2.1", False) is None:
        raise SystemExit("no NXDOMAIN template was built: nothing to profile")
    flood_keys = [h.fast_key(d, "192.0.2.1") for d in flood]
    texts = [_name_text(k[0]) for k in flood_keys if k is not None]
    template = next(iter(h._templates.values()))
    qend = flood_keys[0][1] if flood_keys[0] is not None else 0
    rows += [
        ("Handler.respond (NXDOMAIN template, unseen name, whole)",
         per_call(lambda d: h.respond(d, "192.0.2.1", False), flood, n)),
        ("  _name_text (walk the labels, spell the name)",
         per_call(lambda d: _name_text(d), [k[0] for k in flood_keys if k is not None], n)),
        ("  ZoneIndex.existence", per_call(lambda t: h.zone.existence(t), texts, n)),  # type: ignore[arg-type,return-value]
        ("  NegativeTemplate.reply", per_call(lambda d: template.reply(d, qend), flood[:1], n)),
    ]
    rows.append(("UDP recvfrom + sendto on loopback (kernel floor)", udp_round_trip(min(n, 100_000))))

    print(f"# fast path profile: {n:,} iterations, Python {sys.version.split()[0]}")
    print("| step | µs per query |")
    print("|---|---:|")
    for label, value in rows:
        net = value - base if not label.startswith("UDP") else value
        print(f"| {label} | {net:.2f} |")
    print(f"\n(loop overhead of {base:.2f} µs per call subtracted from the in-process rows)")


if __name__ == "__main__":
    main()
