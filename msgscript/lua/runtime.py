"""A sandboxed, long-lived Lua 5.1 runtime that runs one execution at a time, each in a fresh environment.

One `LuaSandbox` belongs to one thread (a worker, or the event loop for inline executions). Scripts
are compiled once (cached by source) and each execution gets a new global table whose misses fall
through to a shared, write-protected base; the standard library tables are copied into the
execution's environment on first use, so nothing a script changes outlives it. A count hook enforces
the deadline and lupa's allocator enforces the memory cap. The Lua half lives in `runtime.lua`.

The cap is on only while Lua runs: lupa deadlocks or aborts when an allocation fails while Python pushes
a value into Lua, so every Python function reachable from a script is wrapped by a Lua guard that lifts
the cap for the duration of the Python call. Python memory used on the script's behalf during such a call
is counted against what the cap leaves instead (`Execution.charge`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from enum import IntEnum
from importlib.resources import files
from typing import Any, NamedTuple

import lupa.lua51 as lupa51

from msgscript import _libc
from msgscript.lua.contract import LuaModule
from msgscript.lua.execution import NOT_ENOUGH_MEMORY, Execution
from msgscript.lua.numbers import INT64_LIMIT

log = logging.getLogger(__name__)

CHUNK_NAME = "=<string>"
"""Makes Lua errors read `<string>:LINE: message`, as gopher-lua's do."""
HOOK_INSTRUCTIONS = 100_000
"""On a worker thread, the deadline is checked every this many VM instructions (about 0.2 ms of pure Lua).
Each check takes the interpreter lock, which the event loop needs too: fewer checks, less contention."""
INLINE_HOOK_INSTRUCTIONS = 10_000
"""On the event loop, where the CPU budget is 0.2 ms, every this many (about 20 µs)."""
COMPILE_CACHE_SIZE = 512
COLLECT_ABOVE_BYTES = 16 * 1024 * 1024
"""A full collection runs after an execution that left the runtime holding more than this."""
INLINE_MAX_MEMORY_BYTES = 4 * 1024 * 1024
"""The memory cap of an inline execution: past it, the execution moves to a worker (its real cap applies there).
It also bounds what C functions may copy on the event loop."""
INLINE_PYTHON_BYTES = 32 * 1024
"""What a module call of an inline execution may handle in Python (arguments, charges, results) before the
execution moves to a worker: module work runs on the event loop there, and its CPU grows with its data (a
parser written in Python takes about a microsecond a byte)."""
MAX_OPEN_FILES = 64
"""Files one execution may have open at once (io.open, io.lines, io.tmpfile, ...)."""
TIMEOUT_MESSAGE = "script timed out"
ESCALATE_MESSAGE = "msgscript: this execution needs a worker thread"
_ARM_HEADROOM_BYTES = 64 * 1024
_ARM_EARLY_BYTES = _ARM_HEADROOM_BYTES // 2
"""Arguments up to this size are pushed with the cap already on: within the headroom, they cannot fail."""
_SLOT_BYTES = 16
_MAX_SIZE_DEPTH = 16
_BOOTSTRAP = files("msgscript.lua").joinpath("runtime.lua").read_bytes()

LuaError = lupa51.LuaError


class Status(IntEnum):
    """How an execution ended (the first value the Lua driver returns)."""

    OK = 0
    CHUNK_ERROR = 1
    """Compiling or running the top level failed."""
    MISSING = 2
    """The entry function is not defined (or the entry name is empty)."""
    CALL_ERROR = 3
    TIMEOUT = 4
    ESCALATE = 5
    """An inline execution was abandoned before any outside effect: run it again on a worker thread."""


# A NamedTuple rather than a frozen dataclass: it is built once per execution and the dataclass
# __init__ alone cost more than running a small script.
class Outcome(NamedTuple):
    """What one execution produced: its status, the entry function's converted values, or an error text."""

    status: Status
    values: tuple[Any, ...] = ()
    error: str = ""


_STATUSES = tuple(Status)
# Reading an enum member goes through the enum's metaclass (about 70 ns), and these are read for every execution.
OK, CHUNK_ERROR, CALL_ERROR, ESCALATE = Status.OK, Status.CHUNK_ERROR, Status.CALL_ERROR, Status.ESCALATE
_new_outcome = tuple.__new__  # Outcome(...) goes through a Python __new__: a third of what building one costs


def _deny_get(obj: object, name: object) -> object:
    raise AttributeError("access to Python attributes is not allowed")


def _deny_set(obj: object, name: object, value: object) -> None:
    raise AttributeError("access to Python attributes is not allowed")


def as_text(value: object) -> str:
    """Lua bytes (or anything else) as str, keeping undecodable bytes as surrogates."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def error_text(exc: BaseException) -> str:
    """A one-line description of a Python exception, for a Lua error or a `nil, err` return."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timeout"
    if isinstance(exc, MemoryError):
        return NOT_ENOUGH_MEMORY
    if isinstance(exc, LuaError) and exc.args:
        return as_text(exc.args[0])
    return str(exc) or type(exc).__name__


class LuaSandbox:
    """One Lua 5.1 runtime with its compile cache; not thread-safe (one per worker thread)."""

    # Slots: its attributes are read and set for every execution.
    __slots__ = (
        "_cache",
        "_current",
        "_driver",
        "_escalate",
        "_guard",
        "_inline_cpu_s",
        "_inline_cpu_until",
        "_inline_until",
        "_limit",
        "_max_memory",
        "_modules",
        "_reset",
        "lua",
    )

    def __init__(
        self,
        modules: Mapping[str, LuaModule],
        max_memory_bytes: int,
        inline_modules: Collection[str] = (),
        *,
        hook_instructions: int = HOOK_INSTRUCTIONS,
    ) -> None:
        self._modules = dict(modules)
        self._max_memory = max_memory_bytes
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._current: Execution | None = None
        self._limit = 0
        self._inline_until = 0.0
        self._inline_cpu_s = 0.0
        self._inline_cpu_until = 0.0
        self._escalate = False
        self.lua = lupa51.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_handlers=(_deny_get, _deny_set),
            max_memory=0,
        )
        names = self.lua.table_from({name.encode(): True for name in self._modules})
        inline_names = self.lua.table_from({name.encode(): True for name in inline_modules})
        boot = self.lua.compile(_BOOTSTRAP, name="=msgscript")
        self._driver, self._reset, self._guard = boot(
            self._check,
            self._arm,
            self._disarm,
            self._load_module,
            self._workdir,
            self._write,
            self._shell,
            names,
            inline_names,
            hook_instructions,
            TIMEOUT_MESSAGE.encode(),
            ESCALATE_MESSAGE.encode(),
            max_memory_bytes,
            MAX_OPEN_FILES,
        )
        # lupa releases registry references lazily when another thread holds the runtime, and its free
        # list then needs registry slot 0: create that slot now rather than under the memory cap.
        self.lua.table()

    def run(
        self,
        key: Hashable,
        sources: Sequence[str],
        html: bool,
        entry: bytes,
        first: bytes,
        second: bytes,
        execution: Execution,
        inline_budget_s: float = 0.0,
        meta: Mapping[bytes, object] | None = None,
    ) -> Outcome:
        """Run the chunk made of `sources` (joined by newlines) in a fresh environment, then call `entry`.

        `key` identifies the sources in the compile cache. The entry global is called with `first` and `second`,
        and `meta` as a third argument (a table) when there is one; in HTML mode its three results come back
        converted (body, status, then header keys and values). Made for every message: positional arguments,
        and no call that can be spared.
        With `inline_budget_s` the execution is inline: it ends with ESCALATE once it has used that much CPU
        time, or when it first reaches for something that may block or have effects outside Lua (files,
        commands, print, modules other than `inline_modules`). An execution the system preempts has not held
        the event loop, so the budget must not count the time it was not running; but the thread's CPU clock
        costs a system call, a good part of what a small script costs. So the first half of the budget is
        counted in wall-clock time (never less than the CPU time), and only once that is spent, by running or
        by waiting to run, is the second half counted on the CPU clock (from the first check that finds the
        first half spent): a fast script preempted on a busy machine stays inline, a heavy one moves.
        """
        chunk = self._cache.get(key)
        if chunk is None:
            chunk = self._compile(key, sources)
        else:
            self._cache.move_to_end(key)
        if isinstance(chunk, str):
            return Outcome(Status.CHUNK_ERROR, error=chunk)
        lua = self.lua
        inline = inline_budget_s > 0
        # The cap is on from when lupa has pushed the arguments (or before, see below) until the driver has
        # returned, or a cleanup that may allocate begins (msgscript/lua/runtime.lua).
        room = self._max_memory
        if inline and room > INLINE_MAX_MEMORY_BYTES:
            room = INLINE_MAX_MEMORY_BYTES
        self._limit = lua.get_memory_used(True) + room + _ARM_HEADROOM_BYTES
        self._current = execution
        self._inline_until = time.monotonic() + inline_budget_s / 2 if inline else 0.0
        self._inline_cpu_s = inline_budget_s / 2
        self._inline_cpu_until = 0.0
        self._escalate = False
        # Made before the cap goes on, like the arguments lupa pushes. Small arguments fit in the headroom: the
        # cap goes on before they are pushed, which spares the driver a call back to arm it.
        extra = None if meta is None else lua.table_from(meta)
        armed = len(first) + len(second) + len(entry) <= _ARM_EARLY_BYTES
        try:
            if armed:
                lua.set_max_memory(self._limit, True)
            raw = self._driver(chunk, html, entry, first, second, extra, inline, armed)
        except LuaError as exc:
            # Only a memory error or a late timeout in the driver's own bookkeeping gets here.
            lua.set_max_memory(0)
            self._reset()
            text = error_text(exc)
            if text == TIMEOUT_MESSAGE:
                raw = (int(Status.TIMEOUT),)
            elif text == ESCALATE_MESSAGE or inline:
                raw = (int(Status.ESCALATE),)
            else:
                raw = (int(Status.CALL_ERROR), text)
        finally:
            lua.set_max_memory(0)
            self._current = None
        values = raw if isinstance(raw, tuple) else (raw,)
        status = _STATUSES[values[0]]
        if status is CHUNK_ERROR or status is CALL_ERROR:
            error = as_text(values[1]) if len(values) > 1 else ""
            outcome = _new_outcome(Outcome, (status, (), error))
        else:
            error = ""
            outcome = _new_outcome(Outcome, (status, values[1:], ""))
        if error.startswith(NOT_ENOUGH_MEMORY) or lua.get_memory_used() > COLLECT_ABOVE_BYTES:
            lua.gccollect()
            # Give what the collection freed back to the system, so a memory bomb does not stay in the RSS.
            _libc.trim_heap()
        return outcome

    def _compile(self, key: Hashable, sources: Sequence[str]) -> Any:
        """The compiled chunk of `sources`, or the compile error's text, cached under `key`."""
        cache = self._cache
        source = "\n".join(sources).encode("utf-8", "surrogateescape")
        try:
            chunk = self.lua.compile(source, name=CHUNK_NAME)
        except LuaError as exc:
            chunk = error_text(exc)
        cache[key] = chunk
        if len(cache) > COMPILE_CACHE_SIZE:
            cache.popitem(last=False)
        return chunk

    # Called from Lua without the guard: they must not push anything that allocates.

    def _check(self) -> int:
        """The hook's question: 1 when the execution must end (deadline or cancellation), 2 when an inline
        execution must move to a worker (past its time budget, or a module call asked), else 0."""
        current = self._current
        if current is None:
            return 0
        now = time.monotonic()
        if now > current.deadline or current.cancelled:
            return 1
        if self._escalate:
            return 2
        if 0 < self._inline_until < now:
            cpu_now = time.thread_time()
            if not self._inline_cpu_until:
                self._inline_cpu_until = cpu_now + self._inline_cpu_s  # the wall-clock half is spent
            elif cpu_now > self._inline_cpu_until:
                return 2
        return 0

    def _arm(self) -> int:
        """Put the cap on (after a Python call, or as the driver starts); answers as _check does."""
        self.lua.set_max_memory(self._limit, total=True)
        return self._check()

    def _disarm(self) -> None:
        self.lua.set_max_memory(0)

    # Called from Lua through the guard: they return (ok, values...) instead of raising.

    def _load_module(self, name: bytes) -> tuple[object, ...]:
        text = as_text(name)
        try:
            if self._current is None:
                raise RuntimeError("no execution is running")
            current = self._current
            value = self._modules[text].load(self.lua, current.module_context(self.to_lua))
            globals_ = current.take_globals()
            return (
                True,
                self.to_lua(value, fix_tables=True),
                self.to_lua(globals_, fix_tables=True) if globals_ else None,
            )
        except Exception as exc:
            log.debug("loading Lua module %s failed", text, exc_info=True)
            return (False, f"error loading module '{text}': {error_text(exc)}".encode())

    def _workdir(self, create: bool = True) -> tuple[object, ...]:
        try:
            if self._current is None:
                raise RuntimeError("no execution is running")
            if not create and not self._current.has_workdir():
                return (True, None)
            return (True, self._current.workdir().encode("utf-8", "surrogateescape"))
        except Exception as exc:
            return (False, f"failed to create temp directory: {error_text(exc)}".encode())

    def _write(self, text: bytes) -> tuple[object, ...]:
        try:
            sys.stdout.write(text.decode("utf-8", "replace"))
            sys.stdout.flush()
        except Exception as exc:
            return (False, error_text(exc).encode())
        return (True,)

    def _shell(self, command: bytes, stdin: bytes | None, capture: bool) -> tuple[object, ...]:
        try:
            if self._current is None:
                raise RuntimeError("no execution is running")
            code, output = self._current.run_shell(command, stdin, capture)
            return (True, code, output)
        except Exception as exc:
            return (False, error_text(exc).encode())

    def to_lua(self, value: object, *, fix_tables: bool = False, _seen: set[str] | None = None) -> object:
        """Convert a Python value for Lua: str → bytes, dict/list → table, callables → guarded functions.

        With fix_tables, Lua tables are walked too: a module table built with `lua.table_from` may hold
        str keys and raw Python callables.
        """
        if value is None or isinstance(value, bool | bytes | float):
            return value
        if isinstance(value, int):
            return value if -INT64_LIMIT <= value < INT64_LIMIT else float(value)
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        kind = lupa51.lua_type(value)
        if kind is not None:
            if fix_tables and kind == "table":
                self._fix_table(value, set() if _seen is None else _seen)
            return value
        if isinstance(value, Mapping):
            return self.lua.table_from(
                {self.to_lua(k): self.to_lua(v, fix_tables=fix_tables, _seen=_seen) for k, v in value.items()}
            )
        if isinstance(value, list | tuple):
            return self.lua.table_from([self.to_lua(v, fix_tables=fix_tables, _seen=_seen) for v in value])
        if callable(value):
            return self._guard(self._trampoline(value))
        return value

    def _fix_table(self, table: Any, seen: set[str]) -> None:
        # Every lupa wrapper is a new Python object; its repr names the Lua table by address (str() would
        # call a __tostring metamethod).
        identity = repr(table)
        if identity in seen:
            return
        seen.add(identity)
        for key, value in list(table.items()):
            new_key = self.to_lua(key)
            new_value = self.to_lua(value, fix_tables=True, _seen=seen)
            if new_key is not key:
                table[key] = None
            if new_key is not key or new_value is not value:
                table[new_key] = new_value

    def _trampoline(self, fn: Callable[..., object]) -> Callable[..., tuple[object, ...]]:
        def call(*args: object) -> tuple[object, ...]:
            current = self._current
            if current is None:
                return (False, b"no execution is running")
            # What the memory cap leaves, for the Python work of this call (see Execution.charge).
            budget = max(0, self._limit - self.lua.get_memory_used(total=True))
            inline = self._inline_until > 0
            if inline:
                budget = min(budget, INLINE_PYTHON_BYTES)
            saved = current.begin_charges(budget)
            try:
                current.charge(sum(len(arg) for arg in args if isinstance(arg, bytes)))
                result = fn(*args)
                current.charge(payload_bytes(result))
            except MemoryError:
                # Inline, the execution moves to a worker (the arm after this call says so) and runs there
                # with its real cap.
                self._escalate = self._escalate or inline
                return (False, NOT_ENOUGH_MEMORY.encode())
            except Exception as exc:
                log.debug("Lua module function %r failed", fn, exc_info=True)
                return (False, error_text(exc).encode("utf-8", "surrogateescape"))
            finally:
                current.end_charges(saved)
            if isinstance(result, tuple):
                return (True, *(self.to_lua(v) for v in result))
            return (True, self.to_lua(result))

        return call


def payload_bytes(value: object, depth: int = 0) -> int:
    """About how many bytes a Python value takes once converted for Lua (its strings, and a slot per item)."""
    if isinstance(value, bytes | str | bytearray):
        return len(value)
    if depth < _MAX_SIZE_DEPTH:
        if isinstance(value, list | tuple):
            return sum(payload_bytes(v, depth + 1) for v in value) + _SLOT_BYTES * len(value)
        if isinstance(value, Mapping):
            return sum(payload_bytes(k, depth + 1) + payload_bytes(v, depth + 1) for k, v in value.items()) + (
                2 * _SLOT_BYTES * len(value)
            )
    return 0
