"""Executors and `open_executors`, the registry from executor name to executor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from msgscript.config import Settings
from msgscript.executors.base import Executor
from msgscript.executors.lua import LuaExecutor
from msgscript.executors.stubs import UnavailableExecutor
from msgscript.lua.modules import builtin_modules

__all__ = ["Executor", "open_executors"]


@contextlib.asynccontextmanager
async def open_executors(
    settings: Settings, nc: Any | None, services: Mapping[str, Any] | None = None
) -> AsyncIterator[dict[str, Executor]]:
    """Open every executor for the daemon's (or a CLI run's) lifetime."""
    async with contextlib.AsyncExitStack() as stack:
        lua = await stack.enter_async_context(
            LuaExecutor(
                modules=builtin_modules(),
                nats=nc,
                env=settings.env,
                max_memory_bytes=settings.max_memory_bytes,
                threads=settings.lua_threads,
                services=services or {},
            )
        )
        executors: dict[str, Executor] = {
            "lua": lua,
            "wasm": UnavailableExecutor("wasm", "wasm"),
            "podman": UnavailableExecutor("podman", "podman"),
        }
        yield executors
