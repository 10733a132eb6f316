"""The contract between the Lua executor and the modules scripts `require` (built-ins and plugins)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModuleContext:
    """What a module may use during one execution. Modules run on a Lua worker thread."""

    loop: asyncio.AbstractEventLoop
    nats: Any | None
    """The daemon's nats-py client, or None where there is no NATS (msgscriptcli dev)."""
    env: Mapping[str, str]
    deadline: float
    workdir: Callable[[], str]
    """Returns the execution's scratch directory, creating it on first use."""
    services: Mapping[str, Any]
    """Shared clients opened by the daemon (e.g. "etcd"), looked up by name."""

    def remaining_s(self) -> float:
        """Seconds left before the execution's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the daemon's event loop and wait for it, bounded by the deadline."""
        limit = self.remaining_s() if timeout_s is None else min(timeout_s, self.remaining_s())
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(limit)
        except TimeoutError:
            future.cancel()
            raise


class LuaModule(Protocol):
    """A module that Lua scripts load with `require(name)`.

    `load` runs on the Lua worker thread once per execution that requires the module, and returns
    the value `require` gives the script (usually a Lua table built with `lua.table_from`).
    """

    name: str

    def load(self, lua: Any, ctx: ModuleContext) -> object: ...
