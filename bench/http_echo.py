"""A bare aiohttp handler for `POST /<subject>`: the baseline of the HTTP benchmark.

It answers with fixed bytes (`--body-file`, normally what the daemon answered to the same request, so both
sides send the same response) or, without one, with the request body.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from aiohttp import web

from msgscript.cli.server import run_async

SHUTDOWN_TIMEOUT_S = 5.0


def make_app(body: bytes | None, content_type: str) -> web.Application:
    """An application with a single `POST /{subject}` route."""

    async def respond(request: web.Request) -> web.Response:
        received = await request.read()
        return web.Response(body=received if body is None else body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/{subject}", respond)
    return app


async def serve(host: str, port: int, body: bytes | None, content_type: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(body, content_type), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--body-file", type=Path, help="answer with the bytes of this file instead of the request body")
    parser.add_argument("--content-type", default="application/json", help="Content-Type (default: %(default)s)")
    args = parser.parse_args()
    body = args.body_file.read_bytes() if args.body_file is not None else None
    run_async(serve(args.host, args.port, body, args.content_type))


if __name__ == "__main__":
    main()
