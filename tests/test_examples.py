"""Every script in examples/ runs through a daemon started on the examples directory, with the bundled
plugins and libraries (as `-script examples -plugin plugins -library libraries`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from aiohttp import web

from msgscript.message import Message, Reply, Result
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR
from tests.servers import free_port, serve_app

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def examples_daemon(make_daemon: DaemonFactory) -> AsyncIterator[str]:
    """Start the daemon on the examples; yields the base URL of its HTTP gateway."""
    port = free_port()
    async with make_daemon(
        script_dir=str(ROOT / "examples"),
        library_dir=str(ROOT / "libraries"),
        plugin_dir=PLUGIN_DIR,
        http_host="127.0.0.1",
        http_port=port,
    ):
        yield f"http://127.0.0.1:{port}"


async def call(nc: nats.NATS, subject: str, data: bytes) -> tuple[bytes | None, str]:
    reply = Reply.from_json((await nc.request(subject, data, timeout=10)).data)
    (result,) = reply.results or ()
    return result.payload, result.error


async def call_page(nc: nats.NATS, subject: str, method: str, url: str, body: bytes = b"") -> Result:
    """Call an HTML-mode script over NATS with a Message envelope, as the Go HTTP gateway does."""
    message = Message(subject=subject, payload=body, method=method, url=url)
    reply = Reply.from_json((await nc.request(subject, message.to_json(), timeout=10)).data)
    (result,) = reply.results or ()
    return result


async def test_every_example_is_covered() -> None:
    tested = {
        "hello",
        "fail",
        "io",
        "nats_publish",
        "greet_json",
        "deadline",
        "with_library",
        "hello_plugin",
        "http_get",
        "website",
        "webapp",
    }
    assert {p.stem for p in (ROOT / "examples").glob("*.lua")} == tested


async def test_every_example_says_what_it_shows() -> None:
    for path in (ROOT / "examples").glob("*.lua"):
        comments = [line for line in path.read_text().splitlines() if line.startswith("-- ")]
        assert comments, f"{path.name} has no comment saying what it shows"


async def test_hello(examples_daemon: str, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.hello", b"John") == (b"Processed subject: funcs.hello with payload: John", "")


async def test_fail(examples_daemon: str, nc: nats.NATS) -> None:
    payload, error = await call(nc, "funcs.fail", b"")
    assert payload is None
    assert error.startswith("failed to call OnMessage function: ")


async def test_io_writes_into_a_scratch_directory(examples_daemon: str, nc: nats.NATS) -> None:
    before = set(Path.cwd().iterdir())
    assert await call(nc, "funcs.localio", b"data") == (b"written to file lua_test.out", "")
    assert set(Path.cwd().iterdir()) == before
    assert not (Path.cwd() / "lua_test.out").exists()


async def test_nats_publish(examples_daemon: str, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.pushover")
    assert await call(nc, "funcs.nats_publish", b"") == (None, "")
    assert (await sink.next_msg(timeout=5)).data == b'{"message":"boo-YAH","title":"booyah"}'


async def test_greet_json(examples_daemon: str, nc: nats.NATS) -> None:
    payload, error = await call(nc, "funcs.greet", b'{"name": "Ada"}')
    assert error == ""
    assert json.loads(payload or b"") == {"greeting": "Hello, Ada!", "length": 3}
    payload, _ = await call(nc, "funcs.greet", b"not json")
    assert "payload is not JSON" in json.loads(payload or b"")["error"]


async def test_deadline(examples_daemon: str, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.deadline", b"quick") == (b"finished in time", "")
    assert await call(nc, "funcs.deadline", b"loop") == (None, "script timed out after 1s")


async def test_with_library(examples_daemon: str, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.library", b"Grace") == (b"Hello, Grace!", "")


async def test_hello_plugin(examples_daemon: str, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.hello_plugin", b"") == (b"Hello from a Go plugin!", "")


@pytest.fixture
async def http_target() -> AsyncIterator[str]:
    """A real HTTP server for the http_get example; yields its base URL."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=201, text="pong " + request.query.get("n", ""))

    app = web.Application()
    app.router.add_get("/ping", ping)
    async with serve_app(app) as url:
        yield url


async def test_http_get(examples_daemon: str, nc: nats.NATS, http_target: str) -> None:
    request = json.dumps({"url": http_target + "/ping?n=1"}).encode()
    assert await call(nc, "funcs.http_get", request) == (b"HTTP 201: pong 1", "")
    payload, error = await call(nc, "funcs.http_get", json.dumps({"url": http_target + "/missing"}).encode())
    assert (payload or b"").startswith(b"HTTP 404: ")
    assert error == ""


async def test_http_get_reports_errors(examples_daemon: str, nc: nats.NATS) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"
    payload, error = await call(nc, "funcs.http_get", json.dumps({"url": closed}).encode())
    assert (payload or b"").startswith(b"error: ")
    assert error == ""
    payload, _ = await call(nc, "funcs.http_get", b"not json")
    assert (payload or b"").startswith(b"error: ")


async def test_website_over_nats(examples_daemon: str, nc: nats.NATS) -> None:
    result = await call_page(nc, "http.website", "GET", "/foobar")
    assert (result.error, result.is_html, result.http_code) == ("", True, 200)
    assert b"<h1>foobar yo</h1>" in (result.payload or b"")
    result = await call_page(nc, "http.website", "GET", "/nothing")
    assert result.http_code == 404


async def test_website_over_http(examples_daemon: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(examples_daemon + "/http.website/foobar") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html"
            assert "<h1>foobar yo</h1>" in await resp.text()
        async with client.get(examples_daemon + "/http.website/foobar?x=1") as resp:
            assert resp.status == 200
        async with client.get(examples_daemon + "/http.website/elsewhere") as resp:
            assert resp.status == 404


async def test_webapp_over_nats(examples_daemon: str, nc: nats.NATS) -> None:
    # The message of the example's header comment.
    message = b'{"subject": "http.webapp", "method": "GET", "url": "/hello/Ada", "payload": ""}'
    (result,) = Reply.from_json((await nc.request("http.webapp", message, timeout=10)).data).results or ()
    assert (result.error, result.http_code) == ("", 200)
    assert b"<h1>Hello, Ada!</h1>" in (result.payload or b"")
    result = await call_page(nc, "http.webapp", "POST", "/greet", b"name=Grace+Hopper")
    assert (result.http_code, result.http_headers) == (302, {"Location": "/http.webapp/hello/Grace%20Hopper"})
    result = await call_page(nc, "http.webapp", "GET", "/api/hello/Ada")
    assert (result.http_code, result.http_headers) == (200, {"Content-Type": "application/json"})
    assert json.loads(result.payload or b"") == {"greeting": "Hello, Ada!", "name": "Ada"}


async def test_webapp_over_http(examples_daemon: str) -> None:
    app = examples_daemon + "/http.webapp"
    async with aiohttp.ClientSession() as client:
        async with client.get(app + "/") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html"
            home = await resp.text()
        assert '<form method="post" action="/http.webapp/greet">' in home
        assert '<nav><a href="/http.webapp/">Home</a>' in home
        assert "<footer>msgscript webapp example</footer>" in home

        # The form posts, the app redirects to the greeting page, which escapes what it shows.
        async with client.post(app + "/greet", data={"name": "Ada <Lovelace>"}) as resp:
            assert resp.status == 200
            assert str(resp.url).endswith("/http.webapp/hello/Ada%20%3CLovelace%3E")
            assert "<h1>Hello, Ada &lt;Lovelace&gt;!</h1>" in await resp.text()
        async with client.post(app + "/greet", data={"name": ""}, allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, "/http.webapp/")

        async with client.get(app + "/api/hello/Bob") as resp:
            assert (resp.status, resp.headers["Content-Type"]) == (200, "application/json")
            assert await resp.json() == {"greeting": "Hello, Bob!", "name": "Bob"}
        async with client.get(app + "/old", allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, "/http.webapp/")
        async with client.get(app + "/no/such/page") as resp:
            assert (resp.status, resp.headers["Content-Type"]) == (404, "application/json")
            assert await resp.text() == '{"error":"not found"}'
