"""Clients the daemon shares between all executions, handed to Lua modules as `ctx.services`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from msgscript.config import Settings
from msgscript.etcd import EtcdClient, open_etcd


@contextlib.asynccontextmanager
async def open_services(settings: Settings, etcd: EtcdClient | None = None) -> AsyncIterator[dict[str, Any]]:
    """Open the shared clients, keyed by service name; they are closed on exit.

    - "http": an aiohttp.ClientSession without a default timeout (each call sets its own) and without a
      cookie jar (one script's cookies must never reach another's requests).
    - "etcd": `etcd` (the daemon's client, shared with its store), or a client of its own on
      `settings.etcd_endpoints`; either connects on first use, so nothing needs etcd to be up.
    """
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        )
        if etcd is None:
            etcd = await stack.enter_async_context(open_etcd(settings))
        yield {"http": http, "etcd": etcd}
