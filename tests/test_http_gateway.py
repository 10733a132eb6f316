"""The HTTP gateway over a real port: request mapping, JSON and HTML modes, errors, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from yarl import URL

from tests.conftest import DaemonFactory
from tests.servers import free_port

HELLO_JOHN = (
    b'[{"http_code":0,"error":"","http_headers":null,"is_html":false,'
    b'"payload":"UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxvIHdpdGggcGF5bG9hZDogSm9obg=="}]'
)
PLAIN_UTF8 = "text/plain; charset=utf-8"
SLOW_REPLY_DELAY_S = 1.0

# Scripts of these tests, next to the shared fixtures.
EXTRA_SCRIPTS = {
    "slow.lua": """--* subject: funcs.slow
--* name: slow
local nats = require("nats")
function OnMessage(subject, payload)
    local reply, err = nats.request("test.slow", payload, 10)
    if reply == nil then error(err) end
    nats.publish("test.done", reply)
    return reply
end
""",
    "args.lua": """--* subject: funcs.args
--* name: args
function OnMessage(...)
    local parts = {tostring(select("#", ...))}
    for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
    return table.concat(parts, "|")
end
""",
    "page_args.lua": """--* subject: web.args
--* name: args
--* html: true
function GET(...)
    local parts = {tostring(select("#", ...))}
    for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
    return table.concat(parts, "|")
end
""",
    "methods.lua": """--* subject: web.methods
--* name: methods
--* html: true
function PATCH(url, body) return "patched " .. body end
function OPTIONS(url, body) return "", 204 end
""",
    "headers.lua": """--* subject: web.headers
--* name: headers
--* html: true
function GET(url, body)
    return "plain text", 200, {["content-type"] = "text/plain", ["x-lower-case"] = "1"}
end
function POST(url, body) return "zero", 0 end
function PUT(url, body) return "odd", 200, {["Content-Length"] = "999", ["X-Ok"] = "yes"} end
""",
}


@dataclass
class Gateway:
    url: str
    port: int

    def at(self, target: str) -> str:
        return self.url + target


@pytest.fixture
def extra_scripts(fixture_dirs: tuple[Path, Path]) -> None:
    scripts, _ = fixture_dirs
    for name, text in EXTRA_SCRIPTS.items():
        (scripts / name).write_text(text)


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def start_gateway(make_daemon: DaemonFactory, extra_scripts: None) -> GatewayFactory:
    """Start a daemon with its HTTP gateway on a free local port; keywords override Settings."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        port = free_port()
        async with make_daemon(http_port=port, http_host="127.0.0.1", **overrides):
            yield Gateway(f"http://127.0.0.1:{port}", port)

    return start


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with start_gateway() as gw:
        yield gw


@pytest.fixture
async def slow_responder(nc: nats.NATS) -> AsyncIterator[asyncio.Event]:
    """Answer `test.slow` after a delay with `done`; the event is set when a request arrives."""
    asked = asyncio.Event()

    async def answer(msg: Msg) -> None:
        asked.set()
        await asyncio.sleep(SLOW_REPLY_DELAY_S)
        await msg.respond(b"done")

    sub = await nc.subscribe("test.slow", cb=answer)
    await nc.flush()
    yield asked
    await sub.unsubscribe()


def payloads(body: bytes) -> list[bytes]:
    return [base64.b64decode(r["payload"]) for r in json.loads(body)]


# --- JSON mode -----------------------------------------------------------------------------------


async def test_post_runs_the_script_and_answers_the_json_array(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.post(gateway.at("/funcs.hello"), data=b"John") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == PLAIN_UTF8
        assert await resp.read() == HELLO_JOHN


async def test_get_without_body_runs_with_an_empty_payload(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.get(gateway.at("/funcs.hello")) as resp:
        assert resp.status == 200
        assert payloads(await resp.read()) == [b"Processed subject: funcs.hello with payload: "]


async def test_every_script_of_the_subject_answers(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.get(gateway.at("/funcs.multi")) as resp:
        assert resp.status == 200
        assert sorted(payloads(await resp.read())) == [b"A", b"B"]


async def test_a_failing_script_is_a_200_with_the_error_in_its_result(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(gateway.at("/funcs.fail")) as resp:
        assert resp.status == 200
        results = json.loads(await resp.read())
    assert len(results) == 1
    assert results[0]["error"].startswith("failed to call OnMessage function: ")


async def test_request_headers_and_cookies_are_not_given_to_scripts(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    headers = {"X-Foo": "secret-header", "Cookie": "session=secret-cookie"}
    async with client.post(gateway.at("/funcs.args"), data=b"body", headers=headers) as resp:
        assert payloads(await resp.read()) == [b"2|funcs.args|body"]
    async with client.get(gateway.at("/web.args/x?q=1"), data=b"body", headers=headers) as resp:
        assert await resp.read() == b"2|/x?q=1|body"


async def test_the_subject_comes_from_the_url_only(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    # A body shaped like a NATS envelope is a payload like any other: it cannot pick another subject.
    envelope = b'{"subject":"funcs.multi","payload":"Sm9obg=="}'
    async with client.post(gateway.at("/funcs.hello"), data=envelope) as resp:
        assert payloads(await resp.read()) == [b"Processed subject: funcs.hello with payload: " + envelope]


# --- HTML mode -----------------------------------------------------------------------------------


async def test_html_script_answers_with_its_body_status_and_headers(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(gateway.at("/http.hello"), data=b"John") as resp:
        assert resp.status == 200
        assert resp.headers.getall("Content-Type") == ["text/plain"]
        assert await resp.read() == b"Hello, John!"
    async with client.get(gateway.at("/web.page")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html"
        assert await resp.read() == b"<p>hi</p>"
    async with client.post(gateway.at("/web.page")) as resp:
        assert resp.status == 201
        assert resp.headers["X-Test"] == "5"
        assert resp.headers["Content-Type"] == "text/html"
        assert await resp.read() == b"created"


async def test_html_method_without_a_function_is_an_empty_page(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.delete(gateway.at("/web.page")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html"
        assert await resp.read() == b""


async def test_html_function_that_raises_is_a_500_with_its_error(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.put(gateway.at("/web.page")) as resp:
        assert resp.status == 500
        assert resp.headers["Content-Type"] == PLAIN_UTF8
        assert (await resp.text()).startswith("Error: failed to call PUT function: ")


async def test_the_http_method_is_passed_as_sent(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.patch(gateway.at("/web.methods"), data=b"x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"patched x"
    async with client.options(gateway.at("/web.methods")) as resp:
        assert resp.status == 204


async def test_the_first_html_result_wins_over_plain_results(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.get(gateway.at("/funcs.mixed")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html"
        assert await resp.read() == b"<b>html</b>"


async def test_a_content_type_in_any_spelling_replaces_the_html_default(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(gateway.at("/web.headers")) as resp:
        assert resp.status == 200
        assert resp.headers.getall("Content-Type") == ["text/plain"]
        assert await resp.read() == b"plain text"
        names = [name for name, _ in resp.raw_headers]
    # Header names are sent in Go's canonical spelling.
    assert b"X-Lower-Case" in names
    assert b"Content-Type" in names


async def test_html_status_zero_is_200(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.post(gateway.at("/web.headers")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"zero"


async def test_a_script_cannot_set_the_body_framing_headers(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.put(gateway.at("/web.headers")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "3"
        assert resp.headers["X-Ok"] == "yes"
        assert await resp.read() == b"odd"


# --- URL mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "url"),
    [
        ("/http.echo/foo/bar?x=1", "/foo/bar?x=1"),
        ("/http.echo", ""),
        ("/http.echo/", "/"),
        ("/http.echo?x=1", "?x=1"),
        ("/http.echo/a?_timeout=3s", "/a?_timeout=3s"),
        ("/http.echo/a%20b?q=%2F", "/a%20b?q=%2F"),
        # Every occurrence of /<subject> goes, as with the Go gateway.
        ("/http.echo/x/http.echo/y", "/x/y"),
    ],
)
async def test_scripts_get_the_request_uri_without_the_subject(
    gateway: Gateway, client: aiohttp.ClientSession, target: str, url: str
) -> None:
    async with client.get(URL(gateway.at(target), encoded=True)) as resp:
        assert resp.status == 200
        assert await resp.text() == url


# --- Errors --------------------------------------------------------------------------------------


async def test_unknown_subject_is_404(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    for method in ("GET", "POST"):
        async with client.request(method, gateway.at("/funcs.unknown/x")) as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"] == PLAIN_UTF8
            assert await resp.text() == "Error: no script found for subject funcs.unknown"


async def test_inbox_subjects_are_not_served(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.get(gateway.at("/_INBOX.taken")) as resp:
        assert resp.status == 404
        assert "must never run" not in await resp.text()


@pytest.mark.parametrize("target", ["/bad%20subject", "/funcs.*", "/funcs.>", "/funcs..hello", "/.funcs"])
async def test_invalid_subject_in_the_path_is_400(gateway: Gateway, client: aiohttp.ClientSession, target: str) -> None:
    async with client.get(URL(gateway.at(target), encoded=True)) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"] == PLAIN_UTF8
        assert (await resp.text()).startswith("Error: invalid subject")


async def test_body_over_the_max_payload_is_413(start_gateway: GatewayFactory) -> None:
    async with start_gateway(max_payload_bytes=1000) as gw, aiohttp.ClientSession() as client:
        async with client.post(gw.at("/funcs.hello"), data=b"x" * 1000) as resp:
            assert resp.status == 200
        async with client.post(gw.at("/funcs.hello"), data=b"x" * 1001) as resp:
            assert resp.status == 413
            assert resp.headers["Content-Type"] == PLAIN_UTF8
            assert await resp.text() == "Error: request body larger than 1000 bytes"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 400

        async with client.post(gw.at("/funcs.hello"), data=chunks()) as resp:
            assert resp.status == 413


async def test_default_max_payload_is_one_mib(gateway: Gateway, client: aiohttp.ClientSession) -> None:
    async with client.post(gateway.at("/funcs.hello"), data=io.BytesIO(b"x" * (2 * 1024 * 1024))) as resp:
        assert resp.status == 413
    async with client.post(gateway.at("/funcs.hello"), data=io.BytesIO(b"x" * (1024 * 1024))) as resp:
        assert resp.status == 200


# --- Timeouts ------------------------------------------------------------------------------------


async def test_waiting_past_the_timeout_is_503_and_cancels_the_script(
    gateway: Gateway, client: aiohttp.ClientSession, nc: nats.NATS, slow_responder: asyncio.Event
) -> None:
    done = await nc.subscribe("test.done")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.get(gateway.at("/funcs.slow?_timeout=300ms")) as resp:
        assert resp.status == 503
        assert resp.headers["Content-Type"] == PLAIN_UTF8
        assert await resp.text() == "context deadline exceeded"
    assert loop.time() - started < SLOW_REPLY_DELAY_S
    assert slow_responder.is_set()
    # Nobody waits for the result any more: the script is stopped before its reply comes back.
    with pytest.raises(NatsTimeout):
        await done.next_msg(timeout=SLOW_REPLY_DELAY_S + 1)


async def test_negative_timeout_answers_at_once(
    gateway: Gateway, client: aiohttp.ClientSession, slow_responder: asyncio.Event
) -> None:
    async with client.get(gateway.at("/funcs.slow?_timeout=-1s")) as resp:
        assert resp.status == 503
        assert await resp.text() == "context deadline exceeded"


@pytest.mark.parametrize("timeout", ["bogus", "", "5"])
async def test_invalid_timeout_means_the_default(
    gateway: Gateway, client: aiohttp.ClientSession, slow_responder: asyncio.Event, timeout: str
) -> None:
    async with client.get(gateway.at(f"/funcs.slow?_timeout={timeout}")) as resp:
        assert resp.status == 200
        assert payloads(await resp.read()) == [b"done"]


# --- Lifecycle -----------------------------------------------------------------------------------


async def test_logs_the_start_and_every_request(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="msgscript")
    async with start_gateway() as gw, aiohttp.ClientSession() as client:
        assert f"Starting HTTP server on port {gw.port}" in caplog.messages
        async with client.post(gw.at("/funcs.hello"), data=b"John") as resp:
            assert resp.status == 200
    assert any(m.startswith("Received HTTP request subject=funcs.hello") for m in caplog.messages)


async def test_port_in_use_fails_the_start(make_daemon: DaemonFactory) -> None:
    from msgscript.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="failed to start the HTTP server"):
            async with make_daemon(http_port=port, http_host="127.0.0.1"):
                pass


async def test_shutdown_lets_in_flight_requests_finish(
    start_gateway: GatewayFactory, client: aiohttp.ClientSession, slow_responder: asyncio.Event
) -> None:
    async def fetch(url: str) -> tuple[int, bytes]:
        async with client.get(url) as resp:
            return resp.status, await resp.read()

    async with start_gateway() as gw:
        request = asyncio.create_task(fetch(gw.at("/funcs.slow")))
        await asyncio.wait_for(slow_responder.wait(), 5)
    # The daemon has stopped; the request that was running got its answer.
    status, body = await request
    assert status == 200
    assert payloads(body) == [b"done"]
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(gw.at("/funcs.hello"))
