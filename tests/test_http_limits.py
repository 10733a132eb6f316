"""The gateway under pressure, over real sockets: the shared in-flight bound, cancelled dispatches,
read timeouts, and malformed requests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg

from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.processes import daemon_running
from tests.servers import free_port, run_nats_server

EXAMPLES = Path(__file__).parent.parent / "examples"
SLOW_REPLY_DELAY_S = 1.0
READ_TIMEOUT_S = 0.3
"""The header and body read timeouts of these tests' daemons."""
WAIT_S = 5.0
"""Bound on any single wait of these tests, far above what the behaviour needs."""

SCRIPTS = {
    "slow.lua": """--* subject: funcs.slow
--* name: slow
local nats = require("nats")
function OnMessage(subject, payload)
    local reply, err = nats.request("test.slow", payload, 10)
    if reply == nil then error(err) end
    return reply
end
""",
    "spin.lua": """--* subject: funcs.spin
--* name: spin
--* timeout: 30s
local nats = require("nats")
function OnMessage(subject, payload)
    nats.publish("test.spinning", payload)
    while true do end
end
""",
    "work.lua": """--* subject: funcs.work
--* name: work
function OnMessage()
    local n = 0
    for i = 1, 2000000 do n = n + 1 end
    return "worked " .. n
end
""",
}

GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def start_gateway(make_daemon: DaemonFactory, fixture_dirs: tuple[Path, Path]) -> GatewayFactory:
    """Start a daemon with its gateway on a free local port (yields its base URL); keywords override Settings."""
    scripts, _ = fixture_dirs
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        port = free_port()
        options: dict[str, Any] = {
            "http_header_timeout_s": READ_TIMEOUT_S,
            "http_body_timeout_s": READ_TIMEOUT_S,
        }
        options.update(overrides)
        async with make_daemon(http_port=port, http_host="127.0.0.1", **options):
            yield f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
async def asked(nc: nats.NATS) -> AsyncIterator[list[Msg]]:
    """Answer every `test.slow` request with `done` after SLOW_REPLY_DELAY_S, each on its own; lists the requests."""
    requests: list[Msg] = []
    answers: set[asyncio.Task[None]] = set()

    async def answer_later(msg: Msg) -> None:
        await asyncio.sleep(SLOW_REPLY_DELAY_S)
        await msg.respond(b"done")

    async def on_request(msg: Msg) -> None:
        requests.append(msg)
        task = asyncio.ensure_future(answer_later(msg))
        answers.add(task)
        task.add_done_callback(answers.discard)

    sub = await nc.subscribe("test.slow", cb=on_request)
    await nc.flush()
    yield requests
    await sub.unsubscribe()
    for task in answers:
        task.cancel()


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S}s")
        await asyncio.sleep(0.01)


async def fetch(client: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    async with client.request(kwargs.pop("method", "GET"), url, **kwargs) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def first_payload(body: str) -> bytes:
    reply = Reply.from_json(f'{{"script_result":{body}}}')
    (result,) = reply.results or ()
    assert result.error == "", result.error
    return result.payload or b""


# --- One in-flight bound for NATS and HTTP ----------------------------------------------------------


async def test_http_beyond_the_bound_is_503_at_once_and_nats_waits(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, nc: nats.NATS, asked: list[Msg]
) -> None:
    async with start_gateway(max_in_flight=2) as url:
        over_http = asyncio.ensure_future(fetch(client, url + "/funcs.slow"))
        over_nats = asyncio.ensure_future(nc.request("funcs.slow", b"first", timeout=WAIT_S))
        await until(lambda: len(asked) == 2, "both slots taken")
        # A NATS message beyond the bound waits for a slot instead of running or being dropped.
        waiting = asyncio.ensure_future(nc.request("funcs.slow", b"waiting", timeout=3 * WAIT_S))
        await asyncio.sleep(0.2)  # ample time for it to reach the daemon (and to run, were it not held back)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, text, headers = await fetch(client, url + "/funcs.slow")
        assert loop.time() - started < SLOW_REPLY_DELAY_S  # refused at once, not after a slot frees
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert text.startswith("Error: server busy: 2 messages and requests already in flight")
        assert len(asked) == 2  # neither the refused request nor the waiting message ran

        status, text, _ = await over_http
        assert (status, first_payload(text)) == (200, b"done")
        assert Reply.from_json((await over_nats).data).results is not None
        # Once slots free up, the waiting message runs and HTTP is served again.
        status, text, _ = await fetch(client, url + "/funcs.slow")
        assert (status, first_payload(text)) == (200, b"done")
        (result,) = Reply.from_json((await waiting).data).results or ()
        assert (result.error, result.payload) == ("", b"done")
    assert [m.data for m in asked].count(b"waiting") == 1


async def test_a_request_answered_at_once_needs_a_free_slot_too(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, asked: list[Msg]
) -> None:
    async with start_gateway(max_in_flight=1) as url:
        holding = asyncio.ensure_future(fetch(client, url + "/funcs.slow"))
        await until(lambda: len(asked) == 1, "the only slot taken")
        # hello would be answered inline, without a task of its own, but not past the bound.
        status, text, headers = await fetch(client, url + "/funcs.hello", method="POST", data=b"John")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert text.startswith("Error: server busy: 1 messages and requests already in flight")
        assert (await holding)[0] == 200
        # Each inline answer gives its slot back: one after the other, they all get the only slot.
        for _ in range(3):
            status, text, _ = await fetch(client, url + "/funcs.hello", method="POST", data=b"John")
            assert (status, first_payload(text)) == (200, b"Processed subject: funcs.hello with payload: John")
        # And a request that needs a task still finds it free.
        status, text, _ = await fetch(client, url + "/funcs.slow")
        assert (status, first_payload(text)) == (200, b"done")


# --- Cancelling what nobody waits for ---------------------------------------------------------------


async def test_timeout_cancels_the_dispatch_and_frees_its_slot(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, nc: nats.NATS
) -> None:
    spinning = await nc.subscribe("test.spinning")
    async with start_gateway(max_in_flight=1) as url:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, text, _ = await fetch(client, url + "/funcs.spin?_timeout=300ms")
        elapsed = loop.time() - started
        assert (status, text) == (503, "context deadline exceeded")
        assert 0.3 <= elapsed < 1.0
        assert (await spinning.next_msg(timeout=WAIT_S)) is not None  # the script did start
        # The only slot is free again: without the cancellation the loop would hold it for 30s.
        status, text, _ = await fetch(client, url + "/funcs.hello", data=b"John")
        assert status == 200
        assert first_payload(text) == b"Processed subject: funcs.hello with payload: John"


async def test_a_cancelled_lua_run_frees_its_worker_thread(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    async with start_gateway(lua_threads=1) as url:
        status, _, _ = await fetch(client, url + "/funcs.spin?_timeout=300ms")
        assert status == 503
        # This script needs a worker thread, and there is one: the looping run must have let go of it.
        status, text, _ = await fetch(client, url + "/funcs.work?_timeout=5s")
        assert status == 200
        assert first_payload(text) == b"worked 2000000"


async def test_a_client_going_away_cancels_its_dispatch(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, nc: nats.NATS
) -> None:
    spinning = await nc.subscribe("test.spinning")
    async with start_gateway(max_in_flight=1) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /funcs.spin?_timeout=30s HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await spinning.next_msg(timeout=WAIT_S)
        status, _, _ = await fetch(client, url + "/funcs.hello")
        assert status == 503  # the looping script holds the only slot
        writer.close()
        await writer.wait_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while (status := (await fetch(client, url + "/funcs.hello"))[0]) == 503 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert status == 200


# --- Read timeouts --------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), WAIT_S)


async def test_headers_sent_too_slowly_are_answered_408_and_closed(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    async with start_gateway() as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n")
        received = asyncio.ensure_future(read_response(reader))
        # A header line every 0.1s keeps bytes coming, but the deadline is for the whole header block.
        with contextlib.suppress(ConnectionError):
            for i in range(30):
                if received.done():
                    break
                writer.write(f"X-Header-{i}: {i}\r\n".encode())
                await asyncio.sleep(0.1)
                if i == 1:
                    # Meanwhile the daemon serves everyone else.
                    assert (await fetch(client, url + "/funcs.hello"))[0] == 200
        response = await received
        elapsed = loop.time() - started
        writer.close()
    assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert response.endswith(b"\r\n\r\nError: request headers not received within 300ms")
    assert READ_TIMEOUT_S <= elapsed < 2.0


async def test_a_connection_that_sends_nothing_is_closed(start_gateway: GatewayFactory) -> None:
    async with start_gateway() as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await read_response(reader) == b""
        writer.close()


async def test_a_stalled_body_is_answered_408_and_closed(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, nc: nats.NATS
) -> None:
    async with start_gateway() as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /funcs.hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        response = await read_response(reader)
        writer.close()
        assert (await fetch(client, url + "/funcs.hello"))[0] == 200
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head
    assert body == b"Error: request body not received within 300ms"


async def test_time_between_requests_does_not_count_against_the_header_deadline(
    start_gateway: GatewayFactory,
) -> None:
    async with start_gateway() as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:")).split()[1])
            await reader.readexactly(length)
            # Idle on a kept-alive connection for longer than the header deadline.
            await asyncio.sleep(2 * READ_TIMEOUT_S)
        writer.close()


# --- Malformed requests ---------------------------------------------------------------------------


MALFORMED = {
    "request line": [b"GARBAGE\r\n\r\n"],
    "HTTP version": [b"GET /funcs.hello HTTP/9.x\r\nHost: x\r\n\r\n"],
    "header": [b"GET /funcs.hello HTTP/1.1\r\nHost x\r\n\r\n"],
    "content length": [b"POST /funcs.hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"],
    "chunk size": [
        b"POST /funcs.hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ],
    "chunk size after a good chunk": [
        b"POST /funcs.hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"zz\r\nabc\r\n0\r\n\r\n",
    ],
}


@pytest.mark.parametrize("parts", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_is_400_and_one_info_line(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, parts: list[bytes]
) -> None:
    async with start_gateway(http_body_timeout_s=WAIT_S) as url:
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.1)
        response = await read_response(reader)
        writer.close()
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert (await fetch(client, url + "/funcs.hello"))[0] == 200
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"400"
    assert rest.partition(b"\r\n\r\n")[2].startswith(b"Error: bad request")
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.INFO
    assert records[0].exc_info is None
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [("gzip", b"not gzip at all"), ("deflate", b"not deflate either")],
)
async def test_a_body_that_does_not_decode_is_400(
    start_gateway: GatewayFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    encoding: str,
    body: bytes,
) -> None:
    async with start_gateway() as url:
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        status, text, _ = await fetch(
            client, url + "/funcs.hello", method="POST", data=body, headers={"Content-Encoding": encoding}
        )
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert (await fetch(client, url + "/funcs.hello"))[0] == 200
    assert status == 400
    assert text.startswith("Error: bad request")
    assert encoding in text
    assert len(records) == 1, [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)], ids=["gzip", "deflate"]
)
async def test_a_compressed_body_reaches_the_script_decoded(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    async with start_gateway() as url:
        status, text, _ = await fetch(
            client, url + "/funcs.hello", method="POST", data=compress(b"John"), headers={"Content-Encoding": encoding}
        )
    assert status == 200
    assert first_payload(text) == b"Processed subject: funcs.hello with payload: John"


async def connect_when_listening(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to 127.0.0.1:port, retried until the daemon listens there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_the_daemon_logs_a_malformed_request_as_one_line_without_traceback() -> None:
    port = free_port()
    async with run_nats_server() as nats_server:
        args = ("-natsurl", nats_server.url, "-script", str(EXAMPLES), "-port", str(port), "-http-host", "127.0.0.1")
        async with daemon_running(*args) as daemon:
            reader, writer = await connect_when_listening(port)
            writer.write(b"GARBAGE\r\n\r\n")
            response = await read_response(reader)
            writer.close()
            await daemon.wait_for_log("bad HTTP request")
    assert response.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert daemon.log.count("bad HTTP request") == 1
    assert 'level=info msg="bad HTTP request client=127.0.0.1: Invalid method encountered"' in daemon.log
    assert "Traceback" not in daemon.log
    assert "level=error" not in daemon.log
