"""Clients the daemon shares between all executions, handed to Lua modules as `ctx.services`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from msgscript.config import Settings
from msgscript.etcd_client import EtcdClient, open_etcd


@dataclass(frozen=True, slots=True)
class Services:
    """The shared clients, opened by `open_services` and closed with it."""

    http: aiohttp.ClientSession
    """Without a default timeout (each call sets its own) and without a cookie jar (one script's cookies must
    never reach another's requests)."""
    etcd: EtcdClient
    """The daemon's client (shared with its store) or one of the services' own; it connects on first use, so
    nothing needs etcd to be up."""


@contextlib.asynccontextmanager
async def open_services(settings: Settings, etcd: EtcdClient | None = None) -> AsyncIterator[Services]:
    """Open the shared clients; those opened here are closed on exit.

    `etcd` is the daemon's client; without one, a client on `settings.etcd_endpoints` is opened here.
    """
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        )
        if etcd is None:
            etcd = await stack.enter_async_context(open_etcd(settings))
        yield Services(http=http, etcd=etcd)
