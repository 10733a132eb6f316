"""/readyz over a real socket: ready while NATS is connected, 503 with the reason while it is away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from msgscript.app import running
from tests.conftest import fixture_settings, gateway_daemon
from tests.fixtures import write_fixtures
from tests.servers import free_port, run_nats_server

T = 20.0


async def readyz(session: aiohttp.ClientSession, base: str) -> tuple[int, str]:
    async with session.get(base + "/readyz") as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        return resp.status, await resp.text()


async def readyz_becomes(session: aiohttp.ClientSession, base: str, expected: tuple[int, str]) -> None:
    """Poll /readyz until it answers `expected` (the daemon notices NATS leaving and coming back on its own)."""
    async with asyncio.timeout(T):
        while (answer := await readyz(session, base)) != expected:
            assert answer in ((200, "ready"), (503, "not ready: NATS disconnected")), answer
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def daemon_on_nats_port(root: Path, nats_port: int) -> AsyncIterator[str]:
    """A daemon on the fixture scripts, for a nats-server on `nats_port` that the test starts and stops itself;
    yields the gateway's base URL."""
    scripts, libs = write_fixtures(root)
    port = free_port()
    settings = fixture_settings(f"nats://127.0.0.1:{nats_port}", scripts, libs, http_port=port)
    async with running(settings):
        yield f"http://127.0.0.1:{port}"


async def test_readyz_follows_the_nats_connection(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    nats_port = free_port()
    # The servers outlive the daemon, so that it stops with NATS there to drain to.
    async with contextlib.AsyncExitStack() as servers:
        first = await servers.enter_async_context(run_nats_server(port=nats_port))
        async with daemon_on_nats_port(tmp_path, nats_port) as base:
            assert await readyz(client, base) == (200, "ready")
            first.process.terminate()
            await first.process.wait()
            await readyz_becomes(client, base, (503, "not ready: NATS disconnected"))
            # The process is alive all along: /healthz does not follow NATS.
            async with client.get(base + "/healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
            # The same port again: the daemon reconnects by itself, and counts it.
            await servers.enter_async_context(run_nats_server(port=nats_port))
            await readyz_becomes(client, base, (200, "ready"))
            async with client.get(base + "/metrics") as resp:
                assert "msgscript_nats_reconnects_total 1.0" in await resp.text()
            async with client.post(base + "/funcs.hello", data=b"back") as resp:
                assert resp.status == 200


async def test_readyz_needs_no_token_and_ignores_the_browse_mode(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with gateway_daemon(tmp_path, http_token="t0ken", browse="off") as port:
        base = f"http://127.0.0.1:{port}"
        assert await readyz(client, base) == (200, "ready")
        async with client.get(base + "/funcs.hello") as resp:
            assert resp.status == 401
