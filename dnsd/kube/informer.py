"""The live cluster source: list and watch Services and EndpointSlices, feeding the zone index.

With `--ingress` it also watches networking.k8s.io/v1 Ingresses, and with `--gateway-api` the
gateway.networking.k8s.io/v1 Gateways, HTTPRoutes, GRPCRoutes and TLSRoutes (through the generic
custom-objects API: the cluster's CRDs, no generated client). They are more kinds of the same
informer below: same paging, bookmarks, 410 relists, backoff, slim records (`kube.model`), and the
zone is ready only once every enabled kind has listed.

`KubernetesSource.run()` connects (`kube.connect`) and runs one informer per kind and scope: a scope
is the whole cluster, or one namespace per `--namespaces` entry, so that a namespaced deployment
needs only a Role per namespace. Each informer loops forever (kopf's `continuous_watch` shape):

1. LIST in pages (`limit` + `continue`). The pages are slimmed as they arrive (`kube.model`), and
   only when the last page is in does the result replace this informer's share of the zone (its
   kind, its scope) through `ZoneIndex.resync_*`. That diffs, so names that did not change never
   vanish, and until the new list is complete the zone keeps serving the old data (a relist after
   410 has no gap); it yields to the event loop every thousand objects, so a relist of a large
   cluster does not stall answers.
2. WATCH from the list's resourceVersion with bookmarks. Every event is applied at once with
   `put_*`/`delete_*` (cost proportional to the one object); its resourceVersion, or a bookmark's,
   becomes the point to resume from. The server ends the watch after `timeoutSeconds` (jittered, as
   client-go does, so that many replicas do not reconnect in step), and the informer re-watches at
   once from where it was.
3. `410 Gone` (an HTTP status, or an ERROR event carrying code 410, or an expired `continue` token)
   means the resume point is compacted away: list again (step 1). Any other failure (connection
   refused or reset, a read that stalls past `inactivity_timeout`, 5xx, 403, undecodable data)
   waits an exponential, jittered backoff (0.2 s doubling to 30 s) and re-watches from the last
   resourceVersion, which catches up on everything missed, or relists if that is gone too.

Every restart counts in `dnsd_informer_restarts_total{kind,reason}` and logs one line: WARNING (ERROR
for 403/401, naming the missing permission) for the first failure of a streak, DEBUG for identical
repeats so that a long outage does not flood the log, and INFO when the informer recovers. Routine
watch expiry is counted (reason `timeout`) but logged at DEBUG only.

Readiness: the zone is marked synced (and `dnsd_informer_synced` set) only when every informer has
completed its first full list; before that authority answers SERVFAIL for in-zone names.

What this module does not do: keep API objects (raw JSON is parsed per page or per event line and
dropped after `service_from_api` / `slice_from_api`), build records (the zone does), or serve DNS.
It never raises out of `run()` except `StartupError` for missing credentials and cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client

from dnsd import metrics
from dnsd.config import Config
from dnsd.kube.connect import Connection, connect
from dnsd.kube.model import (
    GATEWAY_GROUP,
    HostRecord,
    InvalidObject,
    ServiceRecord,
    SliceRecord,
    gateway_from_api,
    ingress_from_api,
    route_from_api,
    service_from_api,
    slice_from_api,
)
from dnsd.zone import ZoneIndex, release_free_memory

logger = logging.getLogger(__name__)

Record = ServiceRecord | SliceRecord | HostRecord
R = TypeVar("R", ServiceRecord, SliceRecord)


@dataclass(frozen=True, slots=True)
class InformerSettings:
    """Timing and paging knobs; the defaults are for production, tests shrink them."""

    #: Objects per LIST page: 500 is client-go's pager default, large enough that 50,000 objects
    #: take 100 round trips, small enough that one page's JSON stays a few MB.
    page_size: int = 500
    #: Server-side watch duration (`timeoutSeconds`), jittered up to twice this; client-go's
    #: reflector uses 5 to 10 minutes so that watches spread over API server replicas.
    watch_timeout: float = 300.0
    #: A watch that delivers nothing (not even a bookmark) for this long is presumed dead (a network
    #: partition leaves the TCP connection open). Bookmarks arrive about once a minute on a real API
    #: server, and the server itself ends the watch after at most 2 x watch_timeout.
    inactivity_timeout: float = 660.0
    #: The server ends a watch after its `timeoutSeconds`; one still open (or silent) this much later
    #: is dead, whatever inactivity_timeout says: a silent watch is noticed within its own timeout
    #: plus this grace, not only after inactivity_timeout.
    watch_grace: float = 30.0
    #: One LIST page must arrive within this many seconds.
    list_timeout: float = 60.0
    #: TCP/TLS connect limit, so that an unreachable server is noticed quickly.
    connect_timeout: float = 10.0
    #: First retry delay: small, so that a brief API outage heals in well under a second.
    backoff_initial: float = 0.2
    #: Retry delay cap: about what client-go's reflector uses; long outages cost one attempt per 30 s.
    backoff_max: float = 30.0
    #: A watch that lasted at least this long counts as healthy, resetting the backoff.
    healthy_after: float = 1.0


class _ApiError(Exception):
    """A non-2xx answer from the API server (or an ERROR watch event), with its code and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _Gone(Exception):
    """The resume point is compacted away (410): only a fresh LIST helps."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between the two kinds an informer can watch."""

    label: str  # metric label and log name
    resource: str  # for RBAC messages: `services` / `discovery.k8s.io/endpointslices`
    rbac_rule: str  # how to grant it
    convert: Callable[[dict[str, Any]], Record]
    #: For Gateway API kinds: (group, version, plural) for CustomObjectsApi.
    custom: tuple[str, str, str] | None = None


SERVICES = _Kind("service", "services", 'apiGroups: [""], resources: ["services"]', service_from_api)
ENDPOINTSLICES = _Kind(
    "endpointslice",
    "discovery.k8s.io/endpointslices",
    'apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"]',
    slice_from_api,
)
INGRESSES = _Kind(
    "ingress",
    "networking.k8s.io/ingresses",
    'apiGroups: ["networking.k8s.io"], resources: ["ingresses"]',
    ingress_from_api,
)
GATEWAYS = _Kind(
    "gateway",
    f"{GATEWAY_GROUP}/gateways",
    f'apiGroups: ["{GATEWAY_GROUP}"], resources: ["gateways"]',
    gateway_from_api,
    (GATEWAY_GROUP, "v1", "gateways"),
)
ROUTES = tuple(
    _Kind(
        kind.lower(),
        f"{GATEWAY_GROUP}/{kind.lower()}s",
        f'apiGroups: ["{GATEWAY_GROUP}"], resources: ["{kind.lower()}s"]',
        lambda obj, kind=kind: route_from_api(obj, kind),  # type: ignore[misc]
        (GATEWAY_GROUP, "v1", f"{kind.lower()}s"),
    )
    for kind in ("HTTPRoute", "GRPCRoute", "TLSRoute")
)


def _object_key(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) as the model keys it, without validating the rest (for DELETED events)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return namespace.lower(), name.lower()


def _version(rv: str | None) -> int | None:
    """A resourceVersion as the zone's version of the data (etcd revisions are integers in practice;
    anything else is opaque and leaves the serial to count on its own)."""
    if rv is not None and rv.isdigit():
        return int(rv)
    return None


def _resource_version(obj: Any) -> str | None:
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            rv = meta.get("resourceVersion")
            if isinstance(rv, str) and rv:
                return rv
    return None


async def _error_from(response: aiohttp.ClientResponse) -> _ApiError:
    """Turn a non-2xx response into an _ApiError, using the Status object's message when present."""
    try:
        body = await response.content.read(65536)
        status = json.loads(body)
        message = str(status.get("message") or status.get("reason") or "") if isinstance(status, dict) else ""
    except Exception:
        message = ""
    return _ApiError(response.status, message or (response.reason or ""))


class _Informer:
    """List+watch of one kind in one scope (a namespace, or the cluster when `namespace` is None)."""

    def __init__(
        self,
        kind: _Kind,
        namespace: str | None,
        call: Callable[..., Awaitable[Any]],
        zone: ZoneIndex,
        settings: InformerSettings,
        on_listed: Callable[[_Informer, int], None],
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self._call = call
        self._zone = zone
        self._settings = settings
        self._on_listed = on_listed
        self.resource_version: str | None = None
        self._invalid: set[tuple[str, str]] = set()
        #: The highest resourceVersion among the objects of the last LIST: the zone's version of them.
        self.listed_version: int | None = None
        self._failures = 0
        self._last_failure: str | None = None
        self._expired = 0

    @property
    def scope(self) -> str:
        """Human wording of where this informer looks, for log lines."""
        return "at cluster scope" if self.namespace is None else f"in namespace {self.namespace}"

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever; every failure is logged, counted, backed off and retried."""
        need_list = True
        while True:
            verb = "list" if need_list else "watch"
            try:
                if need_list:
                    await self._list_and_replace()
                    need_list = False
                    verb = "watch"
                started = time.monotonic()
                delivered = await self._watch()
                if delivered or time.monotonic() - started >= self._settings.healthy_after:
                    self._healthy()
                    self._expired = 0
                    self._restart("timeout", None, verb)  # routine: the server ended the watch
                    continue
                self._fail("closed", "watch closed at once by the server", verb)
            except _Gone as exc:
                need_list = True
                self._restart(
                    "expired",
                    f"resourceVersion expired ({exc}); listing again",
                    verb,
                    level=logging.INFO,
                )
                if self._expire_streak():
                    continue  # relisting is the cure; no backoff, as client-go
            except _ApiError as exc:
                if exc.status == 410:
                    need_list = True
                    self._restart("expired", f"{exc}; listing again", verb, level=logging.INFO)
                    if self._expire_streak():
                        continue
                else:
                    self._fail(*self._describe(exc, verb), verb)
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                self._fail("timeout", f"no data from the API server in time ({type(exc).__name__})", verb)
            except (aiohttp.ClientError, OSError) as exc:
                self._fail("connection", f"{type(exc).__name__}: {exc}".rstrip(": "), verb)
            except (ValueError, UnicodeDecodeError) as exc:
                self._fail("decode", f"undecodable response: {exc}", verb)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the informer: keep serving, keep retrying
                logger.exception("%s informer %s: unexpected error", self.kind.label, self.scope)
                self._fail("error", f"{type(exc).__name__}: {exc}", verb)
            await asyncio.sleep(self._backoff())

    def _expire_streak(self) -> bool:
        """True while relisting at once is sensible; after 3 expiries in a row without a healthy
        watch in between (a misbehaving server), relists back off like any other failure."""
        self._expired += 1
        if self._expired <= 3:
            return True
        self._failures += 1
        return False

    def _backoff(self) -> float:
        """Exponential with jitter: initial x 2^(failures-1), capped, times a random 0.5..1."""
        s = self._settings
        exponent = max(0, min(self._failures - 1, 30))
        delay = min(s.backoff_max, s.backoff_initial * float(1 << exponent))
        return delay * random.uniform(0.5, 1.0)

    def _describe(self, exc: _ApiError, verb: str) -> tuple[str, str]:
        if exc.status == 403:
            binding = (
                "ClusterRole and ClusterRoleBinding"
                if self.namespace is None
                else "Role and RoleBinding in that namespace"
            )
            return "forbidden", (
                f"forbidden: cannot {verb} {self.kind.resource} {self.scope}; grant get/list/watch "
                f"({self.kind.rbac_rule}) to dnsd's service account with a {binding}; retrying. "
                f"API server said: {exc.message}"
            )
        if exc.status == 401:
            return (
                "unauthorized",
                f"unauthorized: the API server rejected dnsd's credentials ({exc.message})",
            )
        if exc.status == 429:
            return "throttled", f"throttled by the API server ({exc.message})"
        if exc.status >= 500:
            return "server_error", f"API server error {exc.status} ({exc.message})"
        return "http_error", f"API server answered {exc.status} ({exc.message})"

    def _restart(self, reason: str, message: str | None, verb: str, level: int = logging.DEBUG) -> None:
        metrics.SOURCE_RESTARTS.labels(self.kind.label, reason).inc()
        if message is None:
            logger.debug(
                "%s informer %s: watch ended by the server; watching again from %s",
                self.kind.label,
                self.scope,
                self.resource_version,
            )
        else:
            logger.log(level, "%s informer %s: %s", self.kind.label, self.scope, message)

    def _fail(self, reason: str, message: str, verb: str) -> None:
        metrics.SOURCE_ERRORS.labels("kubernetes").inc()
        self._failures += 1
        repeat = self._last_failure == message
        self._last_failure = message
        level = (
            logging.DEBUG if repeat else (logging.ERROR if reason in ("forbidden", "unauthorized") else logging.WARNING)
        )
        then = (
            "listing"
            if self.resource_version is None or verb == "list"
            else "watching from " + str(self.resource_version)
        )
        self._restart(
            reason,
            f"{verb} failed: {message} (attempt {self._failures}; {then} again after "
            "backoff; serving the last good data)",
            verb,
            level=level,
        )

    def _recovered(self) -> None:
        """The API answered properly again: say so once, and let the next failure log loudly."""
        if self._last_failure is not None:
            logger.info(
                "%s informer %s: recovered after %d failed attempts", self.kind.label, self.scope, self._failures
            )
            self._last_failure = None

    def _healthy(self) -> None:
        """A list completed or a watch delivered: the backoff starts from the beginning again."""
        self._recovered()
        self._failures = 0

    # ---- LIST ----------------------------------------------------------------------------------

    def _timeout(self, read: float) -> aiohttp.ClientTimeout:
        s = self._settings
        return aiohttp.ClientTimeout(connect=s.connect_timeout, sock_connect=s.connect_timeout, sock_read=read)

    async def _open(self, **params: Any) -> aiohttp.ClientResponse:
        """One API request with raw (not deserialized) content; raises _ApiError on non-2xx."""
        response: aiohttp.ClientResponse = await self._call(_preload_content=False, **params)
        if not 200 <= response.status <= 299:
            try:
                raise await _error_from(response)
            finally:
                response.release()
        return response

    async def _list(self) -> tuple[list[Record], str]:
        """All objects of this kind and scope, page by page, and the list's resourceVersion.

        The highest resourceVersion of the listed objects is kept in `listed_version` (the serial).
        """
        self.listed_version = None
        records: list[Record] = []
        invalid: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self._settings.page_size}
            if token:
                params["_continue"] = token
            response = await self._open(
                _request_timeout=aiohttp.ClientTimeout(
                    total=self._settings.list_timeout, sock_connect=self._settings.connect_timeout
                ),
                **params,
            )
            try:
                body = await response.read()
            finally:
                response.release()
            page = json.loads(body)
            del body
            if not isinstance(page, dict):
                raise ValueError("LIST answer is not a JSON object")
            for item in page.get("items") or ():
                version = _version(_resource_version(item))
                if version is not None and (self.listed_version is None or version > self.listed_version):
                    self.listed_version = version
                record = self._convert(item, invalid)
                if record is not None:
                    records.append(record)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                rv = meta.get("resourceVersion")
                if not isinstance(rv, str) or not rv:
                    raise ValueError("LIST answer without metadata.resourceVersion")
                self._invalid = invalid
                return records, rv

    async def _list_and_replace(self) -> None:
        started = time.monotonic()
        records, rv = await self._list()
        zone = self._zone
        if self.kind is SERVICES:
            await zone.resync_services([r for r in records if isinstance(r, ServiceRecord)], self.namespace,
                                       self.listed_version)
        elif self.kind is not ENDPOINTSLICES:
            objects = [r for r in records if not isinstance(r, ServiceRecord | SliceRecord)]
            await zone.resync_objects((self.kind.label,), objects, self.namespace, self.listed_version)
        else:
            await zone.resync_slices([r for r in records if isinstance(r, SliceRecord)], self.namespace,
                                     self.listed_version)
        self.resource_version = rv
        if zone.synced:
            release_free_memory()  # a relist freed a whole list's JSON (the first sync does this too)
        metrics.SOURCE_LAST_SYNC.labels(self.kind.label).set(time.time())
        logger.debug(
            "%s informer %s: listed %d objects at resourceVersion %s in %.2f s",
            self.kind.label,
            self.scope,
            len(records),
            rv,
            time.monotonic() - started,
        )
        self._healthy()
        self._on_listed(self, len(records))

    def _convert(self, obj: Any, invalid: set[tuple[str, str]]) -> Record | None:
        """Slim one API object; an unservable one is logged once (until it changes) and skipped."""
        if not isinstance(obj, dict):
            return None
        try:
            return self.kind.convert(obj)
        except InvalidObject as exc:
            key = _object_key(obj)
            if key is not None:
                invalid.add(key)
                if key in self._invalid:
                    return None
            logger.warning("%s; not served", exc)
            return None

    # ---- WATCH ---------------------------------------------------------------------------------

    async def _watch(self) -> int:
        """Watch from `resource_version` until the server ends the stream; returns #events + bookmarks."""
        s = self._settings
        timeout_seconds = max(1, int(s.watch_timeout * (1.0 + random.random())))
        lifetime = timeout_seconds + s.watch_grace
        response = await self._open(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _request_timeout=self._timeout(min(s.inactivity_timeout, lifetime)),
        )
        self._recovered()  # connected; the backoff resets only once the stream proves healthy
        received = 0
        try:
            content = response.content
            # One timer for the whole stream (not one per line: events are the hot part of the informer).
            async with asyncio.timeout(lifetime):
                received = await self._read_events(content)
            return received
        finally:
            response.close()  # never reuse a watch connection: it may hold unread stream data

    async def _read_events(self, content: aiohttp.StreamReader) -> int:
        """Apply watch events until the server ends the stream; returns #events + bookmarks."""
        received = 0
        while True:
            line = await content.readline()
            if not line:
                return received  # the server ended the watch (timeoutSeconds)
            if line.isspace():
                continue
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("watch event is not a JSON object")
            etype = event.get("type")
            obj = event.get("object")
            if etype == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                message = str(obj.get("message") or "") if isinstance(obj, dict) else ""
                if code == 410:
                    raise _Gone(message or "410 Gone")
                raise _ApiError(code if isinstance(code, int) else 500, message or "ERROR event")
            rv = _resource_version(obj)
            if received == 0:
                self._failures = 0  # the stream works: the next failure starts a fresh backoff
            if etype == "BOOKMARK":
                if rv is not None:
                    self.resource_version = rv
                received += 1
                continue
            if not isinstance(obj, dict):
                continue
            self._apply(str(etype), obj)
            received += 1
            if rv is not None:
                self.resource_version = rv

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        """One watch event into the zone: cost proportional to the one object."""
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            logger.debug("%s informer %s: ignoring watch event type %r", self.kind.label, self.scope, etype)
            return
        metrics.SOURCE_EVENTS.labels(self.kind.label, etype).inc()
        key = _object_key(obj)
        if key is None:
            return
        if self.namespace is not None and key[0] != self.namespace:
            return  # defensive: a namespaced watch only ever sends its namespace
        record: Record | None = None
        if etype != "DELETED":
            record = self._convert(obj, self._invalid)
            if record is not None:
                self._invalid.discard(key)
        zone = self._zone
        version = _version(_resource_version(obj))
        if self.kind is SERVICES:
            if isinstance(record, ServiceRecord):
                zone.put_service(record, version)
            else:
                zone.delete_service(*key, version=version)
        elif self.kind is not ENDPOINTSLICES:
            if record is not None and not isinstance(record, ServiceRecord | SliceRecord):
                zone.put_object(record, version)
            else:
                zone.delete_object((self.kind.label, *key), version=version)
        elif isinstance(record, SliceRecord):
            zone.put_slice(record, version)
        else:
            zone.delete_slice(*key, version=version)


class KubernetesSource:
    """The `--source kubernetes` data source: informers for Services and EndpointSlices."""

    def __init__(self, config: Config, zone: ZoneIndex, *, settings: InformerSettings | None = None) -> None:
        self.config = config
        self.zone = zone
        self.settings = settings or InformerSettings()
        self._pending: set[tuple[str, str | None]] = set()
        self._started = 0.0

    async def run(self) -> None:
        """Connect, list+watch both kinds forever, feeding the zone; returns only when cancelled.

        Raises StartupError only when there are no usable credentials at all.
        """
        self._started = time.monotonic()
        connection = await connect(self.config.kubeconfig)
        try:
            await self._run_informers(connection)
        finally:
            await asyncio.shield(connection.close())

    async def _run_informers(self, connection: Connection) -> None:
        core = client.CoreV1Api(connection.api)
        discovery = client.DiscoveryV1Api(connection.api)
        selector = self.config.label_selector
        informers: list[_Informer] = []
        scopes: tuple[str | None, ...] = tuple(self.config.namespaces) or (None,)
        for namespace in scopes:
            informers.append(
                _Informer(
                    SERVICES,
                    namespace,
                    self._service_call(core, namespace, selector),
                    self.zone,
                    self.settings,
                    self._listed,
                )
            )
            informers.append(
                _Informer(
                    ENDPOINTSLICES,
                    namespace,
                    self._slice_call(discovery, namespace),
                    self.zone,
                    self.settings,
                    self._listed,
                )
            )
        for kind, call in self._host_kinds(connection):
            informers.extend(
                _Informer(kind, namespace, call(namespace), self.zone, self.settings, self._listed)
                for namespace in scopes
            )
        self._pending = {(i.kind.label, i.namespace) for i in informers}
        logger.info(
            "watching services%s and endpointslices %s",
            f" matching {selector!r}" if selector else "",
            "in namespaces " + ", ".join(self.config.namespaces) if self.config.namespaces else "in all namespaces",
        )
        async with asyncio.TaskGroup() as group:
            for informer in informers:
                group.create_task(informer.run(), name=f"informer-{informer.kind.label}-{informer.namespace}")

    def _host_kinds(self, connection: Connection) -> list[tuple[_Kind, Callable[[str | None], Callable[..., Any]]]]:
        """The Ingress and Gateway API kinds the options enable, each with how to list it in a scope."""
        kinds: list[tuple[_Kind, Callable[[str | None], Callable[..., Any]]]] = []
        if self.config.ingress:
            networking = client.NetworkingV1Api(connection.api)

            def ingress_call(namespace: str | None) -> Callable[..., Any]:
                if namespace is None:
                    return lambda **kw: networking.list_ingress_for_all_namespaces(**kw)
                return lambda **kw: networking.list_namespaced_ingress(namespace, **kw)

            kinds.append((INGRESSES, ingress_call))
        if self.config.gateway_api:
            custom = client.CustomObjectsApi(connection.api)
            for kind in (GATEWAYS, *ROUTES):
                kinds.append((kind, self._custom_call(custom, kind)))
        return kinds

    @staticmethod
    def _custom_call(custom: Any, kind: _Kind) -> Callable[[str | None], Callable[..., Any]]:
        group, version, plural = kind.custom or ("", "", "")

        def call(namespace: str | None) -> Callable[..., Any]:
            if namespace is None:
                return lambda **kw: custom.list_cluster_custom_object(group, version, plural, **kw)
            return lambda **kw: custom.list_namespaced_custom_object(group, version, namespace, plural, **kw)

        return call

    @staticmethod
    def _service_call(core: Any, namespace: str | None, selector: str | None) -> Callable[..., Awaitable[Any]]:
        extra = {"label_selector": selector} if selector else {}
        if namespace is None:
            return lambda **kw: core.list_service_for_all_namespaces(**extra, **kw)
        return lambda **kw: core.list_namespaced_service(namespace, **extra, **kw)

    @staticmethod
    def _slice_call(discovery: Any, namespace: str | None) -> Callable[..., Awaitable[Any]]:
        if namespace is None:
            return lambda **kw: discovery.list_endpoint_slice_for_all_namespaces(**kw)
        return lambda **kw: discovery.list_namespaced_endpoint_slice(namespace, **kw)

    def _listed(self, informer: _Informer, count: int) -> None:
        """Called after every full list; the first time all informers have listed, the zone is ready."""
        if not self._pending:
            return
        self._pending.discard((informer.kind.label, informer.namespace))
        if not self._pending:
            self.zone.mark_synced()
            metrics.SOURCE_SYNCED.set(1)
            logger.info(
                "synced %d services, %d endpoint slices and %d ingresses/gateways/routes in %.2f s",
                len(self.zone.services),
                len(self.zone.slices),
                len(self.zone.objects),
                time.monotonic() - self._started,
            )
