"""From a Message to a Reply: look up the scripts, run each under its lock and deadline, collect results."""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any

from msgscript import tracing
from msgscript.durations import format_duration
from msgscript.errors import LibraryNotFound, LockError, NoScripts, ScriptError, ScriptTimeout, StoreError
from msgscript.executors.base import Executor, RunContext, RunsInline
from msgscript.locks import Lock, lock_key
from msgscript.message import Message, Reply, Result
from msgscript.script import Script
from msgscript.store.base import Store

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.metrics import Metrics, Outcome

log = logging.getLogger(__name__)

# The executor gets the deadline itself; this margin lets it report the timeout before the backstop fires.
_BACKSTOP_MARGIN_S = 1.0


def _judged(result: Result) -> tuple[Result, Outcome]:
    return result, "error" if result.error else "ok"


class Dispatcher:
    """Runs the scripts of a message; the one place where failures become error Results."""

    # Slots: its attributes are read for every message.
    __slots__ = ("_executors", "_lock", "_metrics", "_run_now", "_store", "_timeout_s")

    def __init__(
        self,
        store: Store,
        executors: Mapping[str, Executor],
        lock: Lock,
        *,
        script_timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._executors = executors
        self._lock = lock
        self._timeout_s = script_timeout_s
        self._metrics = metrics
        self._run_now: dict[str, Callable[[Script, Message, RunContext], Result | None]] = {
            name: executor.run_now for name, executor in executors.items() if isinstance(executor, RunsInline)
        }

    async def scripts_for(self, subject: str) -> list[Script]:
        """The scripts that a core NATS message or an HTTP request on `subject` runs.

        Durable scripts are left out: they run from their stream (msgscript.jetstream).

        Raises:
            NoScripts: none runs for the subject.
            StoreError: the store cannot answer.
        """
        with tracing.span("nats.handle_message.get_scripts") as span:
            try:
                scripts = await self._store.scripts_for(subject)
            except StoreError as exc:
                log.error("store lookup failed subject=%s: %s", subject, exc)
                tracing.fail(span, str(exc))
                raise
        runnable = [script for script in scripts if not script.durable]
        if not runnable:
            raise NoScripts(subject, durable=bool(scripts))
        return runnable

    async def dispatch(self, message: Message) -> Reply:
        """Run every script of the message's subject; a subject without scripts, or a store failure, is the
        Reply's error (`failed to get scripts for subject: <reason>`, the Go text)."""
        try:
            scripts = await self.scripts_for(message.subject)
        except (NoScripts, StoreError) as exc:
            return Reply(error=f"failed to get scripts for subject: {exc}")
        return await self.run_all(scripts, message)

    def dispatch_now(self, message: Message, *, html: bool = True) -> Reply | None:
        """The Reply of a message that can be answered without waiting, or None: then `dispatch` must handle it,
        and nothing of its scripts has taken effect.

        Answered now: one script with neither `lock` nor libraries (nor `html`, when `html` is False), whose
        executor finishes the run inline (`RunsInline`), with tracing off. Everything else (and a store that
        would have to wait) goes to `dispatch`. Limits, results and metrics are those of `dispatch`.
        """
        if tracing.enabled():
            return None
        try:
            scripts = self._store.scripts_now(message.subject)
        except StoreError:
            return None  # `dispatch` asks again, and reports the failure
        if scripts is None or len(scripts) != 1:
            return None
        script = scripts[0]
        if script.durable or script.lock or script.libraries or (script.html and not html):
            return None
        run_now = self._run_now.get(script.executor)
        if run_now is None:
            return None
        started = time.monotonic()
        timeout_s = script.timeout_s or self._timeout_s
        ctx = RunContext(deadline=started + timeout_s, timeout_s=timeout_s)
        try:
            result = run_now(script, message, ctx)
        except Exception as exc:
            result, outcome = _failure(exc, script, timeout_s)
        else:
            if result is None:
                return None
            outcome = "error" if result.error else "ok"
        if self._metrics is not None:
            self._metrics.observe_run(script, outcome, time.monotonic() - started)
        return Reply(results=(result,))

    async def run_all(self, scripts: list[Script], message: Message) -> Reply:
        """Run the scripts concurrently; the results come in the order of `scripts`."""
        with tracing.span("nats.handle_message.run_scripts"):
            if len(scripts) == 1:
                return Reply(results=(await self.run(scripts[0], message),))
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.run(script, message), name=f"msgscript:{script.subject}:{script.name}")
                    for script in scripts
                ]
            return Reply(results=tuple(task.result() for task in tasks))

    async def run(self, script: Script, message: Message) -> Result:
        """Run one script under its lock (`lock: true`) and deadline; every failure becomes an error Result.

        The lock wait counts against the script's timeout. When the lock cannot be had before it, the
        result error is `failed to get lock: timed out after <timeout>`; when etcd fails, it is
        `failed to get lock on key <name>_lock: <reason>`.
        """
        started = time.monotonic()
        outcome: Outcome = "cancelled"  # unless _run returns
        try:
            result, outcome = await self._run(script, message, started)
            return result
        finally:
            if self._metrics is not None:
                self._metrics.observe_run(script, outcome, time.monotonic() - started)

    async def _run(self, script: Script, message: Message, started: float) -> tuple[Result, Outcome]:
        timeout_s = script.timeout_s or self._timeout_s
        deadline = started + timeout_s
        executor = self._executors.get(script.executor)
        if executor is None:
            return Result.failure(f"unknown executor '{script.executor}'"), "error"
        try:
            libraries: tuple[str, ...] = ()
            if script.libraries:
                libraries = await self._store.load_libraries(script.libraries)
            ctx = RunContext(deadline=deadline, timeout_s=timeout_s, libraries=libraries)
            if not script.lock:
                return _judged(await self._run_with_backstop(executor, script, message, ctx))
            waiting = time.monotonic()
            async with self._lock.hold(lock_key(script.name), timeout_s) as acquired:
                if self._metrics is not None:
                    self._metrics.observe_lock_wait(time.monotonic() - waiting)
                if not acquired:
                    log.info("lock not acquired script=%s subject=%s after=%s", script.name, script.subject, timeout_s)
                    error = f"failed to get lock: timed out after {format_duration(timeout_s)}"
                    return Result.failure(error), "timeout"
                return _judged(await self._run_with_backstop(executor, script, message, ctx))
        except LibraryNotFound as exc:
            return Result.failure(f"failed to read librairies: {exc}"), "error"
        except LockError as exc:
            log.warning("lock failed script=%s subject=%s: %s", script.name, script.subject, exc)
            return Result.failure(str(exc)), "error"
        except Exception as exc:
            return _failure(exc, script, timeout_s)

    async def _run_with_backstop(self, executor: Executor, script: Script, message: Message, ctx: RunContext) -> Result:
        if not tracing.enabled():  # the hot path: no span, no attributes to build
            return await _with_backstop(executor, script, message, ctx)
        attributes = {"nats.subject": message.subject, "script.name": script.name}
        with tracing.span(f"{executor.name}.execute_script", attributes=attributes) as span:
            try:
                result = await _with_backstop(executor, script, message, ctx)
            except ScriptError as exc:
                tracing.fail(span, str(exc), attribute="executor.error")
                raise
            if result.error:
                tracing.fail(span, result.error, attribute="executor.error")
            return result


def _failure(exc: Exception, script: Script, timeout_s: float) -> tuple[Result, Outcome]:
    """The error Result of a run that raised `exc`, logged."""
    if isinstance(exc, ScriptTimeout):
        log.info("script timed out script=%s subject=%s after=%s", script.name, script.subject, timeout_s)
        return Result.failure(str(exc)), "timeout"
    if isinstance(exc, ScriptError):
        log.info("script failed script=%s subject=%s: %s", script.name, script.subject, exc)
        return Result.failure(str(exc)), "error"
    log.error("internal error running script=%s subject=%s", script.name, script.subject, exc_info=exc)
    return Result.failure(f"internal error: {exc}"), "error"


async def _with_backstop(executor: Executor, script: Script, message: Message, ctx: RunContext) -> Result:
    """Run the script; an executor that overruns its deadline by more than the margin is cut off.

    The backstop can only act where the run waits, so the run's first step, up to its first wait, goes
    without one: a run that ends in that step (an inline Lua execution does) costs no timer. A run that
    waits continues under a timer set from when it started.
    """
    loop = asyncio.get_running_loop()
    backstop_at = loop.time() + ctx.timeout_s + _BACKSTOP_MARGIN_S
    run = executor.run(script, message, ctx)
    try:
        waiting_on = run.send(None)
    except StopIteration as finished:
        result: Result = finished.value
        return result
    try:
        async with asyncio.timeout_at(backstop_at):
            return await _resumed(run, waiting_on)
    except TimeoutError:
        raise ctx.timed_out() from None


@types.coroutine
def _resumed(run: Coroutine[Any, Any, Result], waiting_on: Any) -> Generator[Any, Any, Result]:
    """Carry on a coroutine already stepped once (it is waiting on `waiting_on`), as `await` would have."""
    try:
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                run.close()
                raise
            except BaseException as exc:  # a cancellation (the backstop's included) goes into the run
                waiting_on = run.throw(exc)
            else:
                waiting_on = run.send(sent)
    except StopIteration as finished:
        result: Result = finished.value
        return result
