"""From a Message to a Reply: look up the scripts, run each under its lock and deadline, collect results."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from msgscript import tracing
from msgscript.durations import format_duration
from msgscript.errors import LibraryNotFound, LockError, NoScripts, ScriptError, ScriptTimeout, StoreError
from msgscript.executors.base import Executor, RunContext
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
        except ScriptTimeout as exc:
            log.info("script timed out script=%s subject=%s after=%s", script.name, script.subject, timeout_s)
            return Result.failure(str(exc)), "timeout"
        except ScriptError as exc:
            log.info("script failed script=%s subject=%s: %s", script.name, script.subject, exc)
            return Result.failure(str(exc)), "error"
        except Exception as exc:
            log.exception("internal error running script=%s subject=%s", script.name, script.subject)
            return Result.failure(f"internal error: {exc}"), "error"

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


async def _with_backstop(executor: Executor, script: Script, message: Message, ctx: RunContext) -> Result:
    """Run the script; an executor that overruns its deadline by more than the margin is cut off."""
    try:
        async with asyncio.timeout(ctx.timeout_s + _BACKSTOP_MARGIN_S):
            return await executor.run(script, message, ctx)
    except TimeoutError:
        raise ctx.timed_out() from None
