"""The test bed of `msgscriptcli test`: the scripts served in-process, and Lua test files run against them.

`open_testbed` opens what a test run needs: the file store and the daemon's dispatcher over it
(msgscript.compose), the HTTP gateway on a loopback port of its own, and, with `nats=True`, an embedded
nats-server that the scripts' `nats` module talks to and on which the scripts answer as in the daemon.
Without it, the `nats` module's calls fail with NO_NATS.

Test files run on a thread of their own in a sandbox whose modules are the built-in ones and `test`
(msgscript.lua.testing). A file's global functions named `test_*` are its tests, in the order of the lines
that define them. Each test runs in a fresh environment: the file's top level runs again before each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from msgscript.catalog import Catalog
from msgscript.compose import open_dispatcher, open_store
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.durations import format_duration
from msgscript.embedded_nats import EmbeddedNats
from msgscript.errors import ConfigError, MsgscriptError
from msgscript.executors.threads import WorkerThreads
from msgscript.http.server import http_site
from msgscript.inflight import InFlightLimit
from msgscript.lua.contract import LuaModule
from msgscript.lua.execution import Execution, Shared
from msgscript.lua.modules import builtin_modules
from msgscript.lua.runtime import LuaSandbox, Outcome, Status
from msgscript.lua.testing import HttpAnswer, LuaTestModule
from msgscript.nats_connect import connect_client
from msgscript.nats_subscriber import NatsSubscriber
from msgscript.services import Services, open_services

log = logging.getLogger(__name__)

NO_NATS = "no NATS in tests (use --nats)"
LOOPBACK = "127.0.0.1"
_NATS_CLOSE_TIMEOUT_S = 5.0
_GRACE_PERIOD_S = 2.0
"""How long the end of a run waits for work still in flight (a test that timed out may leave some)."""

# Defines the global that lists the file's tests, as `name:line` lines in the order of their lines. It is
# prepended to the file on its first line, so that the file's own lines keep their numbers, and it touches
# `string`, `table` and `debug` before walking `_G`: their first use copies them into the environment.
_LISTER = (
    "function __msgscript_tests() local sub, getinfo, sort, concat, found = string.sub, debug.getinfo, "
    "table.sort, table.concat, {} for k, v in pairs(_G) do if type(k) == 'string' and type(v) == 'function' "
    "and sub(k, 1, 5) == 'test_' then found[#found + 1] = {k, getinfo(v, 'S').linedefined} end end "
    "sort(found, function(a, b) if a[2] ~= b[2] then return a[2] < b[2] end return a[1] < b[1] end) "
    "for i, t in ipairs(found) do found[i] = t[1] .. ':' .. t[2] end return concat(found, '\\n') end "
)
_LIST_ENTRY = b"__msgscript_tests"
_POSITION = re.compile(r"^<string>:(\d+): ")
_FRAME = re.compile(r"^\t<string>:(\d+):")
_STACK_MARK = "\nstack traceback:\n"
# The sandbox calls an entry function through a local of this name; in a test file's stack it is the test.
_ENTRY_FRAME = " in function 'OnMessage'"


class NoNatsInTests(MsgscriptError):
    """Raised by the `nats` module's calls in a test run without `--nats`."""

    def __init__(self) -> None:
        super().__init__(NO_NATS)


class _AbsentNats:
    """The NATS client of a run without NATS: every call fails with NO_NATS, which the `nats` module reports
    as it reports any NATS failure (`false, "Failed to publish message: …"`, `nil, "…"`)."""

    async def publish(self, *args: object, **kwargs: object) -> None:
        raise NoNatsInTests

    async def request(self, *args: object, **kwargs: object) -> Any:
        raise NoNatsInTests

    def jetstream(self) -> Any:
        raise NoNatsInTests


@dataclass(frozen=True, slots=True)
class Suite:
    """A test file: where it is, the name it is shown by, its text."""

    path: Path
    shown: str
    source: str

    @classmethod
    def read(cls, path: Path) -> Suite:
        """Read a test file (raises OSError)."""
        return cls(path, str(path), path.read_bytes().decode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class Case:
    """One test: a global function `name` of a test file, defined at `line`."""

    suite: Suite
    name: str
    line: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a test (or a whole test file) failed: the message, the test file's line it points at (0 when it
    points nowhere), and the Lua stack within the test file."""

    message: str
    line: int = 0
    stack: str = ""


def failure_from_error(error: str, suite: Suite, name: str = "", line: int = 0) -> Failure:
    """A Lua error of a test file as a Failure: its position (else the first of the file's frames in its stack,
    else `line`) and its stack, the file named as shown."""
    message, _, traceback = error.partition(_STACK_MARK)
    position = _POSITION.match(message)
    if position is not None:
        message = message[position.end() :]
    frames = [found for found in map(_FRAME.match, traceback.split("\n")) if found is not None]
    if position is not None:
        line = int(position.group(1))
    elif frames:
        line = int(frames[0].group(1))
    stack = [frame.string.strip().replace("<string>:", f"{suite.shown}:", 1) for frame in frames]
    if stack and name and stack[-1].endswith(_ENTRY_FRAME):
        stack[-1] = stack[-1].removesuffix(_ENTRY_FRAME) + f" in function '{name}'"
    return Failure(message, line, "\n".join(stack))


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _free_port() -> int:
    with _loopback_socket() as sock:
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _embedded_nats() -> AsyncIterator[Any]:
    """A nats-server of the run's own on a free loopback port, and a client connected to it."""
    server = EmbeddedNats(_free_port())
    try:
        await asyncio.to_thread(server.start)
        nc = await connect_client(server.url, name="msgscriptcli test")
        try:
            yield nc
        finally:
            try:
                await asyncio.wait_for(nc.drain(), _NATS_CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("NATS drain did not finish: %s", exc)
                await nc.close()
    finally:
        await asyncio.to_thread(server.stop)


class Testbed:
    """One test run's scripts, gateway and test sandbox; made by `open_testbed`."""

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        *,
        nats: Any,
        services: Services,
        session: aiohttp.ClientSession,
        url: str,
        threads: WorkerThreads,
        timeout_s: float,
    ) -> None:
        self.url = url
        """The base URL of the run's HTTP gateway (`http://127.0.0.1:<port>`)."""
        self._settings = settings
        self._nats = nats
        self._services = services
        self._session = session
        self._threads = threads
        self._timeout_s = timeout_s
        self._modules: dict[str, LuaModule] = builtin_modules()
        self._modules["test"] = LuaTestModule(dispatcher.dispatch, self._http, url)
        self._local = threading.local()

    async def discover(self, suite: Suite) -> list[Case] | Failure:
        """The tests of a file, in the order of their lines; a Failure when the file does not run or has none."""
        outcome = await self._run(suite, _LIST_ENTRY)
        if outcome.status is Status.OK:
            listed = outcome.values[0] if outcome.values and isinstance(outcome.values[0], bytes) else b""
            cases = []
            for entry in listed.decode("utf-8", "surrogateescape").splitlines():
                name, _, line = entry.rpartition(":")
                cases.append(Case(suite, name, max(int(line), 0)))
            if not cases:
                return Failure("no tests: a test is a global function whose name starts with test_")
            return cases
        if outcome.status is Status.TIMEOUT:
            return Failure(f"the file's top level timed out after {format_duration(self._timeout_s)}")
        if outcome.status is Status.MISSING:
            return Failure("the file's tests could not be listed")
        return failure_from_error(outcome.error, suite)

    async def run_case(self, case: Case) -> Failure | None:
        """Run the test file's top level again, then the test; None when it passes."""
        outcome = await self._run(case.suite, case.name.encode("utf-8", "surrogateescape"))
        if outcome.status is Status.OK:
            return None
        if outcome.status is Status.TIMEOUT:
            return Failure(f"timed out after {format_duration(self._timeout_s)}", case.line)
        if outcome.status is Status.MISSING:
            return Failure(f"{case.name} is not defined when the file runs again", case.line)
        return failure_from_error(outcome.error, case.suite, case.name, case.line)

    async def _run(self, suite: Suite, entry: bytes) -> Outcome:
        loop = asyncio.get_running_loop()
        shared = Shared(loop=loop, nats=self._nats, env=self._settings.env, services=self._services)
        execution = Execution(time.monotonic() + self._timeout_s, shared)
        try:
            return await self._threads.run(
                self._execute,
                suite,
                entry,
                execution,
                deadline=execution.deadline,
                on_cancel=execution.cancel,
                what=f"test {suite.shown}:{entry.decode('utf-8', 'replace')}",
            )
        except TimeoutError:
            return Outcome(Status.TIMEOUT)

    def _execute(self, suite: Suite, entry: bytes, execution: Execution) -> Outcome:
        """Run the file and one of its functions on this (worker) thread, in its sandbox."""
        sandbox: LuaSandbox | None = getattr(self._local, "sandbox", None)
        if sandbox is None:
            sandbox = LuaSandbox(self._modules, self._settings.max_memory_bytes)
            self._local.sandbox = sandbox
        try:
            return sandbox.run((suite.path, suite.source), (_LISTER + suite.source,), False, entry, b"", b"", execution)
        finally:
            execution.close()

    async def _http(self, method: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> HttpAnswer:
        if not path.startswith("/"):
            raise ValueError(f"the path must start with /, not {path!r}")
        async with self._session.request(
            method,
            URL(self.url + path),
            data=body or None,
            headers=CIMultiDict(headers),
            allow_redirects=False,
        ) as response:
            data = await response.read()
        joined: dict[str, str] = {}
        for name, value in response.headers.items():
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        return HttpAnswer(response.status, data, joined)


@contextlib.asynccontextmanager
async def open_testbed(settings: Settings, *, nats: bool, timeout_s: float) -> AsyncIterator[Testbed]:
    """Serve `settings.script_dir` (with its libraries and plugins) for a test run; each test may take `timeout_s`.

    Raises:
        ConfigError: the store, the plugins, the HTTP gateway or the embedded NATS server cannot start.
    """
    async with contextlib.AsyncExitStack() as stack:
        try:
            listener = stack.enter_context(_loopback_socket())
        except OSError as exc:
            raise ConfigError(f"cannot listen on {LOOPBACK} for the test gateway: {exc.strerror or exc}") from exc
        port = int(listener.getsockname()[1])
        settings = replace(settings, http_host=LOOPBACK, http_port=port, grace_period_s=_GRACE_PERIOD_S)
        store = await stack.enter_async_context(open_store(settings))
        nc: Any = await stack.enter_async_context(_embedded_nats()) if nats else _AbsentNats()
        dispatcher = await stack.enter_async_context(open_dispatcher(settings, store, nc=nc))
        catalog = Catalog(store)
        in_flight = InFlightLimit(settings.max_in_flight)
        if nats:
            await stack.enter_async_context(NatsSubscriber(nc, dispatcher, catalog, settings, in_flight=in_flight))
        await stack.enter_async_context(
            http_site(dispatcher, catalog, settings, in_flight=in_flight, listeners=[listener])
        )
        session = await stack.enter_async_context(
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        )
        yield Testbed(
            settings,
            dispatcher,
            nats=nc,
            services=await stack.enter_async_context(open_services(settings)),
            session=session,
            url=f"http://{LOOPBACK}:{port}",
            threads=await stack.enter_async_context(WorkerThreads(1, name="msgscript-test")),
            timeout_s=timeout_s,
        )
