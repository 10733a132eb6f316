"""Script stores and `open_store`, which picks the backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.etcd import EtcdClient, open_etcd
from msgscript.store.base import Store
from msgscript.store.etcd import EtcdStore
from msgscript.store.file import load_file_store
from msgscript.store.memory import MemoryStore

__all__ = ["EtcdStore", "MemoryStore", "Store", "load_file_store", "open_store"]


@contextlib.asynccontextmanager
async def open_store(settings: Settings, etcd: EtcdClient | None = None) -> AsyncIterator[Store]:
    """Open the store named by `settings.backend` for the daemon's (or a CLI command's) lifetime.

    `etcd` is the client the etcd backend uses (the daemon shares its own); without one, a client on
    `settings.etcd_endpoints` (with the settings' TLS and user) is opened here and closed on exit.

    Raises:
        ConfigError: unknown backend, or the store cannot be loaded (for etcd: not read within 5 s;
            the text names the endpoint and the reason).
    """
    if settings.backend == "file":
        yield load_file_store(settings.script_dir, settings.library_dir)
        return
    if settings.backend == "etcd":
        async with contextlib.AsyncExitStack() as stack:
            if etcd is None:
                etcd = await stack.enter_async_context(open_etcd(settings))
            yield await stack.enter_async_context(EtcdStore(etcd))
        return
    raise ConfigError(f"Unknown backend: {settings.backend}")
