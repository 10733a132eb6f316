"""Worker threads for blocking executions, which the event loop never waits on past their deadline.

A thread cannot be stopped from outside. Lua stops itself at its deadline (the instruction hook) but not
inside one long C call (a pathological pattern, a read that blocks); a WASI sleep does not stop either. So
the event loop waits for a job only until its deadline plus ABANDON_AFTER_S. A job still running then is
abandoned: its caller gets TimeoutError at once, the thread running it leaves the pool (a new one takes
its place, so capacity is kept) and runs at the lowest CPU priority until the call returns, then exits.
A job abandoned for longer than STUCK_AFTER_S is reported through `on_stuck`: only a new process gets
that thread back, and the daemon's supervisor can start one (see msgscript.supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

from msgscript.errors import MsgscriptError

log = logging.getLogger(__name__)

T = TypeVar("T")

ABANDON_AFTER_S = 0.25
"""How long past its deadline a job may run before the event loop stops waiting for it."""
STUCK_AFTER_S = 2.0
"""How long an abandoned job may go on before it is reported as stuck."""
_LOWEST_PRIORITY = 19


class JobAbandoned(MsgscriptError, TimeoutError):
    """Raised to the caller of a job still running past its deadline (it goes on without a waiter)."""


class _State(Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3
    DROPPED = 4
    """Never started: its caller gave up first."""


class _Job(Generic[T]):
    __slots__ = ("abandoned", "args", "fn", "future", "loop", "on_cancel", "state", "thread")

    def __init__(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[], None] | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.on_cancel = on_cancel
        self.state = _State.QUEUED
        self.abandoned = False
        self.thread: _Worker | None = None


class _Worker(threading.Thread):
    def __init__(self, pool: WorkerThreads, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.tid = 0

    def run(self) -> None:
        self.tid = threading.get_native_id()
        self.pool._serve(self)


class WorkerThreads:
    """At most `max_threads` threads running jobs for the event loop; started on demand, never joined on a job.

    Use it as an async context manager. `run` submits a job and waits for it, up to its deadline.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        name: str,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self._max_threads = max_threads
        self._name = name
        self._on_stuck = on_stuck
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._idle = 0
        self._count = 0
        self._abandoned: set[_Job[Any]] = set()
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Abandoned jobs whose threads are still running."""
        with self._lock:
            return len(self._abandoned)

    async def __aenter__(self) -> WorkerThreads:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, timeout_s: float = 1.0) -> None:
        """Let each thread finish its job, then end it; threads still busy after `timeout_s` are left behind."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            await asyncio.to_thread(worker.join, max(0.0, deadline - time.monotonic()))
        left = [w.name for w in workers if w.is_alive()]
        if left or self._abandoned:
            log.warning("leaving %d busy %s threads behind", len(left) + len(self._abandoned), self._name)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        deadline: float,
        on_cancel: Callable[[], None] | None = None,
        what: str = "",
    ) -> T:
        """Run `fn(*args)` on a worker thread and return its result; `deadline` is a time.monotonic() value.

        When the caller is cancelled, a job that has not started never does, and `on_cancel` is called for
        one that has (it must make `fn` return soon).

        Raises:
            JobAbandoned: the job was still running ABANDON_AFTER_S past `deadline`; it goes on alone.
            TimeoutError: the job could not even start before then (every thread was busy).
            RuntimeError: the pool is closed.
        """
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, args, loop, on_cancel)
        self._submit(job)
        timer = loop.call_later(max(0.0, deadline - time.monotonic() + ABANDON_AFTER_S), job.future.cancel)
        try:
            return await job.future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self._give_up(job, cancelled=True, what=what)
                raise
            # The timer cancelled the job's future: the deadline has passed.
            if self._give_up(job, cancelled=False, what=what):
                raise JobAbandoned(f"{self._name} job abandoned {ABANDON_AFTER_S}s past its deadline") from None
            raise TimeoutError(f"no {self._name} thread became free before the deadline") from None
        finally:
            timer.cancel()

    def _submit(self, job: _Job[Any]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self._name} threads are closed")
        self._queue.put(job)
        self._start_thread_if_needed()

    def _start_thread_if_needed(self) -> None:
        """Start a thread when more jobs wait than threads are idle, and the pool is below its size.

        Threads still stuck in abandoned jobs count too, up to as many again as the pool's size: a flood of
        scripts that get stuck must not make threads without bound (the worker is replaced meanwhile).
        """
        with self._lock:
            if (
                self._closed
                or len(self._workers) >= self._max_threads
                or len(self._workers) + len(self._abandoned) >= 2 * self._max_threads
                or self._queue.qsize() <= self._idle
            ):
                return
            self._count += 1
            worker = _Worker(self, f"{self._name}-{self._count}")
            self._workers.add(worker)
            self._idle += 1
        worker.start()

    def _give_up(self, job: _Job[Any], *, cancelled: bool, what: str) -> bool:
        """The caller stops waiting: drop a queued job, stop or abandon a running one; True when abandoned."""
        with self._lock:
            if job.state is _State.QUEUED:
                job.state = _State.DROPPED
                return False
            if job.state is not _State.RUNNING:
                return False
        if cancelled:
            if job.on_cancel is not None:
                job.on_cancel()
            # A cancelled job normally ends within microseconds; if not, it is abandoned like a late one.
            job.loop.call_later(ABANDON_AFTER_S, self._abandon, job, what)
            return False
        return self._abandon(job, what)

    def _abandon(self, job: _Job[Any], what: str) -> bool:
        with self._lock:
            worker = job.thread
            if job.state is not _State.RUNNING or worker is None:
                return False
            job.abandoned = True
            self._abandoned.add(job)
            self._workers.discard(worker)
        log.warning(
            "%s still running %.2fs past its deadline: leaving its thread %s", what, ABANDON_AFTER_S, worker.name
        )
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, worker.tid, _LOWEST_PRIORITY)
        self._start_thread_if_needed()
        job.loop.call_later(STUCK_AFTER_S, self._check_stuck, job, what)
        return True

    def _check_stuck(self, job: _Job[Any], what: str) -> None:
        with self._lock:
            stuck = job in self._abandoned
        if stuck:
            log.warning("%s has been stuck for %.0fs past its deadline", what, STUCK_AFTER_S + ABANDON_AFTER_S)
            if self._on_stuck is not None:
                self._on_stuck(what)

    def _serve(self, worker: _Worker) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                if job is None:
                    self._workers.discard(worker)
                    self._idle -= 1
                    return
                if job.state is not _State.QUEUED:
                    continue
                job.state = _State.RUNNING
                job.thread = worker
                self._idle -= 1
            outcome: tuple[bool, Any]
            try:
                outcome = (True, job.fn(*job.args))
            except BaseException as exc:
                outcome = (False, exc)
            with self._lock:
                job.state = _State.DONE
                abandoned = job.abandoned
                self._abandoned.discard(job)
                if not abandoned:
                    self._idle += 1
            if not job.loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_settle, job.future, outcome)
            if abandoned:
                log.info("an abandoned job ended; its thread %s exits", worker.name)
                return


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
