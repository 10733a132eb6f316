"""What the gateway's connections serve, over raw sockets: HTTP/1.0 and HTTP/1.1 only, a valid Host, no CONNECT,
and `OPTIONS *` answered for the server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from msgscript.http.protocol import simple_request
from msgscript.http.quick import QuickAnswers
from tests.conftest import gateway_daemon
from tests.http_wire import Answer, connection, exchange, exchange_then_closed, is_closed, read_answer

pytestmark = pytest.mark.asyncio(loop_scope="module")

HELLO = b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def port(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[int]:
    """A daemon's HTTP port."""
    async with gateway_daemon(tmp_path_factory.mktemp("protocol")) as http_port:
        yield http_port


REFUSED = {
    "HTTP/2.0": (
        b"GET /funcs.hello HTTP/2.0\r\nHost: x\r\n\r\n",
        505,
        "HTTP/2.0 is not supported, only HTTP/1.0 and HTTP/1.1",
    ),
    "no version (HTTP/0.9)": (b"GET /funcs.hello\r\nHost: x\r\n\r\n", 400, "HTTP/0.9 is not supported"),
    "HTTP/0.9": (b"GET /funcs.hello HTTP/0.9\r\nHost: x\r\n\r\n", 400, "HTTP/0.9 is not supported"),
    "Host with a space": (b"GET /funcs.hello HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host header"),
    "Host with a slash": (b"GET /funcs.hello HTTP/1.1\r\nHost: x/y\r\n\r\n", 400, "invalid Host header"),
    "Host with an open bracket": (b"GET /funcs.hello HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "invalid Host header"),
    "Host with a bad escape": (b"GET /funcs.hello HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400, "invalid Host header"),
    "Host with a port not a number": (b"GET /funcs.hello HTTP/1.1\r\nHost: x:y\r\n\r\n", 400, "invalid Host header"),
    "Host in Latin-1": (b"GET /funcs.hello HTTP/1.1\r\nHost: caf\xe9\r\n\r\n", 400, "invalid Host header"),
    "Host with userinfo": (b"GET /funcs.hello HTTP/1.1\r\nHost: u@x\r\n\r\n", 400, "invalid Host header"),
    "invalid Host in HTTP/1.0": (b"GET /funcs.hello HTTP/1.0\r\nHost: a b\r\n\r\n", 400, "invalid Host header"),
    "CONNECT to an authority": (
        b"CONNECT funcs.hello:80 HTTP/1.1\r\nHost: funcs.hello:80\r\n\r\n",
        400,
        "CONNECT is not supported, this server is not a proxy",
    ),
    "CONNECT to a path": (
        b"CONNECT /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "CONNECT is not supported, this server is not a proxy",
    ),
}


@pytest.mark.parametrize(("request_bytes", "status", "reason"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_request_that_is_not_served_is_refused_and_closed(
    port: int, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, closed = await exchange_then_closed(port, request_bytes)
    assert answer.status == status
    assert answer.body == f"Error: bad request: {reason}".encode()
    assert closed
    records = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("msgscript")]
    assert [r.getMessage() for r in records] == [f"bad HTTP request client=127.0.0.1: {reason}"]
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize(
    "host",
    [b"x", b"", b"127.0.0.1:7643", b"[::1]:7643", b"[fe80::1%25eth0]", b"my_host.example.:80", b"a%20b", b"[v1.x]"],
)
async def test_a_valid_host_is_served(port: int, host: bytes) -> None:
    answer = await exchange(port, b"GET /funcs.hello HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.status == 200


async def test_http_1_0_without_a_host_is_served(port: int) -> None:
    answer = await exchange(port, b"GET /funcs.hello HTTP/1.0\r\n\r\n")
    assert answer.status_line == "HTTP/1.0 200 OK"


async def test_a_refused_request_after_a_good_one_on_the_same_connection(port: int) -> None:
    async with connection(port) as (reader, writer):
        writer.write(HELLO + b"GET /funcs.hello HTTP/1.1\r\nHost: a b\r\n\r\n" + HELLO)
        assert (await read_answer(reader)).status == 200
        refused = await read_answer(reader)
        assert (refused.status, refused.body) == (400, b"Error: bad request: invalid Host header")
        # The request after it is not answered: the connection closes.
        assert await is_closed(reader)


async def test_a_refused_request_does_not_wait_for_its_body(port: int) -> None:
    head = b"POST /funcs.hello HTTP/2.0\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    answer, closed = await exchange_then_closed(port, head + b"only the start of it")
    assert answer.status == 505
    assert closed


async def test_options_asterisk_is_an_empty_200_and_the_connection_stays_open(port: int) -> None:
    async with connection(port) as (reader, writer):
        writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.status_line == "HTTP/1.1 200 OK"
        assert answer.headers["Content-Length"] == "0"
        assert "Location" not in answer.headers
        writer.write(HELLO)
        assert (await read_answer(reader)).status == 200


async def test_options_on_a_path_still_runs_the_script(port: int) -> None:
    answer = await exchange(port, b"OPTIONS /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 200
    (result,) = json.loads(answer.body)
    assert base64.b64decode(result["payload"]) == b"Processed subject: funcs.hello with payload: "


# --- Answers the connection writes itself (msgscript.http.quick) --------------------------------


def post(target: bytes, body: bytes = b"John") -> bytes:
    head = b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    return head % (target, len(body)) + body


def undated(answer: Answer) -> tuple[str, list[tuple[str, str]], bytes]:
    """The answer without its Date header (the headers in the order sent)."""
    return answer.status_line, [(name, value) for name, value in answer.headers.items() if name != "Date"], answer.body


async def test_an_answer_written_by_the_connection_is_the_one_aiohttp_writes(port: int) -> None:
    # `/funcs.hello` is answered by the connection itself; `/funcs.hello/` (a second segment) goes through aiohttp.
    async with connection(port) as (reader, writer):
        answers = []
        for target in (b"/funcs.hello", b"/funcs.hello/", b"/funcs.hello?x=1", b"/funcs.hello/?x=1"):
            writer.write(post(target))
            answers.append(await read_answer(reader))
    assert all("Date" in answer.headers for answer in answers)
    assert [undated(answer) for answer in answers] == [undated(answers[1])] * 4
    (result,) = json.loads(answers[0].body)
    assert base64.b64decode(result["payload"]) == b"Processed subject: funcs.hello with payload: John"


async def test_an_answer_at_once_does_not_overtake_an_earlier_request(port: int) -> None:
    async with connection(port) as (reader, writer):
        writer.write(post(b"/funcs.loop", b""))  # loops on a worker thread until its 1s timeout
        await asyncio.sleep(0.2)
        writer.write(post(b"/funcs.hello"))  # answerable at once, but only after funcs.loop's answer
        (first,) = json.loads((await read_answer(reader)).body)
        (second,) = json.loads((await read_answer(reader)).body)
    assert "timed out" in first["error"]
    assert base64.b64decode(second["payload"]) == b"Processed subject: funcs.hello with payload: John"


async def test_a_request_the_connection_hands_on_keeps_its_body(port: int) -> None:
    # The connection reads the body, then finds that funcs.lib (which needs a library) does not run at once.
    answer = await exchange(port, post(b"/funcs.lib", b"John"))
    (result,) = json.loads(answer.body)
    assert base64.b64decode(result["payload"]) == b"hi John"


async def test_this_aiohttp_has_what_answers_in_the_connection_rely_on() -> None:
    # Fails when an upgrade of aiohttp renames what msgscript.http.quick uses: the gateway still works, slower.
    assert QuickAnswers.supported()


async def test_an_html_script_is_answered_with_its_page_not_by_the_connection(port: int) -> None:
    answer = await exchange(port, post(b"/http.hello"))
    assert answer.status_line == "HTTP/1.1 200 OK"
    assert answer.headers["Content-Type"] == "text/html"


# --- Requests read without aiohttp's parser (msgscript.http.protocol.simple_request) --------------

SIMPLE = (
    b"POST /funcs.hello HTTP/1.1\r\nHost: 127.0.0.1:7643\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nJohn"
)


async def test_the_plainest_requests_are_read_without_aiohttp() -> None:
    assert simple_request(SIMPLE) == ("POST", "/funcs.hello", b"John")
    assert simple_request(b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/funcs.hello", b"")
    spelled = b"DELETE /a.b HTTP/1.1\r\nhost:x\r\nconnection: Keep-Alive\r\ncontent-length:\t0 \r\nX-Empty:\r\n\r\n"
    assert simple_request(spelled) == ("DELETE", "/a.b", b"")


NOT_SIMPLE = {
    "HTTP/1.0": SIMPLE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "a lowercase method": SIMPLE.replace(b"POST", b"post", 1),
    "HEAD": b"HEAD /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "CONNECT": b"CONNECT /funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n",
    "a query": SIMPLE.replace(b"/funcs.hello", b"/funcs.hello?x=1"),
    "an escape": SIMPLE.replace(b"/funcs.hello", b"/funcs%2Ehello"),
    "two segments": SIMPLE.replace(b"/funcs.hello", b"/funcs/hello"),
    "an absolute target": SIMPLE.replace(b"/funcs.hello", b"http://x/funcs.hello"),
    "two spaces in the request line": SIMPLE.replace(b"POST ", b"POST  "),
    "leading empty lines": b"\r\n" + SIMPLE,
    "no Host": SIMPLE.replace(b"Host: 127.0.0.1:7643\r\n", b""),
    "two Hosts": SIMPLE.replace(b"Host: 127.0.0.1:7643\r\n", b"Host: a\r\nHost: a\r\n"),
    "an invalid Host": SIMPLE.replace(b"127.0.0.1:7643", b"a b"),
    "two Content-Lengths": SIMPLE.replace(b"Content-Length: 4\r\n", b"Content-Length: 4\r\nContent-Length: 4\r\n"),
    "a signed Content-Length": SIMPLE.replace(b"Content-Length: 4", b"Content-Length: +4"),
    "Transfer-Encoding": SIMPLE.replace(b"Content-Length: 4\r\n", b"Content-Length: 4\r\nTransfer-Encoding: x\r\n"),
    "Expect": SIMPLE.replace(b"Content-Type", b"Expect: 100-continue\r\nContent-Type"),
    "Content-Encoding": SIMPLE.replace(b"Content-Type", b"Content-Encoding: gzip\r\nContent-Type"),
    "Upgrade": SIMPLE.replace(b"Content-Type", b"Upgrade: h2c\r\nContent-Type"),
    "Connection: close": SIMPLE.replace(b"Content-Type", b"Connection: close\r\nContent-Type"),
    "a space before a colon": SIMPLE.replace(b"Content-Type:", b"Content-Type :"),
    "a folded header": SIMPLE.replace(b"text/plain", b"text/plain\r\n x"),
    "a bare LF": SIMPLE.replace(b"text/plain\r\n", b"text/plain\nX-A: 1\r\n"),
    "a bare CR": SIMPLE.replace(b"text/plain", b"text\rplain"),
    "a NUL": SIMPLE.replace(b"text/plain", b"text\x00plain"),
    "a Latin-1 value": SIMPLE.replace(b"text/plain", b"caf\xe9"),
    "a body short of its length": SIMPLE[:-1],
    "a body past its length": SIMPLE + b"x",
    "a second request behind it": SIMPLE + SIMPLE,
    "headers not all there": SIMPLE[:40],
    "a head past aiohttp's line limit": SIMPLE.replace(b"text/plain", b"x" * 8200),
    "33 headers": SIMPLE.replace(b"Content-Type", b"X: 1\r\n" * 30 + b"Content-Type"),
}


@pytest.mark.parametrize("data", NOT_SIMPLE.values(), ids=NOT_SIMPLE.keys())
async def test_anything_else_is_left_to_aiohttp(data: bytes) -> None:
    assert simple_request(data) is None


async def test_a_simple_request_is_answered_as_aiohttp_answers_it_in_pieces(port: int) -> None:
    # Whole in one write: read without aiohttp's parser. In two writes: the first is no whole request, and the
    # connection leaves all it reads to aiohttp's parser from then on.
    whole = await exchange(port, SIMPLE)
    async with connection(port) as (reader, writer):
        writer.write(SIMPLE[:30])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(SIMPLE[30:])
        in_pieces = await read_answer(reader)
        writer.write(SIMPLE)  # the same connection, now through aiohttp's parser
        after = await read_answer(reader)
    assert undated(whole) == undated(in_pieces) == undated(after)
    (result,) = json.loads(whole.body)
    assert base64.b64decode(result["payload"]) == b"Processed subject: funcs.hello with payload: John"


async def test_a_connection_answers_simple_and_other_requests_in_order(port: int) -> None:
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # simple, but a route of its own: aiohttp serves it
    async with connection(port) as (reader, writer):
        answers = []
        for data in (SIMPLE, health, SIMPLE, SIMPLE + post(b"/funcs.hello?x=1"), SIMPLE):
            writer.write(data)
            answers.append(await read_answer(reader))
            if data.count(b"HTTP/1.1") == 2:
                answers.append(await read_answer(reader))
    assert [answer.status for answer in answers] == [200] * 6
    assert answers[1].body == (await exchange(port, health)).body
    hello = [answers[i] for i in (0, 2, 3, 4, 5)]
    assert [undated(answer) for answer in hello] == [undated(answers[0])] * 5
