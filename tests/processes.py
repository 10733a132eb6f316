"""Run the `msgscript` command as a user does: to completion, or as a daemon process read through its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping

STARTUP_TIMEOUT_S = 20.0
READY = "Starting message watch..."


def command_env(**extra: str) -> dict[str, str]:
    """This environment without the variables that would redirect the daemon, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DEBUG", "ETCD_ENDPOINTS")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def run_msgscript(*args: str, timeout: float = 30, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run `msgscript <args>` to its end: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "msgscript",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env() if env is None else dict(env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Daemon:
    """A `msgscript` process; `log` holds what it has written to stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = ""

    async def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Read the log until `text` appears; fail if the process exits or the time runs out first."""
        assert self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in self.log:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not logged; log so far:\n{self.log}")
            line = await asyncio.wait_for(self.proc.stderr.readline(), remaining)
            if not line:
                raise AssertionError(f"daemon exited before logging {text!r}; log:\n{self.log}")
            self.log += line.decode()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), 30)
        self.log += rest.decode()
        return await asyncio.wait_for(self.proc.wait(), 30)


async def start_daemon(*args: str, env: Mapping[str, str] | None = None, ready: str | None = READY) -> Daemon:
    """Start `msgscript <args>`; with `ready`, wait until it logs that text."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "msgscript",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=command_env() if env is None else dict(env),
    )
    daemon = Daemon(proc)
    if ready is not None:
        try:
            await daemon.wait_for_log(ready)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
    return daemon


@contextlib.asynccontextmanager
async def daemon_running(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Daemon]:
    """A daemon for the duration of the context, stopped with SIGTERM at the end."""
    daemon = await start_daemon(*args, env=env)
    try:
        yield daemon
    finally:
        await daemon.stop()
