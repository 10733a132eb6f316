"""The Lua executor: `OnMessage` and HTML-verb scripts in sandboxed Lua 5.1 runtimes."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from msgscript.errors import ScriptError
from msgscript.executors.base import RunContext
from msgscript.executors.threads import WorkerThreads
from msgscript.lua.contract import LuaModule
from msgscript.lua.execution import Execution, Shared
from msgscript.lua.numbers import lua_number_text
from msgscript.lua.runtime import (
    ESCALATE,
    HOOK_INSTRUCTIONS,
    INLINE_HOOK_INSTRUCTIONS,
    OK,
    LuaSandbox,
    Outcome,
    Status,
    as_text,
)
from msgscript.message import Message, Result
from msgscript.script import Script

if TYPE_CHECKING:  # only annotations: msgscript.services imports aiohttp and the etcd client
    from msgscript.services import Services

log = logging.getLogger(__name__)

ENTRY_FUNCTION = "OnMessage"
INLINE_BUDGET_S = 0.0002
"""How much CPU time an execution may use on the event loop before it moves to a worker thread."""
INLINE_MAX_PAYLOAD_BYTES = 64 * 1024
"""Bigger payloads go straight to a worker: one C call over them could hold the event loop too long."""
RETRY_INLINE_AFTER_S = 10.0
"""How long a script that had to move runs on workers before it is tried inline again: one that is heavy for
some messages only comes back for the others after this."""
_REMEMBERED_SCRIPTS = 4096
_INT64 = 2**63


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(value: object) -> str:
    """A Lua string or number as text (gopher-lua formatting); anything else is empty."""
    if isinstance(value, bytes):
        return as_text(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return lua_number_text(value)
    return ""


def _status_code(value: object) -> int:
    """The HTTP status an HTML function returned (a number, already truncated here); 0 means 200."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 200
    if not math.isfinite(value) or abs(value) >= _INT64:
        return 200
    return int(value) or 200


class LuaExecutor:
    """Runs Lua scripts in sandboxed Lua 5.1 runtimes, on the event loop or on `threads` worker threads.

    Handing a script to a thread and back costs several times what a small script costs to run, so an
    execution starts on the event loop with a CPU budget of INLINE_BUDGET_S. If it runs longer, or
    reaches for anything that may block or act outside Lua (a module that is not `inline_safe`, `io`,
    commands, `print`), it is abandoned at that point, before any effect, and run again from the start
    on a worker thread; that script then runs on workers for RETRY_INLINE_AFTER_S before it is tried inline
    again. Each thread has its own runtime.

    The event loop never waits for a worker past the execution's deadline (see WorkerThreads): an
    execution stuck in one long C call is answered with the timeout error and left to end on its own.
    `on_stuck` hears of executions still stuck long after that.

    Use it as an async context manager; the worker threads stop (after their current script) on exit.
    `run` returns the script's Result, or raises ScriptError (ScriptTimeout past the deadline).
    """

    # Slots: its attributes are read for every execution.
    __slots__ = (
        "_env",
        "_inline_modules",
        "_inline_sandbox",
        "_local",
        "_max_memory_bytes",
        "_modules",
        "_nats",
        "_on_stuck",
        "_on_workers",
        "_pool",
        "_services",
        "_shared",
        "_threads",
    )

    name: ClassVar[str] = "lua"

    def __init__(
        self,
        *,
        modules: Mapping[str, LuaModule],
        nats: Any | None,
        env: Mapping[str, str],
        max_memory_bytes: int,
        threads: int,
        services: Services | None = None,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self._modules = dict(modules)
        self._nats = nats
        self._env = MappingProxyType(dict(env))
        self._max_memory_bytes = max_memory_bytes
        self._threads = threads
        self._services = services
        # Modules that never wait on the event loop may be used by inline executions.
        self._inline_modules = frozenset(
            name for name, module in self._modules.items() if getattr(module, "inline_safe", False)
        )
        self._on_stuck = on_stuck
        self._pool: WorkerThreads | None = None
        # Made once the executor is open, on its event loop (asyncio.get_running_loop() makes a system call).
        self._shared: Shared | None = None
        self._inline_sandbox: LuaSandbox | None = None  # the event loop's
        self._local = threading.local()  # each worker thread's sandbox
        # Scripts that had to move to a worker, and when: they run there for RETRY_INLINE_AFTER_S.
        self._on_workers: dict[object, float] = {}

    async def __aenter__(self) -> LuaExecutor:
        self._pool = WorkerThreads(self._threads, name="msgscript-lua", on_stuck=self._on_stuck)
        self._shared = Shared(loop=asyncio.get_running_loop(), nats=self._nats, env=self._env, services=self._services)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def abandoned(self) -> int:
        """Executions still running on threads the event loop stopped waiting for."""
        return 0 if self._pool is None else self._pool.abandoned

    def run_now(self, script: Script, message: Message, ctx: RunContext) -> Result | None:
        """Run the script inline, on the event loop, if it may; None when it has to run on a worker thread.

        None means that nothing of the script took effect (it did not start, or it was abandoned before any
        effect); `run` then runs it on a worker. Raises what `run` raises.
        """
        shared = self._shared
        if shared is None:
            raise RuntimeError("LuaExecutor is not open (use it with `async with`)")
        now = time.monotonic()
        if now >= ctx.deadline:
            raise ctx.timed_out()
        # Keyed by the parts, not their concatenation: the parts' hashes are cached by the strings.
        key: object = (ctx.libraries, script.content) if ctx.libraries else script.content
        moved = self._on_workers.get(key)
        if moved is not None and now - moved <= RETRY_INLINE_AFTER_S:
            return None
        if len(message.payload) > INLINE_MAX_PAYLOAD_BYTES:
            return None
        sandbox = self._inline_sandbox
        if sandbox is None:
            sandbox = self._inline_sandbox = self._new_sandbox(INLINE_HOOK_INSTRUCTIONS)
        result = self._execute(sandbox, script, message, ctx, Execution(ctx.deadline, shared), key, INLINE_BUDGET_S)
        if result is not None:
            if moved is not None:
                del self._on_workers[key]
            return result
        if len(self._on_workers) >= _REMEMBERED_SCRIPTS:
            self._on_workers.clear()
        self._on_workers[key] = now
        return None

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Run the script for the message in a fresh environment: inline when it may, else on a worker thread."""
        result = self.run_now(script, message, ctx)
        if result is not None:
            return result
        pool, shared = self._pool, self._shared
        if pool is None or shared is None:
            raise RuntimeError("LuaExecutor is not open (use it with `async with`)")
        key: object = (ctx.libraries, script.content) if ctx.libraries else script.content
        execution = Execution(ctx.deadline, shared)
        try:
            result = await pool.run(
                self._execute_on_worker,
                script,
                message,
                ctx,
                execution,
                key,
                deadline=ctx.deadline,
                on_cancel=execution.cancel,
                what=f"script {script.name} on {script.subject}",
            )
        except TimeoutError:
            raise ctx.timed_out() from None
        if result is None:  # only inline executions move
            raise RuntimeError("a worker execution asked to move")
        return result

    def _new_sandbox(self, hook_instructions: int) -> LuaSandbox:
        return LuaSandbox(
            self._modules, self._max_memory_bytes, self._inline_modules, hook_instructions=hook_instructions
        )

    def _execute_on_worker(
        self, script: Script, message: Message, ctx: RunContext, execution: Execution, key: object
    ) -> Result | None:
        """Run one execution on this worker thread, in its own sandbox."""
        sandbox: LuaSandbox | None = getattr(self._local, "sandbox", None)
        if sandbox is None:
            sandbox = self._local.sandbox = self._new_sandbox(HOOK_INSTRUCTIONS)
        return self._execute(sandbox, script, message, ctx, execution, key, 0.0)

    def _execute(
        self,
        sandbox: LuaSandbox,
        script: Script,
        message: Message,
        ctx: RunContext,
        execution: Execution,
        key: object,
        inline_budget_s: float,
    ) -> Result | None:
        """Run one execution in `sandbox` (inline with a budget); None when an inline execution has to move to a
        worker."""
        if script.html:
            html, entry, first, meta = True, _encode(message.method), _encode(message.url), None
        else:
            html, entry, first = False, b"OnMessage", _encode(message.subject)
            meta = None if message.delivery is None else message.delivery.to_lua()
        try:
            outcome = sandbox.run(
                key,
                (*ctx.libraries, script.content),
                html,
                entry,
                first,
                message.payload,
                execution,
                inline_budget_s,
                meta,
            )
        finally:
            execution.close()
        status = outcome.status
        if status is OK and not script.html:
            payload = outcome.values[0] if outcome.values else None
            return Result(payload=payload if isinstance(payload, bytes) else None)
        if status is ESCALATE:
            return None
        return _result(script, message, ctx, outcome)


def _result(script: Script, message: Message, ctx: RunContext, outcome: Outcome) -> Result:
    """The Result of an execution that did not end with an OnMessage answer."""
    status = outcome.status
    if status is Status.OK:
        return _html_result(outcome.values)
    if status is Status.TIMEOUT:
        raise ctx.timed_out()
    if status is Status.CHUNK_ERROR:
        raise ScriptError(f"error executing Lua script: {outcome.error}")
    if script.html:
        if status is Status.MISSING:
            return Result(http_code=200, http_headers={}, is_html=True, payload=b"")
        # An HTML result (not an exception) so that the gateway answers it with a 500 page.
        return Result(error=f"failed to call {message.method} function: {outcome.error}", http_headers={}, is_html=True)
    if status is Status.MISSING:
        raise ScriptError(f"failed to find global function named '{ENTRY_FUNCTION}'")
    raise ScriptError(f"failed to call {ENTRY_FUNCTION} function: {outcome.error}")


def _html_result(values: tuple[Any, ...]) -> Result:
    body = values[0] if values else None
    code = values[1] if len(values) > 1 else None
    headers = {_text(values[i]): _text(values[i + 1]) for i in range(2, len(values) - 1, 2)}
    payload = body if isinstance(body, bytes) else _text(body).encode()
    return Result(http_code=_status_code(code), http_headers=headers, is_html=True, payload=payload)
