"""Executors and `open_executors`, the registry from executor name to executor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.etcd import EtcdClient
from msgscript.executors.base import Executor
from msgscript.executors.lua import LuaExecutor
from msgscript.executors.podman import open_podman_executor
from msgscript.executors.wasm import open_wasm_executor
from msgscript.lua.modules import builtin_modules
from msgscript.plugins import load_plugins
from msgscript.services import open_services

__all__ = ["Executor", "open_executors"]


@contextlib.asynccontextmanager
async def open_executors(
    settings: Settings,
    nc: Any | None,
    *,
    etcd: EtcdClient | None = None,
    on_stuck: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, Executor]]:
    """Open every executor for the daemon's (or a CLI run's) lifetime, with the shared clients they use.

    `etcd` is the daemon's etcd client, which Lua scripts then share with the store. `on_stuck` hears of
    executions stuck in a thread long past their deadline (see msgscript.executors.threads).

    Raises:
        ConfigError: a plugin failed to load.
    """
    modules = builtin_modules()
    try:
        modules |= load_plugins(settings.plugin_dir, settings.env, modules)
    except ConfigError as exc:
        raise ConfigError(f"failed to read plugins: {exc}") from exc
    async with contextlib.AsyncExitStack() as stack:
        shared = await stack.enter_async_context(open_services(settings, etcd))
        lua = await stack.enter_async_context(
            LuaExecutor(
                modules=modules,
                nats=nc,
                env=settings.env,
                max_memory_bytes=settings.max_memory_bytes,
                threads=settings.lua_threads,
                services=shared,
                on_stuck=on_stuck,
            )
        )
        executors: dict[str, Executor] = {
            "lua": lua,
            "wasm": await stack.enter_async_context(open_wasm_executor(settings, on_stuck)),
            "podman": await stack.enter_async_context(open_podman_executor(settings)),
        }
        yield executors
