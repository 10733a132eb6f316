"""The HTTP server of the daemon: routes, the clean-path redirect, and `http_site` for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from msgscript.catalog import Catalog
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.http import pages
from msgscript.http.gateway import handle_gateway
from msgscript.http.keys import CATALOG, DISPATCHER, README_HTML, SETTINGS, TASKS
from msgscript.http.readme import render_readme
from msgscript.http.tasks import DispatchTasks

log = logging.getLogger(__name__)

# Characters Go leaves unescaped in a URL path.
_PATH_SAFE = "/!$&'()*+,;=:@~"


def clean_path(path: str) -> str:
    """Go's path cleaning for routing: no empty, `.` or `..` segments; a trailing slash is kept."""
    if not path:
        return "/"
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
async def redirect_unclean_paths(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a path holding `//`, `/./` or `/../` with a 301 to its clean form (query kept)."""
    path = request.path
    cleaned = clean_path(path)
    if cleaned == path:
        return await handler(request)
    location = quote(cleaned, safe=_PATH_SAFE)
    query = request.raw_path.partition("?")[2]
    if query:
        location += "?" + query
    return web.Response(status=301, headers={"Location": location})


async def handle_favicon(request: web.Request) -> web.Response:
    """An empty icon, so that browsers stop asking the gateway for a `favicon.ico` subject."""
    return web.Response(status=200)


def build_app(
    dispatcher: Dispatcher, catalog: Catalog, settings: Settings, *, readme_html: str = ""
) -> web.Application:
    """The aiohttp application: the browse pages (unless turned off) and the function gateway."""
    app = web.Application(client_max_size=settings.max_payload_bytes, middlewares=[redirect_unclean_paths])
    app[DISPATCHER] = dispatcher
    app[CATALOG] = catalog
    app[SETTINGS] = settings
    app[TASKS] = DispatchTasks()
    app[README_HTML] = readme_html
    browse = settings.browse
    router = app.router
    router.add_route("*", "/", pages.handle_readme if browse else pages.handle_browse_off)
    router.add_route("*", "/favicon.ico", handle_favicon)
    router.add_route("*", "/_/", pages.handle_readme if browse else pages.handle_browse_off)
    router.add_route("*", "/_/list", pages.handle_list if browse else pages.handle_browse_off)
    router.add_route("*", "/_/subject/{subject:[^/]+}", pages.handle_subject if browse else pages.handle_browse_off)
    router.add_route(
        "*", "/_/info/{subject:[^/]+}/{name:[^/]+}", pages.handle_info if browse else pages.handle_browse_off
    )
    router.add_route("*", "/{tail:.*}", handle_gateway)
    return app


@contextlib.asynccontextmanager
async def http_site(dispatcher: Dispatcher, catalog: Catalog, settings: Settings) -> AsyncIterator[web.AppRunner]:
    """Serve HTTP on `settings.http_host:http_port`; on exit stop accepting and let in-flight requests finish."""
    readme_html = await asyncio.to_thread(render_readme) if settings.browse else ""
    app = build_app(dispatcher, catalog, settings, readme_html=readme_html)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=settings.grace_period_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        log.info("Starting HTTP server on port %d", settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"failed to start the HTTP server on {settings.http_host}:{settings.http_port}: {exc}"
            ) from exc
        yield runner
    finally:
        log.info("stopping the HTTP server")
        await runner.cleanup()
        # Requests whose wait ran out left their scripts running; they end before the executors close.
        await app[TASKS].drain(settings.grace_period_s)
