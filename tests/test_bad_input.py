"""The daemon against malformed input: every case of tests/bad_inputs.py, over NATS and raw HTTP sockets.

One daemon (the real `msgscript` command: supervisor and worker) serves the scripts of tests/bad_nats.py.
For each category the cases run a few at a time; each must get an answer its expectation accepts within
CASE_BOUND_S, and nothing the daemon logs meanwhile may be above INFO (malformed input is the client's
mistake). After the run the same worker still serves hello, with its memory bounded. A failure names its
cases (category and index) with their input and answer: `generate_cases(SEED)` gives them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from msgscript.message import Reply
from tests.bad_http import HttpAnswer
from tests.bad_inputs import SEED, Case, case_digest, generate_cases
from tests.bad_nats import HELLO, MAX_PAYLOAD_BYTES, SCRIPTS, NatsAnswer, NatsCase
from tests.processes import Daemon, Proc, followed_daemon
from tests.servers import free_port, run_nats_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CASES = generate_cases(SEED)
CATEGORIES = list(dict.fromkeys(case.category for case in CASES))
CASE_BOUND_S = 5.0
"""How long a case may wait for its answer."""
CONCURRENCY = 8
PART_PAUSE_S = 0.1
"""The pause between the parts of a request sent in several writes."""
WAIT_S = 0.3
"""How long a client with an incomplete request waits before it hangs up."""
LOG_GRACE_S = 0.3
"""How long the log is given, after the answers, to show what the cases made the daemon write."""
RSS_MARGIN_BYTES = 64 * 1024 * 1024
SHOWN = 12
"""Failures shown in full per category."""
_BAD_LOG = re.compile(r"level=(?:warning|error|fatal)\b|Traceback|exited unexpectedly")
_STATUS_LINE = re.compile(r"HTTP/\d\.\d (\d{3})(?: .*)?")


@dataclass
class Served:
    daemon: Daemon
    nc: Client
    port: int
    worker: Proc
    baseline_rss_bytes: int = 0

    def worker_pids(self) -> list[int]:
        return Proc(self.daemon.proc.pid).children()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    scripts = tmp_path_factory.mktemp("bad-input")
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)
    port = free_port()
    async with (
        run_nats_server() as server,
        followed_daemon(
            *("-script", str(scripts), "-natsurl", server.url, "-port", str(port), "-http-host", "127.0.0.1"),
            *("-grace-period", "3s"),
        ) as daemon,
    ):
        nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            assert nc.max_payload == MAX_PAYLOAD_BYTES
            (worker,) = Proc(daemon.proc.pid).children()
            ready = Served(daemon, nc, port, Proc(worker))
            # Warm up both doors (Lua runtime, HTTP connection handling) before taking the memory baseline.
            for _ in range(20):
                await hello_answers(ready)
            ready.baseline_rss_bytes = ready.worker.memory_bytes()
            yield ready
        finally:
            await nc.close()


async def hello_answers(served: Served) -> None:
    """Ask hello over NATS and over HTTP; both must answer normally."""
    msg = await served.nc.request(HELLO, b"after", timeout=CASE_BOUND_S)
    assert result_payloads(Reply.from_json(msg.data)) == [b"Processed subject: funcs.hello with payload: after"]
    answer = await send_http(served.port, (b"GET /funcs.hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",))
    assert answer.outcome == "response" and answer.status == 200, answer


def result_payloads(reply: Reply) -> list[bytes | None]:
    return [result.payload for result in reply.results or ()]


# --- Sending a case and reading its answer ---------------------------------------------------------------------


async def send_nats(nc: Client, case: NatsCase) -> NatsAnswer:
    try:
        msg = await nc.request(case.subject, case.data, timeout=CASE_BOUND_S)
    except NoRespondersError:
        return NatsAnswer("no_responders")
    except NatsTimeout:
        return NatsAnswer("timeout")
    return NatsAnswer("reply", msg.data)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")  # this server sends no trailers
    return body


async def read_response(reader: asyncio.StreamReader, head_only: bool) -> HttpAnswer:
    """One complete response (interim 1xx ones skipped), or how the connection ended without one."""
    while True:
        try:
            block = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return HttpAnswer("incomplete" if exc.partial else "closed")
        except ConnectionResetError:
            return HttpAnswer("closed")
        lines = block.decode("latin-1").split("\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            return HttpAnswer("incomplete", body=block)
        status = int(match[1])
        pairs = [line.partition(":") for line in lines[1:] if line]
        headers = tuple((name.strip(), value.strip()) for name, _, value in pairs)
        if status >= 200:
            break
    answer = HttpAnswer("response", status, headers)
    try:
        if head_only or status in (204, 304):
            body = b""
        elif "chunked" in (answer.header("Transfer-Encoding") or "").lower():
            body = await read_chunked(reader)
        elif (length := answer.header("Content-Length")) is not None:
            body = await reader.readexactly(int(length))
        else:
            body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionResetError, ValueError):
        return HttpAnswer("incomplete", status, headers)
    return HttpAnswer("response", status, headers, body)


async def send_http(port: int, parts: tuple[bytes, ...], end: str = "read", head: bool = False) -> HttpAnswer:
    """Write `parts` on a fresh connection, then (see HttpCase) read the answer, half-close first, or wait."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            for number, part in enumerate(parts):
                if number:
                    await asyncio.sleep(PART_PAUSE_S)
                writer.write(part)
                await writer.drain()
            if end == "eof":
                writer.write_eof()
        if end == "wait":
            try:
                return await asyncio.wait_for(read_response(reader, head), WAIT_S)
            except TimeoutError:
                return HttpAnswer("silent")
        try:
            return await asyncio.wait_for(read_response(reader, head), CASE_BOUND_S)
        except TimeoutError:
            return HttpAnswer("timeout")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@dataclass
class Outcome:
    case: Case
    answer: NatsAnswer | HttpAnswer
    problem: str | None


async def run_case(served: Served, case: Case) -> Outcome:
    answer: NatsAnswer | HttpAnswer
    if isinstance(case, NatsCase):
        answer = await send_nats(served.nc, case)
        problem = case.expect.problem(answer)
    else:
        try:
            # Bounds the writes too: a body the daemon never reads counts as no answer.
            async with asyncio.timeout(2 * CASE_BOUND_S):
                answer = await send_http(served.port, case.parts, case.end, case.head)
        except TimeoutError:
            answer = HttpAnswer("timeout")
        problem = case.expect.problem(answer)
    return Outcome(case, answer, problem)


async def run_cases(served: Served, cases: list[Case]) -> list[Outcome]:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> Outcome:
        async with slots:
            return await run_case(served, case)

    return await asyncio.gather(*(one(case) for case in cases))


# --- Reporting ---------------------------------------------------------------------------------------------


def shown(data: bytes, limit: int = 300) -> str:
    more = f" … ({len(data)} bytes in all)" if len(data) > limit else ""
    return repr(data[:limit]) + more


def describe(outcome: Outcome) -> str:
    case, answer = outcome.case, outcome.answer
    if isinstance(case, NatsCase):
        sent = f"NATS request on {case.subject[:200]!r}: {shown(case.data)}"
    else:
        sent = f"HTTP, then {case.end}: {shown(b''.join(case.parts))}"
    if isinstance(answer, NatsAnswer):
        got = f"{answer.outcome} {shown(answer.data, 500)}"
    else:
        got = f"{answer.outcome} {answer.status or ''} {dict(answer.headers)} {shown(answer.body)}"
    return f"{case.category}[{case.index}]: {outcome.problem}\n    sent: {sent}\n    got:  {got}"


def bad_lines(text: str) -> list[str]:
    """The log lines above INFO, and tracebacks."""
    return [line for line in text.splitlines() if _BAD_LOG.search(line)]


async def cases_that_log(served: Served, cases: list[Case]) -> list[str]:
    """Replay `cases` one at a time and name those after which the daemon logs above INFO."""
    named = []
    for case in cases:
        offset = len(served.daemon.log)
        await run_case(served, case)
        await asyncio.sleep(LOG_GRACE_S)
        if lines := bad_lines(served.daemon.log[offset:]):
            named.append(f"{case.category}[{case.index}]: {lines[0]}")
    return named


async def settled(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.2)
    return check()


# --- Tests ---------------------------------------------------------------------------------------------------


async def test_the_generator_is_seeded_and_covers_every_category() -> None:
    assert len(CASES) >= 500
    counts = {category: sum(case.category == category for case in CASES) for category in CATEGORIES}
    assert min(counts.values()) >= 10, counts
    assert {category.split(".")[0] for category in CATEGORIES} == {"nats", "http"}
    # The same cases in another process, whatever its hash seed: nothing depends on the clock or set order.
    for hash_seed in ("0", "4242"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bad_inputs",
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        assert out.decode().strip() == case_digest(CASES)


@pytest.mark.parametrize("category", CATEGORIES)
async def test_malformed_input_gets_a_clear_answer(served: Served, category: str) -> None:
    cases = [case for case in CASES if case.category == category]
    offset = len(served.daemon.log)
    outcomes = await run_cases(served, cases)
    await asyncio.sleep(LOG_GRACE_S)
    failures = [describe(outcome) for outcome in outcomes if outcome.problem]
    logged = bad_lines(served.daemon.log[offset:])
    workers = served.worker_pids()
    report = [f"{category}: {len(failures)} of {len(cases)} cases failed (seed {SEED})", *failures[:SHOWN]]
    if len(failures) > SHOWN:
        report.append(f"… and {len(failures) - SHOWN} more")
    if logged:
        report += [f"{len(logged)} log lines above INFO, among them:", *logged[:SHOWN]]
        report += ["replayed one at a time, these cases log above INFO:", *(await cases_that_log(served, cases))]
    if workers != [served.worker.pid]:
        report += [
            f"the worker pid={served.worker.pid} is gone, workers now {workers}; log tail:",
            served.daemon.log[-3000:],
        ]
    assert not failures and not logged and workers == [served.worker.pid], "\n".join(report)


async def test_the_daemon_survives_every_case_and_still_answers(served: Served) -> None:
    await hello_answers(served)
    # The log is read as it is written (so the checks on it above could see a bad line): a malformed request
    # shows up at once, at info level.
    offset = len(served.daemon.log)
    answer = await send_http(served.port, (b"GARBAGE\r\n\r\n",))
    assert answer.status == 400
    expected = 'level=info msg="bad HTTP request client=127.0.0.1: Invalid method encountered"'
    assert await settled(lambda: expected in served.daemon.log[offset:])
    assert served.worker_pids() == [served.worker.pid]
    log = served.daemon.log
    assert "exited unexpectedly" not in log
    assert "Traceback" not in log
    assert not bad_lines(log), log[-3000:]
    limit = served.baseline_rss_bytes + RSS_MARGIN_BYTES
    assert await settled(lambda: served.worker.memory_bytes() < limit), (
        f"worker RSS {served.worker.memory_bytes()} bytes, baseline {served.baseline_rss_bytes}"
    )
