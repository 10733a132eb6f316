"""What one Lua execution owns: its deadline, cancellation, memory charges, scratch directory and cleanups."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msgscript.errors import MsgscriptError
from msgscript.lua.contract import ModuleContext

if TYPE_CHECKING:
    from msgscript.services import Services

log = logging.getLogger(__name__)

NOT_ENOUGH_MEMORY = "not enough memory"
"""Lua's own text for a failed allocation; module calls over the memory cap fail with it too."""
_SHELL_POLL_S = 0.1
"""How often a running shell command looks whether its execution was cancelled."""


class LuaMemoryError(MsgscriptError, MemoryError):
    """Raised when Python work done for a script would take it past its memory cap."""

    def __init__(self) -> None:
        super().__init__(NOT_ENOUGH_MEMORY)


@dataclass(frozen=True, slots=True)
class Shared:
    """What every execution of one executor is given: the event loop, the NATS client of the `nats` module,
    the environment scripts see, and the daemon's service clients."""

    loop: Any
    nats: Any | None
    env: Mapping[str, str]
    services: Services | None


class Execution:
    """Per-execution resources: the deadline and cancellation, the Python-side memory budget of the module call
    in progress, the lazily created scratch directory and module context, and what must be closed at the end.

    `deadline` and `cancelled` are read by the Lua hook on the execution's thread; `cancel` is called from the
    event loop. An execution is made for every message, so it sets no more than it must.
    """

    __slots__ = (
        "_charged",
        "_cleanups",
        "_context",
        "_task_context",
        "_cwd",
        "_globals",
        "_limit",
        "_waits",
        "_workdir",
        "cancelled",
        "deadline",
        "shared",
    )

    def __init__(self, deadline: float, shared: Shared) -> None:
        self.deadline = deadline
        self.cancelled = False
        self.shared = shared
        self._workdir: str | None = None
        self._cwd: str | None = None
        self._context: ModuleContext | None = None
        # Made on the event loop, in the task that runs the script.
        self._task_context = contextvars.copy_context()
        self._cleanups: list[Callable[[], object]] = []
        self._globals: dict[str, object] = {}
        self._waits: set[concurrent.futures.Future[Any]] = set()
        self._charged = 0
        self._limit = 0

    def cancel(self) -> None:
        """Stop the execution: the hook ends it at its next check, and module calls waiting on the loop return."""
        self.cancelled = True
        for wait in list(self._waits):
            wait.cancel()

    # Memory: the Lua allocator caps what the script allocates in Lua. A module call runs with that cap
    # lifted (lupa cannot survive a failed allocation while it converts values), so Python work done on the
    # script's behalf is counted here instead, against what the cap leaves, one module call at a time.

    def begin_charges(self, limit_bytes: int) -> tuple[int, int]:
        """Start counting a module call's Python memory against `limit_bytes`; returns what end_charges restores."""
        saved = (self._charged, self._limit)
        self._charged, self._limit = 0, limit_bytes
        return saved

    def end_charges(self, saved: tuple[int, int]) -> None:
        """Stop counting for the call begun by the begin_charges that returned `saved`."""
        self._charged, self._limit = saved

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` of Python memory used for the script by the module call in progress.

        Raises:
            LuaMemoryError: the execution's memory cap is reached.
        """
        self._charged += nbytes
        if self._charged > self._limit:
            raise LuaMemoryError

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
            shared = self.shared
            self._context = ModuleContext(
                loop=shared.loop,
                nats=shared.nats,
                env=shared.env,
                deadline=self.deadline,
                workdir=self.workdir,
                chdir=self.chdir,
                services=shared.services,
                to_lua=to_lua,
                on_close=self._cleanups.append,
                set_global=self._globals.__setitem__,
                charge=self.charge,
                waits=self._waits,
                context=self._task_context,
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

    def run_shell(self, command: bytes, stdin: bytes | None, capture: bool) -> tuple[int, bytes]:
        """Run a shell command in the execution's directory; returns its exit code and (if captured) its output.

        Its stdout is the daemon's unless captured; it never reads the daemon's stdin. At the deadline, or
        when the execution is cancelled, the command's whole process group is killed and TimeoutError raised.
        """
        if self.cancelled or time.monotonic() >= self.deadline:
            raise TimeoutError("timeout")
        with subprocess.Popen(
            [b"/bin/sh", b"-c", command],
            cwd=self.workdir(),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE if capture else None,
            start_new_session=True,
        ) as proc:
            pending = stdin
            while True:
                slice_s = min(_SHELL_POLL_S, self.deadline - time.monotonic())
                try:
                    output, _ = proc.communicate(pending, timeout=max(slice_s, 0.0))
                    break
                except subprocess.TimeoutExpired:
                    pending = None
                    if self.cancelled or time.monotonic() >= self.deadline:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.communicate()
                        raise TimeoutError("timeout") from None
        return proc.returncode, output or b""
