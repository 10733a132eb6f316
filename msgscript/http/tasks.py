"""Ownership of the dispatches HTTP requests start, so that none is left running unseen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from msgscript.message import Reply

log = logging.getLogger(__name__)


class DispatchTasks:
    """Every dispatch the gateway starts, until it ends.

    A request that stops waiting (its `_timeout` ran out, its client went away) cancels its dispatch;
    the task stays here until the cancellation has gone through the executor, and shutdown waits for it.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Reply]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, Reply], name: str) -> asyncio.Task[Reply]:
        """Run `coro` as a task owned by this set until it finishes."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Reply]) -> None:
        self._tasks.discard(task)
        # Retrieve the outcome so that a dispatch whose HTTP client went away never goes unreported.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("dispatch failed task=%s", task.get_name(), exc_info=exc)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the running dispatches, then cancel what is left."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        log.info("waiting for %d HTTP dispatches to finish", len(pending))
        _, still_running = await asyncio.wait(pending, timeout=timeout_s)
        for task in still_running:
            task.cancel()
        if still_running:
            log.warning("cancelled %d HTTP dispatches still running after %.1fs", len(still_running), timeout_s)
            await asyncio.wait(still_running)
