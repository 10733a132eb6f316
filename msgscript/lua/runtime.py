"""A sandboxed, long-lived Lua 5.1 runtime that runs one execution at a time, each in a fresh environment.

One `LuaSandbox` belongs to one thread (a worker, or the event loop for inline executions). Scripts
are compiled once (cached by source) and each execution gets a new global table whose misses fall
through to a shared, write-protected base; the standard library tables are copied into the
execution's environment on first use, so nothing a script changes outlives it. A count hook enforces
the deadline and lupa's allocator enforces the memory cap. The Lua half lives in `runtime.lua`.

The cap is on only while Lua runs: lupa deadlocks or aborts when an allocation fails while Python pushes
a value into Lua, so every Python function reachable from a script is wrapped by a Lua guard that lifts
the cap for the duration of the Python call.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from enum import IntEnum
from importlib.resources import files
from typing import Any, NamedTuple

import lupa.lua51 as lupa51

from msgscript.lua.module import LuaModule, ModuleContext

log = logging.getLogger(__name__)

CHUNK_NAME = "=<string>"
"""Makes Lua errors read `<string>:LINE: message`, as gopher-lua's do."""
HOOK_INSTRUCTIONS = 10_000
"""The deadline is checked every this many VM instructions (about 20 µs of pure Lua)."""
COMPILE_CACHE_SIZE = 512
COLLECT_ABOVE_BYTES = 16 * 1024 * 1024
"""A full collection runs after an execution that left the runtime holding more than this."""
TIMEOUT_MESSAGE = "script timed out"
ESCALATE_MESSAGE = "msgscript: this execution needs a worker thread"
_ARM_HEADROOM_BYTES = 64 * 1024
_INT64 = 2**63
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


class Execution:
    """Per-execution resources: the deadline, the lazily created scratch directory and module context."""

    __slots__ = ("_cleanups", "_context", "_cwd", "_globals", "_workdir", "deadline", "env", "loop", "nats", "services")

    def __init__(
        self,
        *,
        deadline: float,
        loop: Any,
        nats: Any | None,
        env: Mapping[str, str],
        services: Mapping[str, Any],
    ) -> None:
        self.deadline = deadline
        self.loop = loop
        self.nats = nats
        self.env = env
        self.services = services
        self._workdir: str | None = None
        self._cwd: str | None = None
        self._context: ModuleContext | None = None
        self._cleanups: list[Callable[[], object]] = []
        self._globals: dict[str, object] = {}

    def workdir(self) -> str:
        """The execution's current directory: its scratch directory (created on first use) unless chdir moved it."""
        if self._cwd is None:
            self._workdir = self._cwd = tempfile.mkdtemp(prefix="msgscript-lua-")
        return self._cwd

    def has_workdir(self) -> bool:
        """Whether the execution has a current directory yet (without creating one)."""
        return self._cwd is not None

    def chdir(self, path: str) -> None:
        """Move the execution's current directory (a relative path starts from the current one).

        Raises:
            OSError: path is not a directory.
        """
        target = os.path.normpath(os.path.join(self.workdir(), path))
        if not os.path.isdir(target):
            raise NotADirectoryError(
                f"{path}: not a directory" if os.path.exists(target) else f"{path}: no such directory"
            )
        self._cwd = target

    def module_context(self, to_lua: Callable[[object], object]) -> ModuleContext:
        """The context handed to LuaModule.load, created on first use."""
        if self._context is None:
            self._context = ModuleContext(
                loop=self.loop,
                nats=self.nats,
                env=self.env,
                deadline=self.deadline,
                workdir=self.workdir,
                chdir=self.chdir,
                services=self.services,
                to_lua=to_lua,
                on_close=self._cleanups.append,
                set_global=self._globals.__setitem__,
            )
        return self._context

    def take_globals(self) -> dict[str, object]:
        """The globals a module's load asked for (ModuleContext.set_global), handed over once."""
        taken = dict(self._globals)
        self._globals.clear()
        return taken

    def close(self) -> None:
        """Run the modules' cleanups (last registered first), then remove the scratch directory."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception:
                log.warning("a Lua module's cleanup failed", exc_info=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = self._cwd = None


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
    if isinstance(exc, LuaError) and exc.args:
        return as_text(exc.args[0])
    return str(exc) or type(exc).__name__


def shortest_digits(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of abs(value) and where the decimal point goes.

    The value is 0.DIGITS × 10**point, like Go's strconv decimal. value must be finite and non-zero.
    """
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def fixed_notation(digits: str, point: int) -> str:
    """Write 0.DIGITS × 10**point without an exponent (Go's 'f' format with shortest digits)."""
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def go_float_text(value: float) -> str:
    """Format a float like Go's strconv.FormatFloat(v, 'g', -1, 64), which is what `%v` prints."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, point = shortest_digits(value)
    sign = "-" if value < 0 else ""
    exponent = point - 1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return sign + fixed_notation(digits, point)


def lua_number_text(value: float) -> str:
    """Format a Lua number like gopher-lua: integral values without a point (`200`), others Go-style (`1.5`)."""
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return str(value)
    number = float(value)
    if number.is_integer() and -_INT64 <= number < _INT64:
        return str(int(number))
    return go_float_text(number)


class LuaSandbox:
    """One Lua 5.1 runtime with its compile cache; not thread-safe (one per worker thread)."""

    def __init__(
        self, modules: Mapping[str, LuaModule], max_memory_bytes: int, inline_modules: Collection[str] = ()
    ) -> None:
        self._modules = dict(modules)
        self._max_memory = max_memory_bytes
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._current: Execution | None = None
        self._limit = 0
        self._inline_until = 0.0
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
            time.monotonic,
            self._arm,
            self._disarm,
            self._load_module,
            self._workdir,
            self._write,
            self._shell,
            names,
            inline_names,
            HOOK_INSTRUCTIONS,
            TIMEOUT_MESSAGE.encode(),
            ESCALATE_MESSAGE.encode(),
        )
        # lupa releases registry references lazily when another thread holds the runtime, and its free
        # list then needs registry slot 0: create that slot now rather than under the memory cap.
        self.lua.table()

    def run(
        self,
        key: Hashable,
        sources: Sequence[str],
        *,
        html: bool,
        entry: bytes,
        args: tuple[bytes, bytes],
        execution: Execution,
        inline_until: float = 0.0,
    ) -> Outcome:
        """Run the chunk made of `sources` (joined by newlines) in a fresh environment, then call `entry`.

        `key` identifies the sources in the compile cache. The entry global is called with `args`; in
        HTML mode its three results come back converted (body, status, then header keys and values).
        With `inline_until` (a time.monotonic() value) the execution is inline: it ends with ESCALATE
        when it runs past that time or first reaches for something that may block or have effects
        outside Lua (files, commands, print, modules other than `inline_modules`).
        """
        chunk = self._chunk(key, sources)
        if isinstance(chunk, str):
            return Outcome(Status.CHUNK_ERROR, error=chunk)
        lua = self.lua
        used = lua.get_memory_used(total=True)
        # The arguments are pushed with the cap already on; the headroom covers them and a possible
        # resize of Lua's string table (bounded by what the runtime already holds).
        self._limit = 2 * used + self._max_memory + len(args[0]) + len(args[1]) + _ARM_HEADROOM_BYTES
        self._current = execution
        self._inline_until = inline_until
        lua.set_max_memory(self._limit, total=True)
        try:
            raw = self._driver(chunk, html, entry, args[0], args[1], execution.deadline, inline_until)
        except LuaError as exc:
            # Only a memory error or a late timeout in the driver's own bookkeeping gets here.
            lua.set_max_memory(0)
            self._reset()
            text = error_text(exc)
            if text == TIMEOUT_MESSAGE:
                raw = (int(Status.TIMEOUT),)
            elif text == ESCALATE_MESSAGE:
                raw = (int(Status.ESCALATE),)
            else:
                raw = (int(Status.CALL_ERROR), text)
        finally:
            lua.set_max_memory(0)
            self._current = None
        outcome = _outcome(raw)
        if outcome.error.startswith("not enough memory") or lua.get_memory_used() > COLLECT_ABOVE_BYTES:
            lua.gccollect()
        return outcome

    def _chunk(self, key: Hashable, sources: Sequence[str]) -> Any:
        cache = self._cache
        chunk = cache.get(key)
        if chunk is not None:
            cache.move_to_end(key)
            return chunk
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

    def _arm(self) -> int:
        """Put the cap back on after a Python call; 1 when the deadline passed, 2 past the inline budget."""
        self.lua.set_max_memory(self._limit, total=True)
        now = time.monotonic()
        current = self._current
        if current is not None and now > current.deadline:
            return 1
        return 2 if 0 < self._inline_until < now else 0

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
            current = self._current
            code, output = run_shell(
                command,
                cwd=current.workdir(),
                stdin=stdin,
                capture=capture,
                timeout_s=current.deadline - time.monotonic(),
            )
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
            return value if -_INT64 <= value < _INT64 else float(value)
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
            try:
                result = fn(*args)
            except Exception as exc:
                log.debug("Lua module function %r failed", fn, exc_info=True)
                return (False, error_text(exc).encode("utf-8", "surrogateescape"))
            if isinstance(result, tuple):
                return (True, *(self.to_lua(v) for v in result))
            return (True, self.to_lua(result))

        return call


def run_shell(command: bytes, *, cwd: str, stdin: bytes | None, capture: bool, timeout_s: float) -> tuple[int, bytes]:
    """Run a shell command in cwd; returns its exit code and (if captured) its output.

    Its stdout is the daemon's unless captured; it never reads the daemon's stdin. Past timeout_s the
    whole process group is killed and TimeoutError raised.
    """
    if timeout_s <= 0:
        raise TimeoutError("timeout")
    with subprocess.Popen(
        [b"/bin/sh", b"-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE if capture else None,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError("timeout") from None
    return proc.returncode, output or b""


def _outcome(raw: object) -> Outcome:
    values = raw if isinstance(raw, tuple) else (raw,)
    status = _STATUSES[values[0]]
    if status is Status.CHUNK_ERROR or status is Status.CALL_ERROR:
        return Outcome(status, (), as_text(values[1]) if len(values) > 1 else "")
    return Outcome(status, values[1:])
