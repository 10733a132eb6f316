"""The wasm executor (being written: until then its scripts get the "wasn't built with wasm support" error)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from msgscript.config import Settings
from msgscript.executors.base import Executor
from msgscript.executors.stubs import UnavailableExecutor


@contextlib.asynccontextmanager
async def open_wasm_executor(settings: Settings) -> AsyncIterator[Executor]:
    """The wasm executor for the daemon's lifetime, or the stand-in when its runtime is missing."""
    yield UnavailableExecutor("wasm", "wasm")
