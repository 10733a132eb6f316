"""The `cmd` Lua module: run a shell command and collect its exit status and output.

`cmd.exec(command [, timeout_s])` runs `sh -c command` in the execution's directory, without stdin, and
returns `{status=, stdout=, stderr=}`; a command killed by a signal has status -1. Past the timeout
(10 s by default, never past the script's deadline) the command's whole process group is killed and
the result is `nil, "execute timeout"`; a command that cannot start gives `nil, err`. The timeout may
be fractional (Go truncates it to whole seconds), and unlike Go, which kills only the shell, the
command's children die with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

from msgscript.lua.module import ModuleContext

from ._shared_io import check_number, check_string

DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_ERROR = "execute timeout"
_DRAIN_AFTER_KILL_S = 1.0
"""How long to wait for the output pipes once the group is killed (a child that left the group may hold them)."""


def run_command(command: bytes, *, cwd: str, timeout_s: float) -> tuple[int, bytes, bytes] | None:
    """Run `sh -c command`; its status, stdout and stderr, or None when it outlived timeout_s (it is then killed)."""
    if timeout_s <= 0:
        return None
    with subprocess.Popen(
        [b"/bin/sh", b"-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=_DRAIN_AFTER_KILL_S)
            proc.kill()
            proc.wait()
            return None
    status = proc.returncode
    # Go reports -1 for a process ended by a signal.
    return (status if status >= 0 else -1), stdout, stderr


class CmdModule:
    """Builds the `cmd` table for one execution."""

    name = "cmd"

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{exec = ...}`."""

        def exec_(command: object = None, timeout: object = None, *_: object) -> object:
            line = check_string(command, 1, "exec")
            limit_s = DEFAULT_TIMEOUT_S
            if timeout is not None:
                limit_s = check_number(timeout, 2, "exec")
            try:
                outcome = run_command(line, cwd=ctx.workdir(), timeout_s=min(limit_s, ctx.remaining_s()))
            except OSError as exc:
                return (None, f"fork/exec /bin/sh: {exc.strerror or exc}")
            if outcome is None:
                return (None, TIMEOUT_ERROR)
            status, stdout, stderr = outcome
            return {"status": status, "stdout": stdout, "stderr": stderr}

        return {"exec": exec_}


module = CmdModule()
