"""The `cmd` Lua module: run a shell command and collect its exit status and output.

`cmd.exec(command [, timeout_s])` runs `sh -c command` in the execution's directory, without stdin, and
returns `{status=, stdout=, stderr=}`; a command killed by a signal has status -1. Past the timeout
(10 s by default, never past the script's deadline) the command's whole process group is killed and
the result is `nil, "execute timeout"`; a command that cannot start gives `nil, err`. The timeout may
be fractional (Go truncates it to whole seconds), and unlike Go, which kills only the shell, the
command's children die with it. Output past the script's memory cap is a `not enough memory` error (the
command is killed).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from msgscript.lua.api import ModuleContext

from ._shared_io import check_number, check_string

DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_ERROR = "execute timeout"
_READ_BYTES = 64 * 1024


def run_command(
    command: bytes, *, cwd: str, timeout_s: float, charge: Callable[[int], None] = lambda nbytes: None
) -> tuple[int, bytes, bytes] | None:
    """Run `sh -c command`; its status, stdout and stderr, or None when it outlived timeout_s (it is then killed).

    The output is read as it comes, each piece charged: a command printing without end stops at the script's
    memory cap (MemoryError), its process group killed.
    """
    if timeout_s <= 0:
        return None
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(
        [b"/bin/sh", b"-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        finished = False
        try:
            stdout, stderr = _collect(proc, deadline, charge)
            status = proc.wait(max(0.0, deadline - time.monotonic()))
            finished = True
        except (TimeoutError, subprocess.TimeoutExpired):
            return None
        finally:
            # Past the timeout, or past the memory cap.
            if not finished:
                _kill_group(proc)
    # Go reports -1 for a process ended by a signal.
    return (status if status >= 0 else -1), stdout, stderr


def _collect(proc: subprocess.Popen[bytes], deadline: float, charge: Callable[[int], None]) -> tuple[bytes, bytes]:
    """Read stdout and stderr to their ends (or raise TimeoutError at the deadline), charging every piece."""
    assert proc.stdout is not None and proc.stderr is not None
    pieces: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    with selectors.DefaultSelector() as selector:
        for fd in pieces:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for key, _ in selector.select(left):
                data = os.read(key.fd, _READ_BYTES)
                if not data:
                    selector.unregister(key.fd)
                    continue
                charge(len(data))
                pieces[key.fd].append(data)
    out, err = pieces.values()
    # The joined copies are returned to the script, which the call's accounting counts.
    return b"".join(out), b"".join(err)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and everything it started (its process group), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


class CmdModule:
    """Builds the `cmd` table for one execution."""

    name = "cmd"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{exec = ...}`."""

        def exec_(command: object = None, timeout: object = None, *_: object) -> object:
            line = check_string(command, 1, "exec")
            limit_s = DEFAULT_TIMEOUT_S
            if timeout is not None:
                limit_s = check_number(timeout, 2, "exec")
            try:
                outcome = run_command(
                    line, cwd=ctx.workdir(), timeout_s=min(limit_s, ctx.remaining_s()), charge=ctx.charge
                )
            except OSError as exc:
                return (None, f"fork/exec /bin/sh: {exc.strerror or exc}")
            if outcome is None:
                return (None, TIMEOUT_ERROR)
            status, stdout, stderr = outcome
            return {"status": status, "stdout": stdout, "stderr": stderr}

        return {"exec": exec_}


module = CmdModule()
