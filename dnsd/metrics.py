"""Every Prometheus metric dnsd exports (names start `dnsd_`, counters end `_total`, times `_seconds`).

Per-query accounting is on the hot path, so it does not go through prometheus-client's labelled
children (a lock and a dict lookup per `.labels()` call): the handler bumps plain integers in
`QueryStats`, keyed by a tuple of already-bounded label values, and `QueryStatsCollector` turns them
into metric families only when `/metrics` is scraped. Everything else (informer, cache, upstreams)
changes rarely and uses ordinary prometheus-client objects declared here, so that every name lives in
one file and the naming lint has one place to look.

Label values are bounded: qtypes outside `QTYPE_NAMES` are reported as "other", rcodes by name,
sources and transports from closed sets. No label ever holds a query name or a client address.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

QTYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA",
}
RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS",
}
#: Where an answer came from (the contract's `source` label).
SOURCES = ("zone", "cache", "recursion", "dns64", "stale", "refused", "error")
TRANSPORTS = ("udp", "tcp")
#: Kinds of fast-path answer (the `kind` label of dnsd_fast_path_answers_total).
FAST_PATH_KINDS = ("stored", "template", "cached")

#: Latency buckets in seconds: the fast path answers in microseconds, recursion in milliseconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)


def qtype_label(qtype: int) -> str:
    """Bounded qtype label: a known mnemonic or 'other'."""
    return QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    """Bounded rcode label."""
    return RCODE_NAMES.get(rcode, "other")


Snapshot = tuple[dict[Any, Any], ...]


class QueryStats:
    """Hot-path counters: plain integers, read by the collector at scrape time."""

    __slots__ = ("buckets", "dropped", "latency_sum", "peers", "queries", "rrl")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, ...], int] = {}
        self.latency_sum: dict[str, float] = {}
        self.buckets: dict[str, list[int]] = {}
        self.dropped: dict[str, int] = {}
        self.rrl: dict[str, int] = {}
        #: The latest snapshots of the other --workers processes, by worker number (watching process only).
        self.peers: dict[int, Snapshot] = {}

    def snapshot(self) -> Snapshot:
        """Plain copies of the counters, for a worker to send to the watching process."""
        return (dict(self.queries), dict(self.latency_sum),
                {k: list(v) for k, v in self.buckets.items()}, dict(self.dropped), dict(self.rrl))

    def merged(self) -> QueryStats:
        """This process's counters plus every peer's: what /metrics reports for the whole pod."""
        if not self.peers:
            return self
        total = QueryStats()
        for queries, latency_sum, buckets, dropped, rrl in (self.snapshot(), *self.peers.values()):
            for target, source in ((total.queries, queries), (total.latency_sum, latency_sum),
                                   (total.dropped, dropped), (total.rrl, rrl)):
                for key, value in source.items():
                    target[key] = target.get(key, 0) + value
            for key, counts in buckets.items():
                mine = total.buckets.setdefault(key, [0] * len(counts))
                for i, count in enumerate(counts):
                    mine[i] += count
        return total

    def answered(self, key: tuple[str, ...], seconds: float) -> None:
        """One answered query, `key` = (transport, qtype label, rcode label, source[, fast-path kind]),
        and its latency, observed under `source`.

        One call for both, since every answer makes both (the fast path's cost is counted in calls).
        The fast path passes a fifth label saying which kind of fast answer it was ("stored",
        "template", "cached"), so that `dnsd_fast_path_answers_total` costs nothing beyond this
        count; slow-path answers have four. The histogram's count is the sum of its buckets, so it
        is not kept apart.
        """
        queries = self.queries
        queries[key] = queries.get(key, 0) + 1
        source = key[3]
        buckets = self.buckets.get(source)
        if buckets is None:
            buckets = self.buckets[source] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.latency_sum[source] = 0.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[source] += seconds

    def drop(self, reason: str) -> None:
        """A packet not answered (garbage, a response, rate limited)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def rate_limited(self, action: str) -> None:
        """One response held back by RRL: 'dropped' or 'slipped' (sent truncated)."""
        self.rrl[action] = self.rrl.get(action, 0) + 1


class QueryStatsCollector(Collector):
    """Exports a QueryStats as dnsd_queries_total, dnsd_query_duration_seconds, dnsd_dropped_total."""

    def __init__(self, stats: QueryStats) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []  # families are built at collect time; an empty describe keeps registration cheap

    def collect(self) -> Iterator[Any]:
        stats = self.stats.merged()
        queries = CounterMetricFamily(
            "dnsd_queries", "DNS queries answered, by transport, qtype, rcode and answer source",
            labels=["transport", "qtype", "rcode", "source"],
        )
        by_labels: dict[tuple[str, ...], int] = {}
        fast: dict[str, int] = dict.fromkeys(FAST_PATH_KINDS, 0)
        for key, value in stats.queries.items():
            by_labels[key[:4]] = by_labels.get(key[:4], 0) + value
            if len(key) > 4:
                fast[key[4]] = fast.get(key[4], 0) + value
        for labels, value in sorted(by_labels.items()):
            queries.add_metric(list(labels), value)
        yield queries
        fast_path = CounterMetricFamily(
            "dnsd_fast_path_answers", "Queries answered by the fast path without a full decode, by kind: "
            "stored (a pre-encoded answer for that name), template (NXDOMAIN/NODATA/REFUSED built from "
            "a per-zone template), cached (a cached recursive answer)", labels=["kind"],
        )
        for kind, value in sorted(fast.items()):
            fast_path.add_metric([kind], value)
        yield fast_path
        latency = HistogramMetricFamily(
            "dnsd_query_duration_seconds", "Time from receiving a query to sending its answer",
            labels=["source"],
        )
        for source, counts in sorted(stats.buckets.items()):
            cumulative = 0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([source], buckets, stats.latency_sum[source])
        yield latency
        dropped = CounterMetricFamily(
            "dnsd_dropped_packets", "Packets received but not answered, by reason", labels=["reason"],
        )
        for reason, value in sorted(stats.dropped.items()):
            dropped.add_metric([reason], value)
        yield dropped
        rrl = CounterMetricFamily(
            "dnsd_rrl_responses", "Responses held back by response rate limiting, by action (dropped, slipped)",
            labels=["action"],
        )
        for action in ("dropped", "slipped"):
            rrl.add_metric([action], stats.rrl.get(action, 0))
        yield rrl
        per_worker = CounterMetricFamily(
            "dnsd_worker_queries", "Queries answered by each --workers process (worker 0 watches the cluster)",
            labels=["worker"],
        )
        per_worker.add_metric(["0"], sum(self.stats.queries.values()))
        for number, snapshot in sorted(self.stats.peers.items()):
            per_worker.add_metric([str(number)], sum(snapshot[0].values()))
        yield per_worker


def register_query_stats(stats: QueryStats, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose `stats` on `registry` (the default registry unless a test passes its own)."""
    registry.register(QueryStatsCollector(stats))


# ---- zone -------------------------------------------------------------------------------------
class SignerCollector(Collector):
    """The zone signer's state, read at scrape time (`dnssec.signer.Signer`)."""

    def __init__(self, signer: Any, *more: Any) -> None:
        self.signer = signer
        self.signers = (signer, *more)  # one per view: counts are summed, the earliest expiry shown

    def collect(self) -> Iterator[Any]:
        signer = self.signer
        made = CounterMetricFamily("dnsd_dnssec_signatures", "RRSIGs made by the zone signer")
        made.add_metric([], sum(s.signatures_made for s in self.signers))
        yield made
        expiry = GaugeMetricFamily("dnsd_dnssec_next_expiry_timestamp_seconds",
                                   "Expiration of the oldest signature served (seconds since the epoch)")
        expiries = [s.next_expiry for s in self.signers if s.next_expiry is not None]
        if expiries:
            expiry.add_metric([], min(expiries))
        yield expiry
        states = GaugeMetricFamily("dnsd_dnssec_key_state", "Keys by zone, key tag and state (1: in it)",
                                   labels=["zone", "tag", "role", "state"])
        now = signer.clock()
        for key in signer.keys:
            role = "ksk" if key.sep else "zsk"
            for state, value in (("published", key.published(now)), ("active", key.active(now))):
                states.add_metric([key.zone, str(key.tag), role, state], 1.0 if value else 0.0)
        yield states


def register_signer(signer: Any, *more: Any, registry: CollectorRegistry = REGISTRY) -> None:
    """Export the signers' metrics (once per process, when --dnssec-keys is set; one signer per view)."""
    registry.register(SignerCollector(signer, *more))


ZONE_SERIAL = Gauge("dnsd_zone_serial", "SOA serial of the served zone")
ZONE_RECORDS = Gauge("dnsd_zone_records", "RRsets currently served from the zone")
ZONE_SERVICES = Gauge("dnsd_zone_services", "Services currently known to the zone index")
ZONE_NAMES = Gauge("dnsd_zone_names", "Names published from cluster objects, by source kind and view "
                   "(cluster: --allow-recursion clients; internet: everyone else)", ["source", "view"])
OBJECTS_SKIPPED = Counter("dnsd_objects_skipped_total",
                          "Names from cluster objects not served, by reason (invalid_hostname, outside_zones)",
                          ["reason"])

# ---- sources (manifests file, Kubernetes informer) --------------------------------------------
SOURCE_EVENTS = Counter(
    "dnsd_informer_events_total", "Watch events applied to the zone, by object kind and event type",
    ["kind", "type"],
)
SOURCE_RESTARTS = Counter(
    "dnsd_informer_restarts_total", "List/watch restarts, by object kind and reason", ["kind", "reason"],
)
SOURCE_LAST_SYNC = Gauge(
    "dnsd_informer_last_sync_timestamp_seconds", "Unix time of the last full list, by object kind",
    ["kind"],
)
SOURCE_SYNCED = Gauge("dnsd_informer_synced", "1 once the source has delivered its first full state")
SOURCE_ERRORS = Counter("dnsd_source_errors_total", "Source reads or API calls that failed", ["source"])

# ---- answer cache (fast path) and recursion ----------------------------------------------------
CACHE_ENTRIES = Gauge("dnsd_cache_entries", "Entries in the answer cache", ["cache"])
CACHE_HITS = Counter("dnsd_cache_hits_total", "Answers served from a cache", ["cache"])
CACHE_MISSES = Counter("dnsd_cache_misses_total", "Lookups that missed a cache", ["cache"])
UPSTREAM_HEALTHY = Gauge(
    "dnsd_upstream_healthy",
    "1 when the last exchange over this recursion path succeeded (path: root, forwarder, nat64); "
    "informational, readiness does not depend on it", ["path"])
PREFETCHES = Counter("dnsd_prefetches_total",
                     "Popular recursive answers refreshed before they expired (prefetch)")
UPSTREAM_QUERIES = Counter(
    "dnsd_upstream_queries_total", "Queries sent to upstream servers, by mode and transport",
    ["mode", "transport"],
)
UPSTREAM_FAILURES = Counter(
    "dnsd_upstream_failures_total", "Upstream queries that failed, by mode and reason", ["mode", "reason"],
)
# ---- limits ------------------------------------------------------------------------------------
LIMIT_HITS = Counter(
    "dnsd_limit_hits_total",
    "Work refused because a limit was reached, by limit (tcp_connections, tcp_per_client, "
    "tcp_write_stalled, recursion_outstanding, recursion_per_client, recursion_per_zone, recursion_jostled)",
    ["limit"],
)
TCP_CONNECTIONS = Gauge("dnsd_tcp_connections", "TCP connections open")
RRL_BUCKETS = Gauge("dnsd_rrl_buckets", "Response rate limiting buckets held (client network, response kind)")

DNS64_SYNTHESIZED = Counter("dnsd_dns64_synthesized_total", "AAAA answers synthesized by DNS64", ["kind"])
DNSSEC_VALIDATIONS = Counter("dnsd_dnssec_validations_total",
                             "Recursive answers judged by the DNSSEC validator", ["result"])
AGGRESSIVE_ANSWERS = Counter(
    "dnsd_aggressive_answers_total",
    "Negative answers synthesized from cached validated NSEC/NSEC3 ranges (RFC 8198), by kind "
    "(nxdomain, nodata) and proof (nsec, nsec3)", ["kind", "proof"])

# ---- zone transfers (dnsd as hidden primary) ---------------------------------------------------
TRANSFERS = Counter(
    "dnsd_transfers_total",
    "Zone transfer requests, by kind (axfr, ixfr, ixfr_udp) and result (full, incremental, current, "
    "refused, notauth, badkey, badsig, badtime, servfail, formerr, aborted)",
    ["kind", "result"],
)
NOTIFIES = Counter(
    "dnsd_notifies_total",
    "NOTIFY messages sent to secondaries, by result (acknowledged, timeout, refused, badsig, error)",
    ["result"],
)
JOURNAL_SERIALS = Gauge("dnsd_ixfr_journal_serials", "Serials held in the IXFR journal")
JOURNAL_RECORDS = Gauge("dnsd_ixfr_journal_records", "Records (deleted plus added) held in the IXFR journal")

# ---- the delegation doctor (dnsd check, run periodically in the server) ------------------------------
DELEGATION_OK = Gauge(
    "dnsd_delegation_ok",
    "1 when the parent zone's NS, glue and DS of this zone agree with dnsd's apex and keys (the periodic "
    "`dnsd check`); 0 when they disagree or the parent cannot be reached; informational, never readiness",
    ["zone"])
