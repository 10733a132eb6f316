"""Run the `msgscript` and `msgscriptcli` commands as a user does: to completion, or the daemon as a process read
through its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 20.0
READY = "Starting message watch..."


# Where the daemon connects and how it authenticates: the tests say so themselves.
CONNECTION_VARIABLES = (
    "NATS_URL",
    "ETCD_ENDPOINTS",
    *("NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CA", "NATS_CERT", "NATS_KEY"),
    *("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER", "ETCDCTL_PASSWORD"),
)


def command_env(**extra: str) -> dict[str, str]:
    """This environment without the variables that would redirect the daemon, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (*CONNECTION_VARIABLES, "DEBUG")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def _run_to_end(argv: list[str], timeout: float, env: Mapping[str, str] | None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env() if env is None else dict(env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_msgscript(*args: str, timeout: float = 30, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run `msgscript <args>` to its end: exit status, stdout, stderr."""
    return await _run_to_end([sys.executable, "-m", "msgscript", *args], timeout, env)


async def run_msgscriptcli(
    *args: str | Path, timeout: float = 30, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `msgscriptcli <args>` (the checkout's launcher) to its end: exit status, stdout, stderr."""
    launcher = str(Path(__file__).parent.parent / "cmd" / "msgscriptcli")
    return await _run_to_end([sys.executable, launcher, *map(str, args)], timeout, env)


async def _read_all(stream: asyncio.StreamReader) -> str:
    return (await stream.read()).decode()


class Daemon:
    """A `msgscript` process; `log` holds what it has written to stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = ""
        # What it prints on stdout, read all along, when it was started with stdout=True.
        self.stdout: asyncio.Task[str] | None = None
        if proc.stdout is not None:
            self.stdout = asyncio.create_task(_read_all(proc.stdout))

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


async def start_daemon(
    *args: str, env: Mapping[str, str] | None = None, ready: str | None = READY, stdout: bool = False
) -> Daemon:
    """Start `msgscript <args>`; with `ready`, wait until it logs that text; with `stdout`, keep what it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "msgscript",
        *args,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
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


async def follow_log(daemon: Daemon) -> None:
    """Keep reading the daemon's stderr, so that a chatty daemon never blocks on a full pipe."""
    assert daemon.proc.stderr is not None
    while line := await daemon.proc.stderr.readline():
        daemon.log += line.decode()


@dataclass
class Proc:
    """What /proc says about one process."""

    pid: int

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self) -> float:
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{self.pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def memory_bytes(self, key: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [int(pid) for pid in text.split()]


@contextlib.asynccontextmanager
async def daemon_running(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Daemon]:
    """A daemon for the duration of the context, stopped with SIGTERM at the end."""
    daemon = await start_daemon(*args, env=env)
    try:
        yield daemon
    finally:
        await daemon.stop()


@contextlib.asynccontextmanager
async def followed_daemon(*args: str) -> AsyncIterator[Daemon]:
    """A daemon whose log is read all along (`follow_log`), for tests that run long or make it talk a lot;
    stopped with SIGTERM at the end (killed if it does not stop within 30 s)."""
    daemon = await start_daemon(*args)
    reader = asyncio.create_task(follow_log(daemon))
    try:
        yield daemon
    finally:
        with contextlib.suppress(ProcessLookupError):
            daemon.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(daemon.proc.wait(), 30)
        except TimeoutError:
            daemon.proc.kill()
            await daemon.proc.wait()
        await reader
