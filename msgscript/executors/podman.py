"""The podman executor: a script is a container spec, each message runs one container through the podman CLI.

The script content is a JSON object (`image`, `mounts`, `command`, `privileged`, `user`, `groups`). A message
runs `podman run --interactive --rm` with the payload on stdin and `SUBJECT URL PAYLOAD METHOD` in the
environment, without a TTY: stdout becomes the result payload, stderr the result error, the exit code the
`http_code`. The CLI is used rather than the REST API because it attaches stdin simply and works the same
against local podman (rootful or rootless) and a podman service socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import stat
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

from msgscript.config import Settings
from msgscript.durations import format_duration
from msgscript.errors import ScriptError
from msgscript.executors.base import Executor, RunContext
from msgscript.executors.podman_config import ContainerConfig, parse_config
from msgscript.executors.stubs import UnavailableExecutor
from msgscript.message import Message, Result
from msgscript.script import Script

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 8
"""Containers running at once per daemon; further messages wait for a slot (the wait counts against their timeout).

Starting a container costs podman a few hundred milliseconds of CPU, so on a small host more parallel starts
only queue on the CPU; containers that mostly wait (on the network, on timers) can use a higher bound.
"""
MAX_STDOUT_BYTES = 16 * 1024 * 1024
"""A container writing more than this to stdout is stopped and its run fails."""
MAX_STDERR_BYTES = 64 * 1024
"""Stderr beyond this is dropped from the result error (the container keeps running)."""
MAX_ENV_PAYLOAD_BYTES = 128 * 1024 - len("PAYLOAD=") - 1
"""Linux's limit on one environment string; a bigger payload (or one with a NUL byte) leaves PAYLOAD empty."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROBE_TIMEOUT_S = 30.0
PROBE_RETRY_S = 30.0
"""After a failed `podman info`, the next podman script probes again once this much time has passed."""
PULL_TIMEOUT_S = 600.0
COMMAND_TIMEOUT_S = 30.0
"""Bound on the short podman commands: `image exists`, `rm`."""
CLIENT_EXIT_TIMEOUT_S = 3.0
CONMON_GRACE_S = 5
"""conmon kills a container this long after its script's deadline, should the daemon be gone by then."""
_PODMAN_FAILURES = frozenset({125, 126, 127})
"""Exit codes with which `podman run` reports its own failure (rather than the container's exit code)."""
_BUFFER_BYTES = 64 * 1024


def podman_url(env: Mapping[str, str], euid: int) -> str | None:
    """The service socket to drive podman through, or None for podman's own choice.

    CONTAINER_HOST or CONTAINER_CONNECTION in the environment are podman's own settings and win. Otherwise a
    non-root daemon uses the rootless service socket `$XDG_RUNTIME_DIR/podman/podman.sock` when it exists (where
    the Go msgscript connects); root, or a user without that socket, runs podman directly.
    """
    if env.get("CONTAINER_HOST") or env.get("CONTAINER_CONNECTION") or euid == 0:
        return None
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if not runtime_dir:
        return None
    path = os.path.join(runtime_dir, "podman", "podman.sock")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return None
    return f"unix://{path}" if is_socket else None


def _decode(content: str) -> ContainerConfig:
    try:
        return parse_config(content)
    except ValueError as exc:
        raise ScriptError(f"failed to execute container: failed to decode container configuration: {exc}") from exc


def _error_line(stderr: bytes) -> str | None:
    """The message of podman's own `Error: ...` line, when it is the last line of stderr."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    if lines and lines[-1].startswith("Error: "):
        return lines[-1][len("Error: ") :]
    return None


def _env_value(value: bytes) -> bytes:
    return value if b"\0" not in value and len(value) <= MAX_ENV_PAYLOAD_BYTES else b""


async def _read(stream: asyncio.StreamReader, limit: int, on_overflow: Callable[[], None] | None = None) -> bytes:
    """Read a stream to its end, keeping the first `limit` bytes; `on_overflow` is called once when there is more."""
    chunks: list[bytes] = []
    size = 0
    overflowed = False
    while chunk := await stream.read(_BUFFER_BYTES):
        if size + len(chunk) > limit:
            if not overflowed and on_overflow is not None:
                on_overflow()
            overflowed = True
            chunk = chunk[: limit - size]
        size += len(chunk)
        if chunk:
            chunks.append(chunk)
    return b"".join(chunks)


async def _feed(stdin: asyncio.StreamWriter, payload: bytes) -> None:
    """Write the payload and close stdin; a container that exits without reading it is fine."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if payload:
            stdin.write(payload)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


@dataclass(slots=True)
class _Container:
    """A running `podman run` client and the future of its I/O (stdin fed, stdout and stderr read, exit)."""

    process: asyncio.subprocess.Process
    io: asyncio.Future[tuple[None, bytes, bytes, int]]
    overflowed: bool = False


class PodmanExecutor:
    """Runs podman scripts, one container per message, at most `max_concurrency` at a time.

    Use it as an async context manager: on exit, containers still running are removed.
    """

    name: ClassVar[str] = "podman"

    def __init__(
        self,
        podman: str,
        *,
        env: Mapping[str, str],
        url: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self._base = [podman, "--url", url] if url else [podman]
        self._env = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items() if "\0" not in k + v}
        self._env.setdefault(b"PATH", DEFAULT_PATH.encode())
        self._slots = asyncio.Semaphore(max_concurrency)
        self._images: set[str] = set()
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._probe: asyncio.Task[str | None] | None = None
        self._probed_at = 0.0
        self._running: dict[str, _Container] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> PodmanExecutor:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        if self._running:
            log.info("removing %d running container(s) executor=podman", len(self._running))
            self._own(self._remove(dict(self._running)), "podman-shutdown")
        tasks: list[asyncio.Task[Any]] = [*self._pulls.values(), *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._cleanups, return_exceptions=True)

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Run the script's container for the message."""
        if self._closing:
            raise ScriptError("failed to execute container: the daemon is shutting down")
        try:
            async with asyncio.timeout(ctx.deadline - time.monotonic()):
                if await asyncio.shield(self._probed()) is not None:
                    return Result.failure("msgscript wasn't built with podman support")
                config = _decode(script.content)
                await self._ensure_image(config.image)
                await self._slots.acquire()
        except TimeoutError:
            raise ctx.timed_out() from None
        try:
            result = await self._run_container(config, message, ctx)
            if result is None:  # the image went away since it was seen: fetch it again, once
                self._images.discard(config.image)
                try:
                    async with asyncio.timeout(ctx.deadline - time.monotonic()):
                        await self._ensure_image(config.image)
                except TimeoutError:
                    raise ctx.timed_out() from None
                result = await self._run_container(config, message, ctx)
        finally:
            self._slots.release()
        if result is None:
            raise ScriptError(f"failed to execute container: {config.image}: image not known")
        return result

    # --- podman commands -------------------------------------------------------------------------

    async def _podman(self, *args: str, timeout_s: float) -> tuple[int, bytes, bytes]:
        """Run one podman command to its end; (exit code, stdout, stderr). Raises TimeoutError."""
        process = await asyncio.create_subprocess_exec(
            *self._base,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout_s):
                stdout, stderr = await process.communicate()
        except BaseException:
            await _stop(process)
            raise
        return process.returncode or 0, stdout, stderr

    def _probed(self) -> asyncio.Task[str | None]:
        """`podman info`, once (again PROBE_RETRY_S after a failure); the task's result is None or what failed."""
        probe = self._probe
        stale = probe is not None and probe.done() and probe.result() is not None
        if probe is None or (stale and time.monotonic() - self._probed_at > PROBE_RETRY_S):
            self._probed_at = time.monotonic()
            probe = self._probe = asyncio.create_task(self._info(), name="msgscript:podman-info")
        return probe

    async def _info(self) -> str | None:
        try:
            code, _, stderr = await self._podman("info", timeout_s=PROBE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
        else:
            if code == 0:
                log.info("podman executor ready command=%s", " ".join(self._base))
                return None
            problem = _error_line(stderr) or f"podman info exited with code {code}"
        log.warning("podman executor disabled, podman info failed: %s", problem)
        return problem

    async def _ensure_image(self, image: str) -> None:
        """Make sure the image is present, pulling it when missing; concurrent runs share one pull."""
        if image in self._images:
            return
        task = self._pulls.get(image)
        if task is None:
            task = asyncio.create_task(self._fetch(image), name=f"msgscript:podman-pull:{image}")
            self._pulls[image] = task
            task.add_done_callback(lambda t: self._pull_done(image, t))
        await asyncio.shield(task)

    def _pull_done(self, image: str, task: asyncio.Task[None]) -> None:
        if self._pulls.get(image) is task:
            del self._pulls[image]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have timed out already

    async def _fetch(self, image: str) -> None:
        try:
            code, _, stderr = await self._podman("image", "exists", image, timeout_s=COMMAND_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ScriptError(f"failed to execute container: failed to check image {image}: {reason}") from exc
        if code != 0:
            log.info("pulling image=%s executor=podman", image)
            try:
                code, _, stderr = await self._podman("pull", "--quiet", image, timeout_s=PULL_TIMEOUT_S)
            except TimeoutError:
                code, stderr = -1, f"Error: timed out after {format_duration(PULL_TIMEOUT_S)}".encode()
            except OSError as exc:
                code, stderr = -1, f"Error: {exc}".encode()
            if code != 0:
                reason = _error_line(stderr) or f"podman pull exited with code {code}"
                log.warning("pull failed image=%s executor=podman: %s", image, reason)
                raise ScriptError(f"failed to execute container: failed to pull image {image}: {reason}")
        self._images.add(image)

    # --- one container ---------------------------------------------------------------------------

    async def _run_container(self, config: ContainerConfig, message: Message, ctx: RunContext) -> Result | None:
        """Run the container to its end; None when podman no longer knows the image."""
        remaining_s = ctx.deadline - time.monotonic()
        if remaining_s <= 0:
            raise ctx.timed_out()
        name = f"msgscript-{secrets.token_hex(4)}"
        argv = [*self._base, "run", "--interactive", "--rm", "--pull=never", "--log-driver=none", "--name", name]
        # Values come from podman's environment, so they never show on a command line.
        argv += ["--env", "SUBJECT", "--env", "URL", "--env", "PAYLOAD", "--env", "METHOD"]
        argv += ["--timeout", str(math.ceil(remaining_s) + CONMON_GRACE_S), *config.run_options()]
        env = dict(self._env)
        env[b"SUBJECT"] = message.subject.encode("utf-8", "surrogateescape").replace(b"\0", b"")
        env[b"URL"] = message.url.encode("utf-8", "surrogateescape").replace(b"\0", b"")
        env[b"METHOD"] = message.method.encode("utf-8", "surrogateescape").replace(b"\0", b"")
        env[b"PAYLOAD"] = _env_value(message.payload)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                limit=_BUFFER_BYTES,
            )
        except OSError as exc:
            raise ScriptError(f"failed to execute container: {exc}") from exc
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None

        def overflow() -> None:
            container.overflowed = True
            self._own(self._remove({name: container}), f"podman-rm:{name}")

        io = asyncio.gather(
            _feed(process.stdin, message.payload),
            _read(process.stdout, MAX_STDOUT_BYTES, overflow),
            _read(process.stderr, MAX_STDERR_BYTES),
            process.wait(),
        )
        container = self._running[name] = _Container(process, io)
        try:
            async with asyncio.timeout(ctx.deadline - time.monotonic()):
                _, stdout, stderr, code = await asyncio.shield(io)
        except TimeoutError:
            await asyncio.shield(self._own(self._remove({name: container}), f"podman-rm:{name}"))
            raise ctx.timed_out() from None
        except BaseException:  # cancelled: the container is removed in the background
            self._own(self._remove({name: container}), f"podman-rm:{name}")
            raise
        finally:
            self._running.pop(name, None)
        if container.overflowed:
            raise ScriptError(f"failed to execute container: stdout exceeds {MAX_STDOUT_BYTES} bytes")
        if code in _PODMAN_FAILURES and (problem := _error_line(stderr)) is not None:
            if problem.endswith(": image not known"):
                return None
            raise ScriptError(f"failed to execute container: {problem}")
        return Result(http_code=code, error=stderr.decode("utf-8", "replace"), http_headers={}, payload=stdout or None)

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a cleanup task that the executor owns (awaited on exit) and that outlives a cancelled run."""
        task = asyncio.create_task(coro, name=f"msgscript:{name}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _remove(self, containers: dict[str, _Container]) -> None:
        """Kill and remove containers, and wait until their `podman run` clients are gone."""
        names = list(containers)
        ios = asyncio.gather(*(c.io for c in containers.values()), return_exceptions=True)
        await self._rm(names)
        try:
            await asyncio.wait_for(asyncio.shield(ios), CLIENT_EXIT_TIMEOUT_S)
        except TimeoutError:
            # A client still creating its container when `rm` ran starts it afterwards: stop it, remove again.
            await asyncio.gather(*(_stop(c.process) for c in containers.values()))
            await self._rm(names)
            try:
                await asyncio.wait_for(ios, CLIENT_EXIT_TIMEOUT_S)
            except TimeoutError:
                log.error("podman clients of %s did not exit executor=podman", names)

    async def _rm(self, names: list[str]) -> None:
        try:
            code, _, stderr = await self._podman(
                "rm", "--force", "--ignore", "--time", "0", *names, timeout_s=COMMAND_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.error("could not remove containers %s executor=podman: %s", names, exc)
            return
        if code != 0:
            log.error("could not remove containers %s executor=podman: %s", names, _error_line(stderr) or code)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a podman client (the leader of its own session) and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), CLIENT_EXIT_TIMEOUT_S)


def _locate(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The podman executable on the environment's PATH, and the socket to use (see podman_url)."""
    found = shutil.which("podman", path=env.get("PATH") or DEFAULT_PATH)
    return found, (podman_url(env, os.geteuid()) if found else None)


@contextlib.asynccontextmanager
async def open_podman_executor(settings: Settings) -> AsyncIterator[Executor]:
    """The podman executor for the daemon's lifetime, or the stand-in when podman is not installed.

    Whether podman works (`podman info`) is checked when the first podman script runs, so that daemons
    without podman scripts do not pay for it; when it fails, podman scripts get the stand-in's error.
    """
    podman, url = await asyncio.to_thread(_locate, settings.env)
    if podman is None:
        log.info("podman not found on PATH: podman scripts are disabled")
        yield UnavailableExecutor("podman", "podman")
        return
    async with PodmanExecutor(
        podman, env=settings.env, url=url, max_concurrency=settings.podman_concurrency
    ) as executor:
        yield executor
