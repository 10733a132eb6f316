"""The contract between the Lua executor and the modules scripts `require` (built-ins and plugins).

Plugins import these names from `msgscript.lua.api`, which also offers the helpers they may use; the
package's own modules import them from here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from collections.abc import Callable, Coroutine, Mapping, MutableSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from msgscript.services import Services

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
    """Returns the execution's current directory: where relative paths resolve. It starts as a scratch
    directory of its own (created on first use, removed when the execution ends); the process's working
    directory is never used or changed."""
    chdir: Callable[[str], None]
    """Moves the execution's current directory (lfs.chdir); raises OSError if the path is not a directory."""
    services: Services | None
    """The clients the daemon shares between executions (`services.http`, `services.etcd`); None when the
    executor was built without them."""
    to_lua: Callable[[object], object]
    """Converts a Python value for Lua: str → string, dict/list → table, a callable → a Lua function.

    A module that hands Python functions to Lua code of its own must pass them through this: Lua then
    calls them with the memory cap lifted, and their exceptions become Lua errors. (What `load` returns
    is converted already.)"""
    on_close: Callable[[Callable[[], object]], None]
    """Registers a callback run when the execution ends, however it ends: close what the script left open."""
    set_global: Callable[[str, object], None]
    """Defines a global in the requiring script's environment (as requiring `etcd` defines `EtcdKV`);
    called from `load`, it takes effect when `require` returns. The value is converted like `load`'s."""
    charge: Callable[[int], None]
    """Counts bytes of Python memory a module function uses for the script (what it reads, decodes or
    builds) against the execution's memory cap, which Lua cannot enforce while Python runs; raises
    MemoryError, which the script sees as `not enough memory`, when the cap is reached. The count starts
    afresh with each call from Lua. Arguments received from Lua and the values returned to it are counted
    already; a module charges its working data as it grows (a response body chunk by chunk, an encoder's
    output piece by piece). Inside an inline execution (modules marked `inline_safe`) the budget is small:
    going past it moves the execution to a worker thread instead of failing, which also bounds the CPU
    such a module may spend on the event loop."""
    waits: MutableSet[concurrent.futures.Future[Any]]
    """The calls to the event loop in progress (see `call`), cancelled when the execution is."""
    context: contextvars.Context
    """The context variables of the task that started the execution (its trace span among them): the
    coroutines `call` runs on the event loop see them."""

    def remaining_s(self) -> float:
        """Seconds left before the execution's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the daemon's event loop and wait for it, bounded by the deadline.

        Raises:
            TimeoutError: the deadline (or `timeout_s`) passed first; the coroutine is cancelled.
            concurrent.futures.CancelledError: the execution was cancelled meanwhile.
        """
        limit = self.remaining_s() if timeout_s is None else min(timeout_s, self.remaining_s())
        # The task that runs the coroutine takes its context from where it is scheduled.
        future = self.context.run(asyncio.run_coroutine_threadsafe, coro, self.loop)
        self.waits.add(future)
        try:
            return future.result(limit)
        except TimeoutError:
            future.cancel()
            raise
        finally:
            self.waits.discard(future)


class LuaModule(Protocol):
    """A module that Lua scripts load with `require(name)`.

    `load` runs on the Lua worker thread once per execution that requires the module, and returns
    the value `require` gives the script (usually a Lua table built with `lua.table_from`).
    """

    name: str
    """What scripts pass to `require`."""
    inline_safe: bool
    """True for a module that only computes (no blocking, no `ctx.call`, no files, sockets or processes):
    short scripts that use only such modules may run on the event loop. A module loaded without the
    attribute counts as False."""

    def load(self, lua: Any, ctx: ModuleContext) -> object: ...


def lua_chunk(lua: Any, name: str, source: bytes) -> Any:
    """Run a module's own Lua source once per runtime and return (and remember) what it returns.

    For the parts of a module easier written in Lua. The chunk runs in the runtime's own globals, not
    in a script's environment. Python functions handed to what it returns must go through ctx.to_lua.
    """
    key = b"__msgscript_chunk_" + name.encode()
    store = lua.globals()
    value = store[key]
    if value is None:
        value = lua.compile(source, name=f"={name}")()
        store[key] = value
    return value
