"""`msgscriptcli devhttp`: serve one script file over HTTP while editing it (re-read on every request).

It does not watch the file as the daemon does (FileStore.watching): reading a small file per request costs
little, the request that follows a save always sees it, and a broken edit is answered with its error (a Lua
syntax error with the file and line) instead of an older version.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import click
from aiohttp import web

from msgscript import config
from msgscript.cli.dev import dev_settings, read_dev_libraries, with_executor
from msgscript.cli.options import CommandFailed
from msgscript.cli.scripts import parse_text, read_text
from msgscript.cli.server import run_async
from msgscript.compose import open_dispatcher
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.http.body import BodyError, body_error_response, read_body
from msgscript.http.gateway import first_segment, html_response, request_target, script_url, text_response
from msgscript.http.protocol import GatewayRunner
from msgscript.http.server import clean_request_target
from msgscript.lua.syntax import LuaSyntaxCheck
from msgscript.message import Message
from msgscript.script import Script
from msgscript.store.memory_store import MemoryStore

log = logging.getLogger(__name__)

DEFAULT_DEVHTTP_PORT = 7634
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_LUA_SYNTAX = LuaSyntaxCheck()


@dataclass(frozen=True, slots=True)
class DevTarget:
    """What `devhttp` serves: a script file, an optional library directory and how to run them."""

    path: str
    library_dir: str
    executor: str | None
    timeout_s: float
    max_payload_bytes: int


def load_target(target: DevTarget) -> tuple[Script, dict[str, str]]:
    """Read the script file and the libraries from disk, as they are now (runs in a thread).

    Raises:
        CommandFailed: the script or a library cannot be read, or a Lua script does not compile (the text names the
            file and line).
    """
    text = read_text(target.path)
    script = with_executor(parse_text(target.path, text), target.executor)
    if script.executor == "lua":
        failure = _LUA_SYNTAX(text)
        if failure is not None:
            line, message = failure
            raise CommandFailed(f"{target.path}:{line}: {message}")
    if not target.library_dir:
        return script, {}
    try:
        return script, read_dev_libraries(target.library_dir)
    except OSError as exc:
        raise CommandFailed(f"failed to read librairies: {exc}") from exc
    except CommandFailed as exc:
        raise CommandFailed(f"failed to read librairies: {exc.message}") from exc


def build_dev_app(target: DevTarget, dispatcher: Dispatcher, store: MemoryStore) -> web.Application:
    """The devhttp application: every path runs the script with the first path segment as its subject.

    `dispatcher` runs scripts with the libraries of `store`, which each request refills from disk.
    """

    async def handle(request: web.Request) -> web.Response:
        subject = first_segment(request.path)
        log.info("Received HTTP request subject=%s client=%s", subject, request.remote)
        try:
            body = await read_body(request, target.max_payload_bytes)
        except BodyError as exc:
            return body_error_response(exc)
        try:
            script, libraries = await asyncio.to_thread(load_target, target)
        except CommandFailed as exc:
            log.error("%s", exc.message)
            return text_response(500, f"Error: {exc.message}")
        store.replace_libraries(libraries)
        url = script_url(request_target(request), subject) or "/"
        message = Message(subject=subject, payload=body, method=request.method, url=url)
        result = await dispatcher.run(script, message)
        if result.is_html:
            return html_response(result)
        if result.error:
            return text_response(500, f"Error: {result.error}")
        return web.Response(body=result.payload or b"", headers={"Content-Type": "text/plain"})

    # The gateway's checks of request targets (clean paths, `OPTIONS *`), as in the daemon.
    app = web.Application(client_max_size=target.max_payload_bytes, middlewares=[clean_request_target])
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve_devhttp(target: DevTarget, settings: Settings, host: str, port: int) -> None:
    """Serve `target` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        store = MemoryStore()
        async with open_dispatcher(settings, store) as dispatcher:
            # The daemon's connections: HTTP versions, Host, CONNECT, read timeouts, body decoding left to read_body.
            runner = GatewayRunner(
                build_dev_app(target, dispatcher, store),
                handle_signals=False,
                access_log=None,
                header_timeout_s=settings.http_header_timeout_s,
                body_timeout_s=settings.http_body_timeout_s,
            )
            await runner.setup()
            try:
                try:
                    await web.TCPSite(runner, host, port).start()
                except OSError as exc:
                    raise ConfigError(f"failed to start the HTTP server on {host}:{port}: {exc}") from exc
                click.echo(f"Starting HTTP server on port {port}", err=True)
                await stop.wait()
                click.echo("Received shutdown signal, stopping server...", err=True)
            finally:
                await runner.cleanup()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-l", "--library", default="", help="Library directory (re-read on every request).")
@click.option("-p", "--pluginDir", "plugin_dir", default="", help="Plugin directory.")
@click.option(
    "--port", type=click.IntRange(min=0, max=65535), default=DEFAULT_DEVHTTP_PORT, show_default=True, help="HTTP port."
)
@click.option("--host", default=config.DEFAULT_HTTP_HOST, show_default=True, help="HTTP address.")
@click.option("--timeout", "timeout_s", type=float, default=config.DEFAULT_SCRIPT_TIMEOUT_S, show_default=True)
@click.pass_obj
def devhttp(
    obj: dict[str, str | None], file: str, library: str, plugin_dir: str, port: int, host: str, timeout_s: float
) -> None:
    """Serve a script over HTTP, re-reading it from disk on every request."""
    target = DevTarget(
        path=file,
        library_dir=library,
        executor=obj.get("executor"),
        timeout_s=timeout_s,
        max_payload_bytes=config.DEFAULT_MAX_PAYLOAD_BYTES,
    )
    # Fail before serving when the script or the libraries cannot be read at all.
    load_target(target)
    settings = dev_settings(plugin_dir, timeout_s)
    try:
        run_async(serve_devhttp(target, settings, host, port))
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from exc
