"""The HTTP side (aiohttp): `/metrics`, `/healthz`, `/readyz`.

`/healthz` answers 200 whenever the event loop runs this handler: a wedged loop fails the liveness
probe by not answering. `/readyz` is 200 only while the source has delivered its first full state,
every listener is bound, and the process is not in lame duck; Kubernetes then sends traffic only to
replicas that will answer correctly, and takes a terminating replica out before its sockets close.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from dnsd.config import Endpoint


class HttpServer:
    """A small aiohttp application bound to one address."""

    def __init__(self, endpoint: Endpoint, ready: Callable[[], tuple[bool, str]],
                 before_scrape: Callable[[], None] | None = None,
                 checks: Callable[[], list[tuple[str, bool, bool]]] | None = None) -> None:
        self.endpoint = endpoint
        self.ready = ready
        #: (name, passing, gates readiness) of every check, for /readyz?verbose
        self.checks = checks
        self.before_scrape = before_scrape
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.endpoint.host, self.endpoint.port, reuse_port=True)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server private; the bound port is needed
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.endpoint.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.before_scrape is not None:
            self.before_scrape()
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reason = self.ready()
        if "verbose" in request.query and self.checks is not None:
            # as Kubernetes' own /readyz?verbose: one line a check; only the gating ones decide
            lines = [f"[{'+' if passing else '-'}]{name} {'ok' if passing else 'failed'}"
                     f"{'' if gates else ' (informational)'}" for name, passing, gates in self.checks()]
            lines.append(f"readyz check {'passed' if ok else 'failed'}: {reason}")
            return web.Response(status=200 if ok else 503, text="\n".join(lines) + "\n")
        return web.Response(status=200 if ok else 503, text=reason + "\n")
