"""A protocol-faithful fake Kubernetes API server (aiohttp, real HTTP): Services, EndpointSlices,
Ingresses and the Gateway API kinds (Gateway, HTTPRoute, GRPCRoute, TLSRoute).

What it does like a real API server (so that the real kubernetes-asyncio client and dnsd's informer
run unmodified against it):
- LIST at `/api/v1[/namespaces/NS]/services` and `/apis/discovery.k8s.io/v1[/namespaces/NS]/endpointslices`
  with `limit` + `continue` paging over a consistent snapshot, `metadata.resourceVersion`,
  `remainingItemCount`, `labelSelector` (equality, `!=`, existence, `in`/`notin`); an expired
  continue token answers 410 `Expired`.
- WATCH (`?watch=1`) as a chunked stream of one JSON event per line: ADDED/MODIFIED/DELETED replayed
  from history after `resourceVersion`, then live; BOOKMARK with `allowWatchBookmarks`; ending after
  `timeoutSeconds`; selector transitions (an object leaving the selector arrives as DELETED). A
  resourceVersion older than the compaction point gets, like a real server, 200 and an ERROR event
  with a 410 Status (or a plain HTTP 410 with `gone_as_http=True`).
- `/apis/networking.k8s.io/v1[/namespaces/NS]/ingresses` and
  `/apis/gateway.networking.k8s.io/v1[/namespaces/NS]/{gateways,httproutes,grpcroutes,tlsroutes}` the same
  way, and their `/status` subresource: PUT (the whole object) or PATCH (JSON merge patch) of
  `.../namespaces/NS/RESOURCE/NAME/status` replaces only `status` and sends MODIFIED to watchers.
- Bearer-token authentication (401), Status JSON bodies for errors.

Fault injection for tests: `inject()` makes matching requests answer a status (403, 500, ...; or
several in turns with `statuses`), hang before answering, stall after the headers (a watch that sends
nothing, a list cut off mid-body) until `clear_faults()`, or drop the connection; `end_watches()` ends
or aborts every open watch; `cut_watches()` resets them in the middle of an event line;
`send_error_410()` sends an ERROR event on open watches; `compact()` forgets history; `stop()` +
`start(port)` kill and restart the server on the same port with the same data. Objects are kept
pre-serialized so that 100,000 of them list quickly in the benchmark. Loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

RESOURCES = {
    "services": ("v1", "Service", "ServiceList"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice", "EndpointSliceList"),
    "ingresses": ("networking.k8s.io/v1", "Ingress", "IngressList"),
    "gateways": ("gateway.networking.k8s.io/v1", "Gateway", "GatewayList"),
    "httproutes": ("gateway.networking.k8s.io/v1", "HTTPRoute", "HTTPRouteList"),
    "grpcroutes": ("gateway.networking.k8s.io/v1", "GRPCRoute", "GRPCRouteList"),
    "tlsroutes": ("gateway.networking.k8s.io/v1", "TLSRoute", "TLSRouteList"),
}
#: Kind -> resource (plural), for `put`.
KINDS = {kind: resource for resource, (_, kind, _) in RESOURCES.items()}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<gv>[a-z0-9.-]+/v1))(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[a-z]+)"
    r"(?:/(?P<name>[^/]+)/(?P<sub>status))?$"
)


def _group(resource: str) -> str:
    """The API group of a resource ("" for the core group), as RBAC and error messages name it."""
    api_version = RESOURCES[resource][0]
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status object as the API server sends it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(slots=True)
class Stored:
    """One object, kept as its JSON bytes plus what filtering needs."""

    resource: str
    namespace: str
    name: str
    labels: dict[str, str]
    raw: bytes
    rv: int


@dataclass(slots=True)
class Fault:
    """Make matching requests fail.

    Modes: `status` (answer `status`, or the `statuses` in turns, one per matching request), `hang`
    (accept the request, answer nothing until `clear_faults()`, then reset the connection),
    `stall` (answer 200 and the headers, then nothing until `clear_faults()`: a watch goes silent,
    without bookmarks; a list stops in the middle of its body; once cleared both go on normally),
    or `disconnect` (reset the connection at once).
    """

    mode: str = "status"
    status: int = 500
    resource: str | None = None
    verb: str | None = None  # "list" or "watch"
    namespace: str | None = None
    times: int | None = None  # None: until cleared
    message: str = ""
    statuses: tuple[int, ...] = ()  # mode `status`: answered in turns instead of `status`
    served: int = 0  # matching requests so far

    def next_status(self) -> int:
        """The status for the next matching request (cycling through `statuses` when given)."""
        status = self.statuses[self.served % len(self.statuses)] if self.statuses else self.status
        self.served += 1
        return status

    def matches(self, resource: str, verb: str, namespace: str | None) -> bool:
        return (
            (self.resource is None or self.resource == resource)
            and (self.verb is None or self.verb == verb)
            and (self.namespace is None or self.namespace == namespace)
        )


@dataclass(slots=True)
class Request:
    verb: str
    resource: str
    namespace: str | None
    query: dict[str, str]


@dataclass(eq=False)
class _Watcher:
    resource: str
    namespace: str | None
    selector: list[tuple[str, str, tuple[str, ...]]]
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)


def parse_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Label selector requirements: (key, op, values) with op in = != exists !exists in notin."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    text = text.strip()
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append((m.group(1), m.group(2), values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            out.append((key.strip(), "!=", (value.strip(),)))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((key.strip(), "=", (value.strip(),)))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", ()))
        else:
            out.append((part, "exists", ()))
    return out


def selector_matches(selector: list[tuple[str, str, tuple[str, ...]]], labels: dict[str, str]) -> bool:
    for key, op, values in selector:
        present = key in labels
        value = labels.get(key)
        ok = {
            "=": present and value == values[0],
            "!=": not present or value != values[0],
            "exists": present,
            "!exists": not present,
            "in": present and value in values,
            "notin": not present or value not in values,
        }[op]
        if not ok:
            return False
    return True


class FakeKube:
    """The fake API server. Use `await start()`, mutate with `put`/`delete`, `await stop()`."""

    def __init__(
        self,
        *,
        token: str | None = "fake-token",  # noqa: S107  # the fake's test token
        bookmark_interval: float | None = 1.0,
        gone_as_http: bool = False,
        default_page: int | None = None,
    ) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.default_page = default_page
        self.rv = 1000
        self.compacted_rv = self.rv
        self.objects: dict[str, dict[tuple[str, str], Stored]] = {r: {} for r in RESOURCES}
        self.history: list[tuple[int, str, Stored, Stored | None]] = []  # rv, type, new, old
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.port = 0
        self.host = "127.0.0.1"
        self._watchers: set[_Watcher] = set()
        self._snapshots: dict[str, tuple[int, list[Stored]]] = {}
        self._snapshot_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._transports: set[asyncio.Transport] = set()
        self._hang = asyncio.Event()
        self._uid = itertools.count(1)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:port (0: any free port; the port is kept for a restart)."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        app.router.add_put("/{tail:.*}", self._handle_status)
        app.router.add_patch("/{tail:.*}", self._handle_status)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port or self.port or 0, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self._hang = asyncio.Event()

    async def stop(self) -> None:
        """Kill the server: every connection is reset, like a crashed API server."""
        self._hang.set()
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("abort", None))
        for transport in list(self._transports):
            transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._watchers.clear()
        self._transports.clear()

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig pointing at this server (JSON is valid YAML)."""
        user: dict[str, Any] = {"token": token or self.token} if (token or self.token) else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
        path.write_text(json.dumps(config))
        return path

    # ---- data ----------------------------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> int:
        """Create or update an object (ADDED or MODIFIED); returns its new resourceVersion."""
        resource = KINDS.get(str(obj.get("kind")), "endpointslices")
        meta = obj.setdefault("metadata", {})
        namespace, name = meta.get("namespace", "default"), meta["name"]
        key = (namespace, name)
        old = self.objects[resource].get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"00000000-0000-4000-8000-{next(self._uid):012d}")
        meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        stored = Stored(
            resource,
            namespace,
            name,
            dict(meta.get("labels") or {}),
            json.dumps(obj, separators=(",", ":")).encode(),
            self.rv,
        )
        self.objects[resource][key] = stored
        self._record("MODIFIED" if old else "ADDED", stored, old)
        return self.rv

    def update_status(self, resource: str, namespace: str, name: str, status: dict[str, Any], *,
                      merge: bool = False) -> int:
        """The `/status` subresource: replace (PUT) or merge-patch (PATCH) `status`; a MODIFIED event."""
        stored = self.objects[resource][(namespace, name)]
        obj = json.loads(stored.raw)
        if merge:
            obj["status"] = _merge_patch(obj.get("status") or {}, status)
        else:
            obj["status"] = status
        return self.put(obj)

    def delete(self, resource: str, namespace: str, name: str) -> int:
        """Delete an object (DELETED carries the last state with a new resourceVersion)."""
        old = self.objects[resource].pop((namespace, name))
        self.rv += 1
        obj = json.loads(old.raw)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        gone = Stored(resource, namespace, name, old.labels, json.dumps(obj).encode(), self.rv)
        self._record("DELETED", gone, old)
        return self.rv

    def load(self, objects: list[dict[str, Any]]) -> None:
        """Bulk create without history (as if compacted): for large initial states."""
        for obj in objects:
            resource = KINDS.get(str(obj.get("kind")), "endpointslices")
            meta = obj["metadata"]
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            key = (meta.get("namespace", "default"), meta["name"])
            self.objects[resource][key] = Stored(
                resource,
                key[0],
                key[1],
                dict(meta.get("labels") or {}),
                json.dumps(obj, separators=(",", ":")).encode(),
                self.rv,
            )
        self.compact()

    def compact(self) -> None:
        """Forget history and continue snapshots (etcd compaction): old resourceVersions now get 410."""
        self.compacted_rv = self.rv
        self.history.clear()
        self._snapshots.clear()

    def _record(self, etype: str, new: Stored, old: Stored | None) -> None:
        self.history.append((new.rv, etype, new, old))
        for watcher in list(self._watchers):
            if watcher.resource == new.resource:
                watcher.queue.put_nowait(("event", (new.rv, etype, new, old)))

    # ---- fault injection -----------------------------------------------------------------------

    def inject(self, **kwargs: Any) -> Fault:
        """Add a Fault (see its fields); returns it so a test can remove it."""
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()
        self._hang.set()
        self._hang = asyncio.Event()

    def end_watches(self, *, abort: bool = False) -> None:
        """End every open watch: cleanly (like timeoutSeconds) or by resetting the connection."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("abort" if abort else "end", None))

    def cut_watches(self) -> None:
        """Reset every open watch in the middle of an event: half a JSON line, then a TCP reset."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("cut", None))

    def send_error_410(self) -> None:
        """Send an ERROR event with a 410 Status on every open watch, as after etcd compaction."""
        self.compact()
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("error410", None))

    def send_bookmarks(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(("bookmark", None))

    def watching(self, resource: str | None = None) -> int:
        """Number of open watches (of one resource)."""
        return sum(1 for w in self._watchers if resource is None or w.resource == resource)

    async def wait_watching(self, count: int, resource: str | None = None, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while self.watching(resource) < count:
                await asyncio.sleep(0.01)

    def lists(self, resource: str | None = None) -> Iterator[Request]:
        return (r for r in self.requests if r.verb == "list" and resource in (None, r.resource))

    # ---- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)  # type: ignore[arg-type]
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(request.path)
        if not match or match.group("sub") or match.group("res") not in RESOURCES or (
            (match.group("gv") or "v1") != RESOURCES[match.group("res")][0]
        ):
            return self._status(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        resource, namespace = match.group("res"), match.group("ns")
        query = dict(request.query)
        verb = "watch" if query.get("watch") in ("1", "true", "True") else "list"
        self.requests.append(Request(verb, resource, namespace, query))
        stall = False
        for fault in list(self.faults):
            if fault.matches(resource, verb, namespace):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                if fault.mode == "stall":
                    stall = True
                    break
                if fault.mode == "hang":
                    await self._hang.wait()
                if fault.mode in ("hang", "disconnect"):
                    if transport is not None:
                        transport.abort()
                    return web.Response(status=500)  # never reaches the client: the socket is gone
                status = fault.next_status()
                reason = {403: "Forbidden", 401: "Unauthorized", 410: "Expired", 429: "TooManyRequests"}.get(
                    status, "InternalError"
                )
                message = fault.message or (
                    f'{resource} is forbidden: User "system:serviceaccount:dnsd:dnsd" cannot {verb} '
                    f'resource "{resource}" in API group "{_group(resource)}"'
                    f" {'at the cluster scope' if namespace is None else 'in the namespace ' + repr(namespace)}"
                    if status == 403
                    else f"injected {status}"
                )
                return self._status(status, reason, message)
        selector = parse_selector(query.get("labelSelector", ""))
        if verb == "watch":
            return await self._watch(request, resource, namespace, selector, query, stall=stall)
        listed = self._list(resource, namespace, selector, query)
        if stall and listed.status == 200:
            return await self._stalled(request, listed)
        return listed

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        """PUT or PATCH (JSON merge patch) of an object's `/status`, as a controller writes it."""
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(request.path)
        resource = match.group("res") if match else None
        if match is None or resource not in RESOURCES or match.group("sub") != "status" or not match.group("ns"):
            return self._status(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        namespace, name = match.group("ns"), match.group("name")
        if (namespace, name) not in self.objects[resource]:
            return self._status(404, "NotFound", f'{resource} "{name}" not found')
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._status(400, "BadRequest", "the body is not JSON")
        if not isinstance(body, dict):
            return self._status(400, "BadRequest", "the body is not an object")
        merge = request.method == "PATCH"  # the body is a merge patch of the object, else the whole object
        status = body.get("status")
        if not isinstance(status, dict):
            return self._status(422, "Invalid", "status must be an object")
        self.update_status(resource, namespace, name, status, merge=merge)
        return web.Response(body=self.objects[resource][(namespace, name)].raw, content_type="application/json")

    async def _stalled(self, request: web.Request, listed: web.Response) -> web.StreamResponse:
        """Send the headers and the first half of a list's body, wait for `clear_faults()`, send the rest."""
        body = listed.body
        assert isinstance(body, bytes)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        released = self._hang
        try:
            await response.write(body[: len(body) // 2])
            await released.wait()
            if request.transport is None or request.transport.is_closing():
                return response
            await response.write(body[len(body) // 2 :])
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    def _status(self, code: int, reason: str, message: str) -> web.Response:
        return web.Response(
            status=code, body=json.dumps(status_body(code, reason, message)).encode(), content_type="application/json"
        )

    def _visible(self, stored: Stored, namespace: str | None, selector: list[Any]) -> bool:
        return (namespace is None or stored.namespace == namespace) and selector_matches(selector, stored.labels)

    def _list(self, resource: str, namespace: str | None, selector: list[Any], query: dict[str, str]) -> web.Response:
        api_version, _, list_kind = RESOURCES[resource]
        limit = int(query.get("limit") or 0) or self.default_page or 0
        token = query.get("continue")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                rv, items = self._snapshots[decoded["id"]]
                offset = int(decoded["start"])
            except (KeyError, ValueError):
                return self._status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue "
                    "parameter.",
                )
        else:
            rv = self.rv
            items = sorted(
                (s for s in self.objects[resource].values() if self._visible(s, namespace, selector)),
                key=lambda s: (s.namespace, s.name),
            )
            offset = 0
        page = items[offset : offset + limit] if limit else items[offset:]
        end = offset + len(page)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if end < len(items):
            if not token:
                snapshot_id = str(next(self._snapshot_ids))
                self._snapshots[snapshot_id] = (rv, items)
                while len(self._snapshots) > 32:
                    del self._snapshots[next(iter(self._snapshots))]
            else:
                snapshot_id = json.loads(base64.urlsafe_b64decode(token.encode()))["id"]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "id": snapshot_id, "start": end}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - end
        head = json.dumps({"kind": list_kind, "apiVersion": api_version, "metadata": meta})[:-1]
        body = head.encode() + b',"items":[' + b",".join(s.raw for s in page) + b"]}"
        return web.Response(body=body, content_type="application/json")

    async def _watch(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        selector: list[Any],
        query: dict[str, str],
        *,
        stall: bool = False,
    ) -> web.StreamResponse:
        api_version, kind, _ = RESOURCES[resource]
        raw_rv = query.get("resourceVersion") or "0"
        since = int(raw_rv)
        if since and since < self.compacted_rv and self.gone_as_http:
            return self._status(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(resource, namespace, selector)
        self._watchers.add(watcher)
        released = self._hang
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")

        async def send(etype: str, raw: bytes) -> None:
            await response.write(b'{"type":"' + etype.encode() + b'","object":' + raw + b"}\n")

        async def send_status(status: dict[str, Any]) -> None:
            await send("ERROR", json.dumps(status).encode())

        async def send_bookmark() -> None:
            await send(
                "BOOKMARK",
                json.dumps(
                    {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(self.rv)}}
                ).encode(),
            )

        async def send_change(etype: str, new: Stored, old: Stored | None) -> None:
            now = self._visible(new, namespace, selector)
            before = old is not None and self._visible(old, namespace, selector)
            if etype == "DELETED":
                if before:
                    await send("DELETED", new.raw)
            elif now and before:
                await send("MODIFIED", new.raw)
            elif now:
                await send("ADDED", new.raw)
            elif before:
                await send("DELETED", new.raw)

        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
            if stall:  # headers are out; silence (no events, no bookmarks, no end: a server gone behind a
                # partition does not honour timeoutSeconds) until the fault is cleared
                await released.wait()
                if request.transport is None or request.transport.is_closing():
                    return response
            async with asyncio.timeout(timeout):
                last = since
                if since and since < self.compacted_rv:
                    await send_status(
                        status_body(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
                    )
                    return response
                if not since:
                    for stored in list(self.objects[resource].values()):
                        if self._visible(stored, namespace, selector):
                            await send("ADDED", stored.raw)
                    last = self.rv
                else:
                    for rv, etype, new, old in list(self.history):
                        if rv > since and new.resource == resource:
                            await send_change(etype, new, old)
                            last = rv
                while True:
                    try:
                        async with asyncio.timeout(self.bookmark_interval if bookmarks else None):
                            what, payload = await watcher.queue.get()
                    except TimeoutError:
                        await send_bookmark()
                        continue
                    if what == "event":
                        rv, etype, new, old = payload
                        if rv > last:
                            await send_change(etype, new, old)
                            last = rv
                    elif what == "bookmark" and bookmarks:
                        await send_bookmark()
                    elif what == "error410":
                        await send_status(status_body(410, "Expired", "too old resource version"))
                        return response
                    elif what == "end":
                        return response
                    elif what == "abort":
                        if request.transport is not None:
                            request.transport.abort()
                        return response
                    elif what == "cut":
                        await response.write(b'{"type":"MODIFIED","object":{"kind":"' + kind.encode() + b'","meta')
                        if request.transport is not None:
                            request.transport.abort()
                        return response
        except TimeoutError:
            return response  # timeoutSeconds: a normal end of the watch
        except (ConnectionResetError, RuntimeError):
            return response
        finally:
            self._watchers.discard(watcher)
            with contextlib.suppress(Exception):
                await response.write_eof()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` sends)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# ---- object factories ------------------------------------------------------------------------------

_MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2024-01-01T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}, "f:spec": {"f:ports": {".": {}}}},
    }
]


def service(
    namespace: str,
    name: str,
    cluster_ips: list[str] | None = None,
    *,
    headless: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    external_name: str | None = None,
    external_ips: list[str] | None = None,
    publish_not_ready: bool = False,
) -> dict[str, Any]:
    """A Service in API JSON shape, with the noise (managedFields, uid, status) real ones carry."""
    ips = ["None"] if headless else (cluster_ips or ["fd00:10:96::1"])
    spec: dict[str, Any] = {
        "ports": ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        "selector": {"app": name},
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ipFamilies": ["IPv6"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    if external_name is not None:
        spec = {"type": "ExternalName", "externalName": external_name, "sessionAffinity": "None"}
    if external_ips:
        spec["externalIPs"] = external_ips
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {"app": name},
        "managedFields": _MANAGED,
    }
    if annotations:
        meta["annotations"] = annotations
    return {"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {"loadBalancer": {}}}


def endpoint_slice(
    namespace: str,
    name: str,
    service_name: str,
    addresses: list[str],
    *,
    ready: bool | list[bool] = True,
    hostnames: list[str | None] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An EndpointSlice (discovery.k8s.io/v1) with one endpoint per address."""
    endpoints = []
    for i, address in enumerate(addresses):
        ok = ready[i] if isinstance(ready, list) else ready
        endpoint: dict[str, Any] = {
            "addresses": [address],
            "conditions": {"ready": ok, "serving": ok, "terminating": False},
            "nodeName": f"node-{i % 3}",
            "targetRef": {
                "kind": "Pod",
                "namespace": namespace,
                "name": f"{service_name}-{i}",
                "uid": f"11111111-0000-4000-8000-{i:012d}",
            },
        }
        if hostnames and hostnames[i]:
            endpoint["hostname"] = hostnames[i]
        endpoints.append(endpoint)
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generateName": f"{service_name}-",
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "managedFields": _MANAGED,
        },
        "addressType": "IPv6" if ":" in (addresses[0] if addresses else ":") else "IPv4",
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 8080}],
    }
