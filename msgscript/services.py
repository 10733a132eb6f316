"""Clients the daemon shares between all executions, handed to Lua modules as `ctx.services`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from msgscript.config import Settings
from msgscript.etcd import open_etcd


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Open the shared clients, keyed by service name; they are closed on exit.

    - "http": an aiohttp.ClientSession without a default timeout (each call sets its own) and without a
      cookie jar (one script's cookies must never reach another's requests).
    - "etcd": the daemon's EtcdClient on `settings.etcd_endpoints`; it connects on first use, so the
      daemon starts whether or not etcd is up.
    """
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        )
        etcd = await stack.enter_async_context(open_etcd(settings))
        yield {"http": http, "etcd": etcd}
