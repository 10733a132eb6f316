"""The wasm executor: WASI command modules run by wasmtime, a fresh instance per message.

The script content is the path of a module file. The module gets the message in its environment
(`SUBJECT`, `PAYLOAD`, `METHOD`, `URL`) and nothing else: no arguments, no stdin, no files. Its
`_start` export runs; what it writes to stdout is the result (a JSON ScriptResult, or else the raw
payload) and what it writes to stderr is the result error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import re
import stat
import struct
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from msgscript import _gojson
from msgscript.config import DEFAULT_WASM_THREADS, Settings
from msgscript.errors import ScriptError
from msgscript.executors.base import Executor, RunContext
from msgscript.executors.stubs import UnavailableExecutor
from msgscript.executors.threads import WorkerThreads
from msgscript.message import Message, Result
from msgscript.script import Script

try:
    import wasmtime
except (ImportError, OSError) as exc:  # not installed, or its native library cannot load
    _MISSING_REASON: str | None = str(exc) or type(exc).__name__
else:
    _MISSING_REASON = None

log = logging.getLogger(__name__)

ENTRY_EXPORT = "_start"
MODULE_CACHE_SIZE = 64
"""Compiled modules kept (least recently used dropped first)."""
STDOUT_LIMIT_BYTES = 16 * 1024 * 1024
"""A module that writes more to stdout gets a result error instead of a truncated result."""
STDERR_LIMIT_BYTES = 64 * 1024
"""Stderr becomes the result error; beyond this it is cut."""
EPOCH_TICK_S = 0.01
"""How often running modules are checked against their deadline."""

MEMORY_NOTE_FRACTION = 0.75
"""A failed run whose linear memory is past this share of the limit says so in its error (a refused grow is likely
the cause, but wasmtime does not report it)."""

_WASI_MODULE = "wasi_snapshot_preview1"
_SHUTDOWN_ERROR = "wasm module stopped: msgscript is shutting down"
_WASM_MAGIC = b"\0asm"
_ERRNO_SUCCESS, _ERRNO_BADF, _ERRNO_FAULT = 0, 8, 21
_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")
_CAUSE_NUMBER = re.compile(r"^\d+: ")


@contextlib.asynccontextmanager
async def open_wasm_executor(
    settings: Settings, on_stuck: Callable[[str], None] | None = None
) -> AsyncIterator[Executor]:
    """The wasm executor for the daemon's lifetime, or the stand-in when wasmtime cannot be imported.

    Relative module paths resolve against the working directory the daemon has now. `on_stuck` hears of
    runs stuck in a host call (a WASI sleep) long past their deadline.
    """
    if _MISSING_REASON is not None:
        log.warning("wasm scripts are disabled: wasmtime cannot be imported (%s)", _MISSING_REASON)
        yield UnavailableExecutor("wasm", "wasm")
        return
    async with WasmExecutor(
        max_memory_bytes=settings.max_memory_bytes,
        base_dir=Path.cwd(),
        threads=settings.wasm_threads,
        on_stuck=on_stuck,
    ) as executor:
        yield executor


def module_path(content: str) -> str:
    """The module path a wasm script names: its content without `--` lines, stripped of surrounding blanks.

    Lines starting with `--` are header lines (our own, such as `--* timeout:`, stay in the content)
    or comments; neither is part of the path.
    """
    lines = [line for line in content.split("\n") if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def describe_error(exc: BaseException) -> str:
    """wasmtime's error text on one line: the message and its causes, without the wasm backtrace."""
    text = str(exc).strip()
    head, _, causes = text.partition("\n\nCaused by:\n")
    parts = [] if head.startswith("error while executing at wasm backtrace") else [head.split("\n", 1)[0].strip()]
    parts += [_CAUSE_NUMBER.sub("", line.strip()) for line in causes.splitlines() if line.strip()]
    return ": ".join(part for part in parts if part) or type(exc).__name__


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


@dataclass(slots=True)
class _Output:
    """What one run wrote to stdout and stderr."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdout_overflow: bool = False

    def write(self, fd: int, data: bytes) -> None:
        if fd == 1:
            if len(self.stdout) + len(data) > STDOUT_LIMIT_BYTES:
                self.stdout_overflow = True
            else:
                self.stdout += data
        else:
            self.stderr += data[: max(0, STDERR_LIMIT_BYTES - len(self.stderr))]

    def result(self) -> Result:
        """Turn the output into the result: stdout as a ScriptResult or raw payload, stderr as the error."""
        if self.stdout_overflow:
            raise ScriptError(f"wasm module wrote more than {STDOUT_LIMIT_BYTES} bytes to stdout")
        out = bytes(self.stdout)
        result = Result(payload=out)
        if out.lstrip(b" \t\r\n")[:1] in (b"{", b"n"):
            try:
                result = Result.from_doc(_gojson.loads(out))
            except (ValueError, RecursionError):
                pass  # not a ScriptResult: the output is the payload
        if self.stderr:
            result = replace(result, error=self.stderr_text())
        return result

    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A compiled module, linked to WASI, and the file version it came from."""

    fingerprint: tuple[int, int, int, int]
    module: wasmtime.Module
    pre: wasmtime.InstancePre | None

    def instantiate(self, store: wasmtime.Store, linker: wasmtime.Linker) -> wasmtime.Instance:
        if self.pre is not None:
            return self.pre.instantiate(store)
        return linker.instantiate(store, self.module)


class _EpochTicker:
    """Advances the engine's epoch every EPOCH_TICK_S while modules run, so that each stops at its deadline.

    Closing it interrupts every running module at once (the epoch jumps past every deadline), and
    refuses new runs, so that a daemon that shuts down does not wait for looping modules.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._wake = threading.Condition()
        self._active = 0
        self._epoch = 0
        """Ticks counted here, bumped before the engine's: never behind the engine's epoch."""
        self._furthest = 0
        """The latest epoch a running store may wait for."""
        self.closed = False
        self._thread = threading.Thread(target=self._tick, name="msgscript-wasm-epoch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextlib.contextmanager
    def running(self, store: wasmtime.Store, deadline: float) -> Iterator[None]:
        """Tick while the block runs `store`, which traps with an interrupt just after `deadline`."""
        ticks = max(1, math.ceil((deadline - time.monotonic()) / EPOCH_TICK_S)) + 1
        with self._wake:
            if self.closed:
                raise ScriptError(_SHUTDOWN_ERROR)
            store.set_epoch_deadline(ticks)
            self._furthest = max(self._furthest, self._epoch + ticks)
            self._active += 1
            if self._active == 1:  # the ticker idles while nothing runs
                self._wake.notify_all()
        try:
            yield
        finally:
            with self._wake:
                self._active -= 1

    def close(self) -> None:
        """Stop ticking and interrupt every running module (blocks briefly: call it off the event loop)."""
        with self._wake:
            self.closed = True
            self._wake.notify_all()
            jump = self._furthest - self._epoch + 2
        self._thread.join(timeout=1.0)
        for _ in range(max(0, jump)):
            self._engine.increment_epoch()

    def _tick(self) -> None:
        while True:
            with self._wake:
                while not self._active and not self.closed:
                    self._wake.wait()
                if self.closed or self._wake.wait_for(lambda: self.closed, timeout=EPOCH_TICK_S):
                    return
                self._epoch += 1
            self._engine.increment_epoch()


_running = threading.local()
"""`output`: the _Output of the execution running on this thread, if any."""


def _fd_write(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    """WASI fd_write for stdout (1) and stderr (2), into the running execution's output; never raises."""
    output: _Output | None = getattr(_running, "output", None)
    if output is None or fd not in (1, 2):
        return _ERRNO_BADF
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return _ERRNO_FAULT
    size = memory.data_len(caller)
    if not 0 <= iovs <= size - _IOVEC.size * iovs_len or not 0 <= nwritten <= size - _U32.size:
        return _ERRNO_FAULT
    view = memoryview(memory.get_buffer_ptr(caller, size)).cast("B")
    total = 0
    for index in range(iovs_len):
        start, length = _IOVEC.unpack_from(view, iovs + _IOVEC.size * index)
        if start + length > size:
            return _ERRNO_FAULT
        output.write(fd, view[start : start + length].tobytes())
        total += length
    _U32.pack_into(view, nwritten, total)
    return _ERRNO_SUCCESS


class WasmExecutor:
    """Runs WASI command modules: one Engine, compiled modules cached by path and modification, a fresh
    Store and instance per message, on a bounded pool of threads so that the event loop never waits.

    A run stops at the script's deadline (epoch interruption) and its linear memory is capped at
    `max_memory_bytes`. A host call (a WASI sleep) cannot be interrupted: the event loop stops waiting
    for it at the deadline all the same (see WorkerThreads). Use it as an async context manager.
    """

    name: ClassVar[str] = "wasm"

    def __init__(
        self,
        *,
        max_memory_bytes: int,
        base_dir: Path,
        threads: int = DEFAULT_WASM_THREADS,
        on_stuck: Callable[[str], None] | None = None,
    ) -> None:
        self._max_memory_bytes = max_memory_bytes
        self._base_dir = base_dir
        self._threads = threads
        self._on_stuck = on_stuck
        config = wasmtime.Config()
        config.epoch_interruption = True
        self._engine = wasmtime.Engine(config)
        self._linker = self._make_linker()
        self._cache: collections.OrderedDict[str, _Compiled] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self._ticker = _EpochTicker(self._engine)
        self._pool: WorkerThreads | None = None

    async def __aenter__(self) -> WasmExecutor:
        self._ticker.start()
        self._pool = WorkerThreads(self._threads, name="msgscript-wasm", on_stuck=self._on_stuck)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, self._pool = self._pool, None
        # The ticker's close interrupts what still runs (the epoch jumps past every deadline).
        await asyncio.to_thread(self._ticker.close)
        if pool is not None:
            await pool.close()

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Run the script's module for the message."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("WasmExecutor is not open (use it with `async with`)")
        if time.monotonic() >= ctx.deadline:
            raise ctx.timed_out()
        path = module_path(script.content)
        try:
            return await pool.run(
                self._run_in_thread, path, message, ctx, deadline=ctx.deadline, what=f"wasm module {path}"
            )
        except TimeoutError:
            raise ctx.timed_out() from None

    def _run_in_thread(self, path: str, message: Message, ctx: RunContext) -> Result:
        try:
            return self._execute(path, message, ctx)
        except ScriptError as exc:
            # The frames of the error and of its wasmtime cause hold the run's Store (in a reference cycle,
            # for traps): cleared here, the Store is torn down on this thread rather than later on the loop's.
            _clear_frames(exc)
            error = type(exc)(*exc.args)
        raise error

    def _make_linker(self) -> wasmtime.Linker:
        """WASI preview 1, with fd_write replaced by one that captures stdout and stderr in memory."""
        linker = wasmtime.Linker(self._engine)
        linker.allow_shadowing = True
        linker.define_wasi()
        i32 = wasmtime.ValType.i32()
        fd_write_type = wasmtime.FuncType([i32, i32, i32, i32], [i32])
        linker.define_func(_WASI_MODULE, "fd_write", fd_write_type, _fd_write, access_caller=True)
        return linker

    def _load(self, path: str) -> _Compiled:
        """The compiled module at `path`, from the cache while the file is unchanged."""
        if not path:
            raise ScriptError("failed to read wasm module file : the script names no module path")
        full = self._base_dir / path
        try:
            info = os.stat(full)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(21, "Is a directory")
        except OSError as exc:
            raise ScriptError(f"failed to read wasm module file {path}: {_os_error(exc)}") from exc
        key = str(full)
        fingerprint = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None and cached.fingerprint == fingerprint:
                self._cache.move_to_end(key)
                return cached
        with self._compile_lock:
            with self._cache_lock:
                cached = self._cache.get(key)
            if cached is not None and cached.fingerprint == fingerprint:
                return cached
            compiled = self._compile(full, path, fingerprint)
            with self._cache_lock:
                self._cache[key] = compiled
                self._cache.move_to_end(key)
                while len(self._cache) > MODULE_CACHE_SIZE:
                    self._cache.popitem(last=False)
        log.info("compiled wasm module %s", full)
        return compiled

    def _compile(self, full: Path, path: str, fingerprint: tuple[int, int, int, int]) -> _Compiled:
        try:
            data = full.read_bytes()
        except OSError as exc:
            raise ScriptError(f"failed to read wasm module file {path}: {_os_error(exc)}") from exc
        try:
            if full.suffix == ".wat":
                data = bytes(wasmtime.wat2wasm(data))
            elif not data.startswith(_WASM_MAGIC):
                raise ScriptError("failed to create module: not a WebAssembly binary (no \\0asm header)")
            module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            raise ScriptError(f"failed to create module: {describe_error(exc)}") from exc
        pre: wasmtime.InstancePre | None = None
        if hasattr(self._linker, "instantiate_pre"):  # wasmtime-py releases without it link per run
            try:
                pre = self._linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                raise ScriptError(f"failed to instantiate: {describe_error(exc)}") from exc
        return _Compiled(fingerprint=fingerprint, module=module, pre=pre)

    def _execute(self, path: str, message: Message, ctx: RunContext) -> Result:
        """One run on a worker thread."""
        if time.monotonic() >= ctx.deadline:
            raise ctx.timed_out()
        compiled = self._load(path)
        store = wasmtime.Store(self._engine)
        wasi = wasmtime.WasiConfig()
        wasi.env = [
            ("SUBJECT", _env_text(message.subject)),
            ("PAYLOAD", message.payload.decode("utf-8", "replace")),
            ("METHOD", _env_text(message.method)),
            ("URL", _env_text(message.url)),
        ]
        store.set_wasi(wasi)
        if self._max_memory_bytes > 0:
            store.set_limits(memory_size=self._max_memory_bytes)
        output = _Output()
        _running.output = output
        try:
            with self._ticker.running(store, ctx.deadline):
                self._call(compiled, store, output, ctx)
        finally:
            _running.output = None
        if time.monotonic() > ctx.deadline:
            # Epoch checks run in wasm code only: a module blocked in a WASI call (a sleep) ends late.
            raise ctx.timed_out()
        return output.result()

    def _call(self, compiled: _Compiled, store: wasmtime.Store, output: _Output, ctx: RunContext) -> None:
        try:
            instance = compiled.instantiate(store, self._linker)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self._raise_if_interrupted(exc, ctx)
            raise ScriptError(f"failed to instantiate: {describe_error(exc)}") from exc
        exports = instance.exports(store)
        start = exports.get(ENTRY_EXPORT)
        if not isinstance(start, wasmtime.Func):
            raise ScriptError("GET function not found")
        try:
            start(store)
        except wasmtime.ExitTrap as exc:
            if exc.code == 0:
                return
            raise ScriptError(self._call_error(exc, exports.get("memory"), store, output)) from exc
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self._raise_if_interrupted(exc, ctx)
            raise ScriptError(self._call_error(exc, exports.get("memory"), store, output)) from exc

    def _raise_if_interrupted(self, exc: BaseException, ctx: RunContext) -> None:
        if isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.INTERRUPT:
            if self._ticker.closed:
                raise ScriptError(_SHUTDOWN_ERROR) from exc
            raise ctx.timed_out() from exc

    def _call_error(self, exc: BaseException, memory: object, store: wasmtime.Store, output: _Output) -> str:
        """`failed to call wasm module function: <reason>`, with stderr and a word on memory when they explain it."""
        text = f"failed to call wasm module function: {describe_error(exc)}"
        limit = self._max_memory_bytes
        used = memory.data_len(store) if isinstance(memory, wasmtime.Memory) else 0
        if limit > 0 and used >= limit * MEMORY_NOTE_FRACTION:
            text += f" (its linear memory used {used} of the {limit} bytes allowed)"
        if output.stderr:
            text += f": {output.stderr_text().strip()}"
        return text


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of every finished frame in the tracebacks of `exc` and the errors it chains."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def _env_text(text: str) -> str:
    """A value WASI accepts as an environment variable: valid UTF-8 (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")
