"""An executor opened when its first script runs: a daemon without such scripts never loads its runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from msgscript.executors.base import Executor, RunContext
from msgscript.message import Message, Result
from msgscript.script import Script

Opener = Callable[[], AbstractAsyncContextManager[Executor]]
"""Gives the real executor's context manager; called off the event loop, so it may import its runtime."""


class DeferredExecutor:
    """Stands for the executor `opener` gives, opening it on the first run and closing it on exit.

    The first run waits for the opening: the opener is called on a worker thread (importing a runtime such as
    wasmtime takes tens of milliseconds, which the event loop must not wait for), then its context is entered
    on the loop. Runs after the exit raise RuntimeError, as those of a closed executor do.
    """

    def __init__(self, name: str, opener: Opener) -> None:
        self.name = name
        self._opener = opener
        self._executor: Executor | None = None
        self._opening = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    async def __aenter__(self) -> DeferredExecutor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        async with self._opening:  # an opening under way ends first, and is closed with the rest
            self._closed = True
            await self._stack.aclose()

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Run the script on the real executor, opening it first if no script has run yet."""
        executor = self._executor or await self._open()
        return await executor.run(script, message, ctx)

    async def _open(self) -> Executor:
        async with self._opening:
            if self._closed:
                raise RuntimeError(f"the {self.name} executor is closed")
            if self._executor is None:
                opened = await asyncio.to_thread(self._opener)
                self._executor = await self._stack.enter_async_context(opened)
            return self._executor
