"""Script stores and `open_store`, which picks the backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.store.base import Store
from msgscript.store.file import load_file_store
from msgscript.store.memory import MemoryStore

__all__ = ["MemoryStore", "Store", "load_file_store", "open_store"]


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """Open the store named by `settings.backend` for the daemon's lifetime.

    Raises:
        ConfigError: unknown backend, or the store cannot be loaded.
    """
    if settings.backend == "file":
        yield load_file_store(settings.script_dir, settings.library_dir)
        return
    raise ConfigError(f"Unknown backend: {settings.backend}")
