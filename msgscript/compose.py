"""Building the parts that run scripts: the store, the executors and the dispatcher over them.

The daemon (msgscript.app) and `msgscriptcli` (`dev`, `devhttp` and the store commands) build them here, so
a script runs the same way in both.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.etcd_client import EtcdClient, open_etcd
from msgscript.etcd_lock import EtcdLock
from msgscript.executors.base import Executor
from msgscript.executors.deferred import DeferredExecutor
from msgscript.executors.lua import LuaExecutor
from msgscript.executors.podman import open_podman_executor
from msgscript.locks import Lock, NoLock
from msgscript.lua.modules import builtin_modules
from msgscript.lua.plugin_loader import load_plugins
from msgscript.lua.syntax import LuaSyntaxCheck
from msgscript.services import open_services
from msgscript.store.base import Store
from msgscript.store.file_store import FileStore

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.metrics import Metrics


@contextlib.asynccontextmanager
async def open_store(settings: Settings, etcd: EtcdClient | None = None) -> AsyncIterator[Store]:
    """Open the store named by `settings.backend` for the daemon's (or a CLI command's) lifetime.

    `etcd` is the client the etcd backend uses (the daemon shares its own); without one, a client on
    `settings.etcd_endpoints` (with the settings' TLS and user) is opened here and closed on exit.

    The file backend follows its directories while open, unless `settings.watch` is off (FileStore.watching).

    Raises:
        ConfigError: unknown backend, no script directory for the file backend, or the store cannot be loaded
            (a directory or file unreadable; for etcd: not read within 5 s, the text naming the endpoint and
            the reason).
    """
    if settings.backend == "file":
        if not settings.script_dir:
            raise ConfigError("script directory cannot be empty")
        store = FileStore(settings.script_dir, settings.library_dir)
        await store.load()
        if not settings.watch:
            yield store
            return
        # Lua code is compiled (never run) to refuse a broken edit: the store does not import Lua itself.
        async with store.watching(check=LuaSyntaxCheck()):
            yield store
        return
    if settings.backend == "etcd":
        # Imported here: its watch loads gRPC, about 12 MB that a daemon on the file backend never needs.
        from msgscript.store.etcd_store import EtcdStore

        async with contextlib.AsyncExitStack() as stack:
            if etcd is None:
                etcd = await stack.enter_async_context(open_etcd(settings))
            yield await stack.enter_async_context(EtcdStore(etcd))
        return
    raise ConfigError(f"Unknown backend: {settings.backend}")


@contextlib.asynccontextmanager
async def open_executors(
    settings: Settings,
    nc: Any | None,
    *,
    etcd: EtcdClient | None = None,
    on_stuck: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, Executor]]:
    """Open every executor, by name, with the shared clients they use; they are closed on exit.

    `nc` is the NATS client of the Lua `nats` module (None in `msgscriptcli dev`). `etcd` is the daemon's
    etcd client, which Lua scripts then share with the store. `on_stuck` hears of executions stuck in a
    thread long past their deadline (see msgscript.executors.threads).

    Raises:
        ConfigError: a plugin failed to load.
    """
    modules = builtin_modules()
    try:
        modules |= load_plugins(settings.plugin_dir, settings.env, modules)
    except ConfigError as exc:
        raise ConfigError(f"failed to read plugins: {exc}") from exc
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings, etcd))
        lua = await stack.enter_async_context(
            LuaExecutor(
                modules=modules,
                nats=nc,
                env=settings.env,
                max_memory_bytes=settings.max_memory_bytes,
                threads=settings.lua_threads,
                services=services,
                on_stuck=on_stuck,
            )
        )
        yield {
            "lua": lua,
            "wasm": await stack.enter_async_context(
                DeferredExecutor("wasm", lambda: _open_wasm_executor(settings, on_stuck))
            ),
            "podman": await stack.enter_async_context(open_podman_executor(settings)),
        }


def _open_wasm_executor(
    settings: Settings, on_stuck: Callable[[str], None] | None
) -> AbstractAsyncContextManager[Executor]:
    # Imported on the first wasm run: wasmtime and its engine weigh about 8 MB that a daemon without wasm
    # scripts never needs.
    from msgscript.executors.wasm import open_wasm_executor

    return open_wasm_executor(settings, on_stuck)


@contextlib.asynccontextmanager
async def open_dispatcher(
    settings: Settings,
    store: Store,
    *,
    nc: Any | None = None,
    etcd: EtcdClient | None = None,
    on_stuck: Callable[[str], None] | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[Dispatcher]:
    """The dispatcher of `store`'s scripts, with the executors open for its lifetime.

    With an `etcd` client (the daemon on the etcd backend), `lock: true` scripts hold an EtcdLock on it;
    otherwise the lock is always granted (one node).
    """
    lock: Lock = EtcdLock(etcd) if etcd is not None and settings.backend == "etcd" else NoLock()
    async with open_executors(settings, nc, etcd=etcd, on_stuck=on_stuck) as executors:
        yield Dispatcher(store, executors, lock, script_timeout_s=settings.script_timeout_s, metrics=metrics)
