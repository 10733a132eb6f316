"""Helpers for writing modules that stay inside an execution's limits; the built-ins and bundled plugins use them.

- `LoopCharges`: charge the memory cap from a coroutine that `ModuleContext.call` runs on the event loop.
- `raw_getter(lua)`: read a field of a script's table without running its `__index` metamethod.
- `raw_text(value)`: a Lua value as text the way gopher-lua prints it, without `__tostring` metamethods.
- `HandleLimit`: how many files, sockets or iterators of one kind an execution may hold open at once.

Why raw access: a script's code called back from Python (a metamethod run by indexing a table or by
`tostring`) runs while the module call has the Lua memory cap lifted, so it could allocate without bound.
The Go libraries read options with RawGet and print values with String(), which run no metamethods either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lupa.lua51 as lupa51

from msgscript.lua.contract import ModuleContext

DEFAULT_MAX_HANDLES = 64
"""Open handles of one kind one execution may hold at once (the sandbox allows as many io files)."""


class LoopCharges:
    """Charges `ModuleContext.charge` from a coroutine run by `ctx.call`, for as long as that call waits for it.

    The memory count belongs to the module call waiting in `ctx.call`; a coroutine still winding down after
    that call gave up (its deadline passed) must not charge whatever the execution does next. Use it as a
    context manager around the `ctx.call`, and hand it to the coroutine as its charge function.
    """

    __slots__ = ("_charge", "_open")

    def __init__(self, ctx: ModuleContext) -> None:
        self._charge = ctx.charge
        self._open = True

    def __call__(self, nbytes: int) -> None:
        if self._open:
            self._charge(nbytes)

    def __enter__(self) -> LoopCharges:
        return self

    def __exit__(self, *_: object) -> None:
        self._open = False


def raw_getter(lua: Any) -> Callable[[Any, object], Any]:
    """The runtime's own `rawget`: `rawget(table, key)` reads a field without calling any metamethod."""
    rawget: Callable[[Any, object], Any] = lua.globals()[b"rawget"]
    return rawget


def raw_text(value: object) -> str:
    """`table: 0x...`, `function: 0x...`: a table, function, userdata or thread as Lua names it, without calling
    its `__tostring` metamethod (lupa's repr gives the same address). Other values give their Python text."""
    kind = lupa51.lua_type(value)
    if kind is None:
        return str(value)
    address = repr(value).rsplit(" ", 1)[-1].rstrip(">")
    return f"{kind}: {address}"


class HandleLimit:
    """Counts the handles of one kind an execution holds open; refuses one more past `limit`.

    A script that opens in a loop and never closes would otherwise exhaust the process's file descriptors,
    which every other execution shares. The module calls `acquire` before opening and `release` once the
    handle is closed (by the script or when the execution ends).
    """

    __slots__ = ("_limit", "_open")

    def __init__(self, limit: int = DEFAULT_MAX_HANDLES) -> None:
        self._limit = limit
        self._open = 0

    def acquire(self) -> bool:
        """Count one more open handle; False (and nothing counted) when `limit` are open already."""
        if self._open >= self._limit:
            return False
        self._open += 1
        return True

    def release(self) -> None:
        """Count one handle less."""
        self._open = max(0, self._open - 1)
