"""Clients the daemon shares between all executions, handed to Lua modules as `ctx.services`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from msgscript.config import Settings


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Open the shared clients, keyed by service name; they are closed on exit.

    - "http": an aiohttp.ClientSession without a default timeout (each call sets its own).
    """
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), trust_env=False)
        )
        yield {"http": http}
