"""The deferred executor: the real executor is opened by the first run, once, and closed with it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from msgscript.executors.base import Executor, RunContext
from msgscript.executors.deferred import DeferredExecutor
from msgscript.executors.stubs import UnavailableExecutor
from msgscript.message import Message, Result
from msgscript.script import Script

SCRIPT = Script(subject="funcs.wasm", name="wasm", content="module.wasm", executor_header="wasm")
MESSAGE = Message(subject="funcs.wasm", payload=b"John")


def _context() -> RunContext:
    return RunContext(deadline=time.monotonic() + 5, timeout_s=5)


class Openings:
    """Opens the stand-in executor of a missing runtime, recording each opening and closing."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Executor]:
        self.events.append("opened")
        try:
            yield UnavailableExecutor("wasm", "wasm")
        finally:
            self.events.append("closed")


async def test_the_executor_is_opened_by_the_first_runs_once_and_closed_on_exit() -> None:
    openings = Openings()
    async with DeferredExecutor("wasm", openings.open) as executor:
        assert executor.name == "wasm"
        assert openings.events == []
        results = await asyncio.gather(*(executor.run(SCRIPT, MESSAGE, _context()) for _ in range(3)))
        assert results == [Result.failure("msgscript wasn't built with wasm support")] * 3
        assert openings.events == ["opened"]
    assert openings.events == ["opened", "closed"]


async def test_an_executor_never_run_is_never_opened_nor_opened_after_exit() -> None:
    openings = Openings()
    async with DeferredExecutor("wasm", openings.open) as executor:
        pass
    with pytest.raises(RuntimeError, match="the wasm executor is closed"):
        await executor.run(SCRIPT, MESSAGE, _context())
    assert openings.events == []
