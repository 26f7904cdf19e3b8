"""Composition root and lifecycle: the only module that wires the parts together.

`serve(config)` builds the zone index, the source that feeds it, the handler, the listeners and the
HTTP side (and, with `--workers N`, the N-1 follower processes of `dnsd.workers`), then waits for
SIGTERM or SIGINT. Shutdown is graceful: `/readyz` turns 503 first (lame
duck, `lame_duck` seconds) while queries are still answered, so that Kubernetes stops sending new
traffic; then the listeners close, the source stops, and `serve` returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from dnsd import metrics, xfr
from dnsd.config import Config
from dnsd.errors import SourceError, StartupError
from dnsd.handler import Handler, Recursor
from dnsd.http import HttpServer
from dnsd.kube.manifests import ManifestSource
from dnsd.metrics import QueryStats, register_query_stats
from dnsd.transport import Listeners
from dnsd.views import InternetView
from dnsd.workers import WorkerPool, follow
from dnsd.zone import ZoneIndex

if TYPE_CHECKING:
    from dnsd.dnssec.signer import Signer

logger = logging.getLogger(__name__)
#: Seconds between two runs of the signer's periodic work (key timing, signature refresh). The
#: environment variable DNSD_SIGNER_TICK shortens it for tests of rollovers in real time.
SIGNER_TICK = 60.0


class App:
    """One dnsd process: its parts and its state (bound, lame duck)."""

    def __init__(self, config: Config, link: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None) -> None:
        self.config = config
        self.link = link  # set in a --workers follower: its zone is fed by the watching process
        self.pool: WorkerPool | None = None
        self.zone = ZoneIndex(config)
        self.internet = InternetView(config, self.zone)  # what clients outside --allow-recursion see
        self.stats = QueryStats()
        self.recursor: Any = None
        self.handler: Handler | None = None
        self.listeners: Listeners | None = None
        self.http: HttpServer | None = None
        self.notifier: xfr.Notifier | None = None
        self.lame_duck = False
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz."""
        if self.lame_duck:
            return False, "shutting down"
        if not self.zone.synced:
            return False, "waiting for the first full sync of the source"
        if self.listeners is None or not self.listeners.bound:
            return False, "listeners not bound"
        if self.pool is not None and not self.pool.ready():
            return False, "waiting for the worker processes"
        return True, "ready"

    def checks(self) -> list[tuple[str, bool, bool]]:
        """(name, passing, gates readiness) for /readyz?verbose: the source and the listeners gate
        readiness; what recursion reaches (the root or forwarders, the NAT64 path) is reported only."""
        out = [("source-synced", self.zone.synced, True),
               ("listeners-bound", self.listeners is not None and bool(self.listeners.bound), True)]
        if self.recursor is not None:
            out += [(f"upstream-{path}", healthy, False) for path, healthy in self.recursor.health().items()]
        return out

    def _update_gauges(self) -> None:
        metrics.ZONE_SERIAL.set(self.zone.serial)
        metrics.ZONE_RECORDS.set(self.zone.record_count)
        metrics.ZONE_SERVICES.set(len(self.zone.services))
        for view, index in (("cluster", self.zone), ("internet", self.internet)):
            services, hostnames = index.published_names()
            metrics.ZONE_NAMES.labels(source="service", view=view).set(services)
            metrics.ZONE_NAMES.labels(source="annotation", view=view).set(hostnames)
            for source, count in index.object_names().items():
                metrics.ZONE_NAMES.labels(source=source, view=view).set(count)
        metrics.SOURCE_SYNCED.set(1 if self.zone.synced else 0)
        if self.handler is not None:
            metrics.CACHE_ENTRIES.labels(cache="answers").set(self.handler.cached_responses)
            metrics.RRL_BUCKETS.set(self.handler.rrl.buckets if self.handler.rrl is not None else 0)
        if self.listeners is not None:
            metrics.TCP_CONNECTIONS.set(self.listeners.tcp_state.total)
        if self.recursor is not None:
            for path, healthy in self.recursor.health().items():
                metrics.UPSTREAM_HEALTHY.labels(path=path).set(1 if healthy else 0)
        metrics.JOURNAL_SERIALS.set(sum(len(j) for j in self.zone.journals.values()))
        metrics.JOURNAL_RECORDS.set(self.zone.journal_records)

    async def _make_recursor(self) -> Recursor | None:
        if self.config.recursion == "off":
            return None
        try:
            from dnsd.recursor import Recursor as RecursorImpl  # optional part: imported only when used
        except ImportError:
            logger.warning("recursion %r requested but the recursor is not available; answering "
                           "REFUSED outside the zone", self.config.recursion)
            return None
        try:
            recursor = RecursorImpl(self.config, zone=self.zone)  # PTR of DNS64 names in reverse zones
        except ValueError as exc:  # a bad --root-hints file, or forward mode without forwarders
            raise StartupError(f"recursion: {exc}") from None
        await recursor.start()
        self.recursor = recursor
        return recursor

    async def _follower_synced(self) -> None:
        """A follower binds its listeners only once it holds the watching process's data.

        Bound earlier, SO_REUSEPORT would hand it its share of the clients at once, and it would
        answer them SERVFAIL (not synced) until the first snapshot arrived: at start-up, and every
        time a follower is restarted after a crash while the other processes serve normally.
        """
        # polled: synced is a plain flag of the index, set once, and the wait lasts one snapshot
        while not self.zone.synced and not self.stopping.is_set() and not any(t.done() for t in self.tasks):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _start_source(self) -> None:
        config = self.config
        if self.link is not None:
            reader, writer = self.link
            self.tasks.append(asyncio.create_task(
                follow(reader, writer, self.zone, self.stats, self.stopping,
                       lambda: self.zone.synced and self.listeners is not None and bool(self.listeners.bound)),
                name="follower"))
            return
        path = config.source_path
        if path is not None:
            source = ManifestSource(path, self.zone, config.namespaces)
            try:
                source.load()
            except SourceError as exc:
                raise StartupError(str(exc)) from None
            self.zone.mark_synced()
            self.tasks.append(asyncio.create_task(source.run(), name="manifests"))
            return
        from dnsd.kube.informer import KubernetesSource  # loads kubernetes_asyncio only when used

        kube = KubernetesSource(config, self.zone)
        task = asyncio.create_task(kube.run(), name="informer")
        self.tasks.append(task)

    def _make_signers(self) -> tuple[Signer, Signer]:
        """The signers of every zone with keys in --dnssec-keys: (cluster's, Internet's).

        Each view has its own (every process signs its own indexes): same keys, but RRSIGs over the
        view's own RRsets and an NSEC3 chain over the view's own names, so that a denial given to the
        Internet never hashes a name only the cluster sees. The Internet's is made first: its apex
        records must be in place when the cluster's move the serial the view then follows.
        """
        from dnsd.dnssec import keys as dnssec_keys
        from dnsd.dnssec.signer import Signer

        if self.config.dnssec_denial != "nsec3":
            # Refused rather than silently served as NSEC3: RFC 9824 compact denial is not built yet.
            raise StartupError("--dnssec-denial compact is not implemented yet; use nsec3")
        directory = self.config.dnssec_keys or ""
        try:
            found = dnssec_keys.load_dir(directory)
        except (OSError, ValueError) as exc:
            raise StartupError(f"dnssec keys: {exc}") from None
        if not found:
            raise StartupError(f"dnssec keys: no K*.private files in {self.config.dnssec_keys}")
        internet = Signer(self.internet, found)
        return Signer(self.zone, found), internet

    async def _sign_periodically(self, signers: tuple[Signer, Signer]) -> None:
        """Once every `SIGNER_TICK` seconds: read the key directory again (a rollover is done by adding
        files), then let the signer apply key timing and refresh expiring signatures in bounded steps."""
        from dnsd.dnssec import keys as dnssec_keys

        directory = self.config.dnssec_keys or ""
        try:
            tick = max(0.1, float(os.environ.get("DNSD_SIGNER_TICK", SIGNER_TICK)))
        except ValueError:
            tick = SIGNER_TICK
        while True:
            await asyncio.sleep(tick)
            try:
                found: list[Any] | None = dnssec_keys.load_dir(directory) or None
            except (OSError, ValueError) as exc:
                logger.warning("dnssec keys: %s; signing on with the keys loaded before", exc)
                found = None
            cluster, internet = signers
            before = cluster.signatures_made + internet.signatures_made
            internet.tick(found)  # first: see _make_signers
            cluster.tick(found)
            made = cluster.signatures_made + internet.signatures_made - before
            if made:
                logger.info("signer: %d signatures made", made)

    def _start_delegation_check(self) -> None:
        """The periodic `dnsd check` (the dnsd_delegation_ok gauge), in the watching process only, and only
        when dnsd iterates from root hints: it walks the delegation from the root like `iterate` does,
        which a cluster that only forwards may have no route for. Never a readiness condition."""
        config = self.config
        if config.delegation_check_interval <= 0 or self.link is not None:
            return
        if config.recursion != "iterate" and config.root_hints is None:
            return
        from dnsd import check

        self.tasks.append(asyncio.create_task(
            check.run_periodically(config, float(config.delegation_check_interval)), name="delegation-check"))

    async def run(self) -> int:
        config = self.config
        register_query_stats(self.stats)
        recursor = await self._make_recursor()
        self.handler = Handler(config, self.zone, self.stats, recursor, self.internet)
        if config.dnssec_keys:
            signers = self._make_signers()
            self.handler.signer, self.handler.internet_signer = signers
            for signer in signers:
                signer.on_resign = self.handler.invalidate
            metrics.register_signer(*signers)
            self.tasks.append(asyncio.create_task(self._sign_periodically(signers), name="signer"))
        if config.transfer_allow or config.notify or config.tsig_key_file:
            try:
                keys = xfr.load_keys(config)
            except ValueError as exc:
                raise StartupError(f"tsig: {exc}") from None
            # Every process answers transfers from its own index (followers hold the same data, serial
            # and journal); only the watching process sends NOTIFY, so secondaries get it once.
            # Transfers carry the Internet's view (the publication policy), signed by its own signer.
            xfr_zone = self.internet
            self.handler.transfers = xfr.Transfers(config, xfr_zone, keys)
            self.handler.transfers.signer = self.handler.internet_signer
            if config.notify and self.link is None:
                self.notifier = xfr.Notifier(config, xfr_zone, keys)
        if config.workers > 1 and self.link is None:
            self.pool = WorkerPool(config, self.zone, self.stats)  # before the source: it sees every change
        await self._start_source()
        if self.link is not None:
            await self._follower_synced()
        self.listeners = Listeners(config.listen, self.handler.respond, config.tcp_idle_timeout,
                                   config.tcp_max_connections, config.tcp_max_per_client)
        try:
            await self.listeners.start()
        except OSError as exc:
            raise StartupError(f"listen: cannot bind: {exc.strerror or exc}") from None
        logger.info("listening on %s (udp, tcp) for zone %s, cluster domain %s, serial %d",
                    ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.listeners.bound),
                    config.zone, config.cluster_domain, self.zone.serial)
        if config.http is not None:
            self.http = HttpServer(config.http, self.readiness, self._update_gauges, self.checks)
            try:
                await self.http.start()
            except OSError as exc:
                raise StartupError(f"http: cannot bind {config.http}: {exc.strerror or exc}") from None
            host = config.http.host
            logger.info("http on %s (/metrics, /healthz, /readyz)",
                        f"[{host}]:{self.http.port}" if ":" in host else f"{host}:{self.http.port}")
        if self.pool is not None:
            await self.pool.start(self.listeners.bound)
        if self.notifier is not None:
            await self.notifier.start()
        self._start_delegation_check()
        loop = asyncio.get_running_loop()
        # A follower ignores both: the watching process stops it after its own lame duck.
        for sig in () if self.link is not None else (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        watch = asyncio.create_task(self._watch_tasks(), name="watch")
        await self.stopping.wait()
        watch.cancel()
        return await self.shutdown()

    async def _watch_tasks(self) -> None:
        """A root task that ends (it never should) stops the process instead of failing silently."""
        while True:
            await asyncio.sleep(0.5)
            for task in self.tasks:
                if task.done() and not task.cancelled():
                    exc = task.exception()
                    if exc is not None:
                        if not isinstance(exc, StartupError):  # the CLI prints start-up errors once
                            logger.error("%s stopped: %s", task.get_name(), exc)
                        self.failure = exc
                        self.stopping.set()
                        return

    failure: BaseException | None = None

    async def shutdown(self) -> int:
        """Lame duck, then close everything; the exit status to return."""
        if self.pool is not None:
            self.pool.stopping = True  # a follower that dies now is not started again
        if self.failure is None and self.config.lame_duck > 0:
            self.lame_duck = True
            logger.info("lame duck: /readyz is 503, still answering for %.1f s", self.config.lame_duck)
            await asyncio.sleep(self.config.lame_duck)
        self.lame_duck = True
        if self.notifier is not None:
            await self.notifier.close()
        if self.pool is not None:
            await self.pool.close()
        if self.listeners is not None:
            await self.listeners.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.recursor is not None:
            await self.recursor.close()
        if self.http is not None:
            await self.http.close()
        if self.failure is not None:
            if isinstance(self.failure, StartupError):
                raise self.failure
            raise StartupError(str(self.failure))
        logger.info("shut down cleanly")
        return 0


async def serve(config: Config) -> int:
    """Run dnsd until a stop signal; returns the exit status (StartupError for start-up failures)."""
    return await App(config).run()
