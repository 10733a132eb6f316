"""The HTTP server of the daemon: routes, the clean-path redirect, and `http_site` for its lifetime."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from msgscript.catalog import Catalog
from msgscript.config import BROWSE_MODES, WORKER_VARIABLE, Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.http import pages
from msgscript.http.access import (
    HEALTHZ_PATH,
    METRICS_PATH,
    READYZ_PATH,
    bearer_token_middleware,
    browse_page,
    handle_healthz,
    handle_readyz,
)
from msgscript.http.gateway import handle_gateway
from msgscript.http.keys import (
    CATALOG,
    DISPATCHER,
    DURABLE,
    IN_FLIGHT,
    METRICS,
    READINESS,
    README,
    SETTINGS,
    TASKS,
    Readiness,
)
from msgscript.http.protocol import GatewayRunner
from msgscript.http.quick import QuickAnswers
from msgscript.http.readme import Readme
from msgscript.http.tasks import DispatchTasks
from msgscript.inflight import InFlightLimit

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.jetstream import DurableConsumers
    from msgscript.metrics import Metrics

log = logging.getLogger(__name__)

WORKER_HEADER = "Msgscript-Worker"
"""On /healthz, /readyz and /metrics when there are several workers: the index of the worker that answered."""

# Characters Go leaves unescaped in a URL path.
_PATH_SAFE = "/!$&'()*+,;=:@~"


def clean_path(path: str) -> str:
    """Go's path cleaning for routing: no empty, `.` or `..` segments; a trailing slash is kept."""
    if not path:
        return "/"
    if path[0] == "/" and "//" not in path and "/." not in path:
        return path  # no empty, `.` or `..` segment can hide here: the common case, without the split
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    cleaned = "/" + "/".join(segments)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


@web.middleware
async def clean_request_target(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer the targets that are not clean paths: a path holding `//`, `/./` or `/../` with a 301 to its clean
    form (query kept), and `OPTIONS *` with an empty 200."""
    path = request.path
    cleaned = clean_path(path)
    if cleaned == path:
        return await handler(request)
    if request.raw_path == "*":
        # The asterisk form (the parser admits it for OPTIONS only) asks about the server, not a resource.
        return web.Response(status=200)
    location = quote(cleaned, safe=_PATH_SAFE)
    query = request.raw_path.partition("?")[2]
    if query:
        location += "?" + query
    return web.Response(status=301, headers={"Location": location})


async def handle_favicon(request: web.Request) -> web.Response:
    """An empty icon, so that browsers stop asking the gateway for a `favicon.ico` subject."""
    return web.Response(status=200)


async def handle_metrics_off(request: web.Request) -> web.Response:
    """What `/metrics` answers under `-no-metrics`: the path stays ours rather than reaching a `metrics` subject."""
    return web.Response(status=404, text="404: Not Found", content_type="text/plain", charset="utf-8")


async def handle_metrics(request: web.Request) -> web.Response:
    """The daemon's metrics, in the format the scraper's `Accept` asks for (Prometheus text or OpenMetrics),
    compressed when its `Accept-Encoding` allows."""
    from prometheus_client.exposition import choose_encoder

    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encode(request.app[METRICS].registry), headers={"Content-Type": content_type})
    response.enable_compression()
    return response


def _always_ready() -> str:
    return ""


def naming_worker(handler: Handler, worker: str) -> Handler:
    """`handler`, whose responses say which worker answered (WORKER_HEADER)."""

    async def named(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        response.headers[WORKER_HEADER] = worker
        return response

    return named


def build_app(
    dispatcher: Dispatcher,
    catalog: Catalog,
    settings: Settings,
    *,
    in_flight: InFlightLimit | None = None,
    metrics: Metrics | None = None,
    readiness: Readiness = _always_ready,
    durable: DurableConsumers | None = None,
) -> web.Application:
    """The aiohttp application: `/healthz`, `/readyz`, `/metrics`, the browse pages (as `settings.browse` allows)
    and the function gateway.

    `in_flight` is the bound the gateway shares with NATS; without one the application gets its own. `metrics`
    are served on `/metrics` (without them it answers 404); `readiness` tells `/readyz` why the daemon cannot
    serve, if it cannot.

    Raises:
        ConfigError: `settings.browse` is not one of `local`, `public`, `off`.
    """
    browse = settings.browse
    if browse not in BROWSE_MODES:
        raise ConfigError(f"invalid browse mode {browse!r}: expected one of {', '.join(BROWSE_MODES)}")
    middlewares: list[Middleware] = [clean_request_target]
    if settings.http_token:
        middlewares.insert(0, bearer_token_middleware(settings.http_token))
    app = web.Application(client_max_size=settings.max_payload_bytes, middlewares=middlewares)
    app[DISPATCHER] = dispatcher
    app[CATALOG] = catalog
    app[SETTINGS] = settings
    app[TASKS] = DispatchTasks()
    app[IN_FLIGHT] = in_flight or InFlightLimit(settings.max_in_flight)
    app[README] = Readme()
    app[READINESS] = readiness
    if durable is not None:
        app[DURABLE] = durable
    router = app.router
    # With several workers, a probe or a scrape reaches one of them: the answer says which.
    worker = settings.env.get(WORKER_VARIABLE, "0") if settings.workers > 1 else ""

    def own(handler: Handler) -> Handler:
        return naming_worker(handler, worker) if worker else handler

    # Exact paths, registered before the gateway: a subject of the same name is reached as /<subject>/... only.
    router.add_route("*", HEALTHZ_PATH, own(handle_healthz))
    router.add_route("*", READYZ_PATH, own(handle_readyz))
    if metrics is None:
        router.add_route("*", METRICS_PATH, handle_metrics_off)
    else:
        app[METRICS] = metrics
        router.add_route("*", METRICS_PATH, own(handle_metrics))
    router.add_route("*", "/favicon.ico", handle_favicon)
    # The README has no script data, but it follows the browse mode with the pages it links to.
    router.add_route("*", "/", browse_page(pages.handle_readme, browse))
    router.add_route("*", "/_/", browse_page(pages.handle_readme, browse))
    router.add_route("*", "/_/list", browse_page(pages.handle_list, browse))
    router.add_route("*", "/_/subject/{subject:[^/]+}", browse_page(pages.handle_subject, browse))
    router.add_route("*", "/_/info/{subject:[^/]+}/{name:[^/]+}", browse_page(pages.handle_info, browse))
    router.add_route("*", "/{tail:.*}", handle_gateway)
    return app


@contextlib.asynccontextmanager
async def http_site(
    dispatcher: Dispatcher,
    catalog: Catalog,
    settings: Settings,
    *,
    in_flight: InFlightLimit,
    listeners: Sequence[socket.socket] = (),
    metrics: Metrics | None = None,
    readiness: Readiness = _always_ready,
    durable: DurableConsumers | None = None,
) -> AsyncIterator[web.AppRunner]:
    """Serve HTTP on `listeners` (sockets bound already, shared with the supervisor and the other workers), or
    else on `settings.http_host:http_port`; on exit stop accepting and let in-flight requests finish."""
    app = build_app(
        dispatcher,
        catalog,
        settings,
        in_flight=in_flight,
        metrics=metrics,
        readiness=readiness,
        durable=durable,
    )
    runner = GatewayRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.grace_period_s,
        # A client that goes away cancels its handler, and with it the dispatch nobody waits for.
        handler_cancellation=True,
        header_timeout_s=settings.http_header_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        quick=QuickAnswers(app) if QuickAnswers.supported() else None,
    )
    await runner.setup()
    try:
        sites: list[web.BaseSite] = [web.SockSite(runner, sock) for sock in listeners]
        if not sites:
            sites.append(web.TCPSite(runner, settings.http_host, settings.http_port))
        log.info("Starting HTTP server on port %d", settings.http_port)
        try:
            for site in sites:
                await site.start()
        except OSError as exc:
            raise ConfigError(
                f"failed to start the HTTP server on {settings.http_host}:{settings.http_port}: {exc}"
            ) from exc
        yield runner
    finally:
        log.info("stopping the HTTP server")
        await runner.cleanup()
        # Dispatches cancelled by requests that stopped waiting end before the executors close.
        await app[TASKS].drain(settings.grace_period_s)
