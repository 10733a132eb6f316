"""The `http` Lua module against a real aiohttp server: gluahttp's API, Go's redirects and error texts."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web

from msgscript._gohttp import canonical_header_key
from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.executors.lua import LuaExecutor
from msgscript.lua.modules import builtin_modules
from msgscript.lua.modules.http import BATCH_CONCURRENCY
from msgscript.lua.modules.http import module as http_module
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message
from tests.servers import free_port, serve_app


async def _echo(request: web.Request) -> web.Response:
    """What the server received, as JSON."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
    )


async def _redirect(request: web.Request) -> web.Response:
    left = int(request.match_info["n"])
    target = "/echo" if left == 0 else f"/redirect/{left - 1}"
    raise web.HTTPFound(target)


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    location = request.query.get("to")
    headers = {"Location": location} if location else {}
    return web.Response(status=code, text="", headers=headers)


async def _cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "session=abc123; Path=/; HttpOnly")
    response.headers.add("Set-Cookie", 'theme="dark"')
    response.headers.add("X-Multi", "first")
    response.headers.add("X-Multi", "second")
    response.headers["x-lower-case"] = "yes"
    return response


async def _gzip(request: web.Request) -> web.Response:
    data = gzip.compress(b"squeezed " * 100)
    return web.Response(body=data, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def _cross_host(request: web.Request) -> web.Response:
    """Redirect from 127.0.0.1 to localhost: another host as far as credentials are concerned."""
    port = request.url.port
    raise web.HTTPFound(f"http://localhost:{port}/echo")


class _Slow:
    """Answers only when the test ends (it holds requests until their timeout)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text="late")


class _Barrier:
    """Answers only once `parties` requests are waiting: proves a batch's requests are in flight together."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        try:
            await asyncio.wait_for(self.event.wait(), 5)
        except TimeoutError:
            return web.Response(status=504, text="alone")
        return web.Response(text=request.match_info["name"])


class _Crowd:
    """Counts how many requests are in progress at once (each stays a moment)."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.now -= 1
        return web.Response(text="here")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1; yields its base URL."""
    app = web.Application()
    barrier = _Barrier(3)
    slow = _Slow()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/redirect/{n}", _redirect)
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_get("/cookies", _cookies)
    app.router.add_get("/slow", slow.handle)
    app.router.add_get("/gzip", _gzip)
    app.router.add_get("/cross-host", _cross_host)
    app.router.add_get("/barrier/{name}", barrier.handle)
    async with serve_app(app) as url:
        try:
            yield url
        finally:
            slow.release.set()


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    async with lua_executor(plugins=False) as ex:
        yield ex


async def lua(ex: Executor, server: str, body: str, timeout_s: float = 10.0) -> Any:
    """Run body with `http` and `json` required and BASE set to the server's URL; decodes the JSON it returns."""
    script = f'local http = require("http")\nlocal json = require("json")\nlocal BASE = "{server}"\n{body}'
    payload = await on_message(ex, script, timeout_s=timeout_s)
    assert payload is not None
    return json.loads(payload)


RESPONSE = "{status_code = r.status_code, body = r.body, body_size = r.body_size, headers = r.headers, url = r.url}"


async def test_get_returns_the_response(executor: Executor, server: str) -> None:
    body = f'local r = http.get(BASE .. "/echo?x=1") return json.encode({RESPONSE})'
    result = await lua(executor, server, body)
    assert result["status_code"] == 200
    assert json.loads(result["body"])["path"] == "/echo?x=1"
    assert result["body_size"] == len(result["body"])
    assert result["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert result["url"] == f"{server}/echo?x=1"


async def test_response_headers_use_go_names_and_first_values(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/cookies") return json.encode(r.headers)'
    headers = await lua(executor, server, body)
    assert headers["X-Multi"] == "first"
    assert headers["X-Lower-Case"] == "yes"
    assert "x-lower-case" not in headers


def test_canonical_header_key() -> None:
    assert canonical_header_key("content-type") == "Content-Type"
    assert canonical_header_key("X-FOO-bar") == "X-Foo-Bar"
    assert canonical_header_key("bad key") == "bad key"


async def test_response_cookies(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/cookies") return json.encode(r.cookies)'
    assert await lua(executor, server, body) == {"session": "abc123", "theme": "dark"}


async def test_cookies_are_not_remembered_between_requests(executor: Executor, server: str) -> None:
    body = """
        http.get(BASE .. "/cookies")
        local r = http.get(BASE .. "/echo")
        return r.body
    """
    echoed = await lua(executor, server, body)
    assert "Cookie" not in echoed["headers"]


async def test_request_cookies_option(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/echo", {cookies = {a = "1", b = 2}}) return r.body'
    echoed = await lua(executor, server, body)
    assert sorted(echoed["headers"]["Cookie"].split("; ")) == ["a=1", "b=2"]


async def test_query_option_replaces_the_query(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/echo?old=1", {query = "page=2&q=a%20b"}) return r.body'
    assert (await lua(executor, server, body))["path"] == "/echo?page=2&q=a%20b"


async def test_headers_option(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/echo", {headers = {["x-token"] = "t", ["X-Count"] = 3}}) return r.body'
    headers = (await lua(executor, server, body))["headers"]
    assert headers["X-Token"] == "t"
    assert headers["X-Count"] == "3"


async def test_form_sets_the_content_type(executor: Executor, server: str) -> None:
    body = 'local r = http.post(BASE .. "/echo", {form = "a=1&b=2"}) return r.body'
    echoed = await lua(executor, server, body)
    assert echoed["method"] == "POST"
    assert echoed["body"] == "a=1&b=2"
    assert echoed["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_body_wins_over_form_and_gets_no_content_type(executor: Executor, server: str) -> None:
    body = 'local r = http.put(BASE .. "/echo", {body = "raw", form = "a=1"}) return r.body'
    echoed = await lua(executor, server, body)
    assert echoed["method"] == "PUT"
    assert echoed["body"] == "raw"
    assert "Content-Type" not in echoed["headers"]


async def test_headers_override_the_form_content_type(executor: Executor, server: str) -> None:
    body = """local r = http.post(BASE .. "/echo", {form = "{}", headers = {["Content-Type"] = "application/json"}})
        return r.body"""
    assert (await lua(executor, server, body))["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize("verb", ["get", "post", "put", "patch", "delete"])
async def test_each_verb_sends_its_method(executor: Executor, server: str, verb: str) -> None:
    body = f'local r = http.{verb}(BASE .. "/echo") return r.body'
    assert (await lua(executor, server, body))["method"] == verb.upper()


async def test_head_has_an_empty_body(executor: Executor, server: str) -> None:
    body = 'local r = http.head(BASE .. "/echo") return json.encode({r.status_code, r.body, r.body_size})'
    assert await lua(executor, server, body) == [200, "", 0]


async def test_request_upper_cases_the_method(executor: Executor, server: str) -> None:
    body = 'local r = http.request("options", BASE .. "/echo") return r.body'
    assert (await lua(executor, server, body))["method"] == "OPTIONS"


async def test_request_with_an_invalid_method(executor: Executor, server: str) -> None:
    body = 'local r, err = http.request("BAD METHOD", BASE .. "/echo") return json.encode({tostring(r), err})'
    assert await lua(executor, server, body) == ["nil", 'net/http: invalid method "BAD METHOD"']


async def test_redirects_are_followed(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/redirect/3") return json.encode({r.status_code, r.url})'
    assert await lua(executor, server, body) == [200, f"{server}/echo"]


async def test_nine_redirects_are_followed_the_tenth_is_an_error(executor: Executor, server: str) -> None:
    body = """
        local ok = http.get(BASE .. "/redirect/8")
        local r, err = http.get(BASE .. "/redirect/9")
        return json.encode({ok.status_code, tostring(r), err})
    """
    assert await lua(executor, server, body) == [200, "nil", 'Get "/echo": stopped after 10 redirects']


async def test_see_other_turns_a_post_into_a_get(executor: Executor, server: str) -> None:
    body = 'local r = http.post(BASE .. "/status/303?to=/echo", {body = "data"}) return r.body'
    echoed = await lua(executor, server, body)
    assert echoed["method"] == "GET"
    assert echoed["body"] == ""


async def test_temporary_redirect_keeps_method_and_body(executor: Executor, server: str) -> None:
    body = 'local r = http.post(BASE .. "/status/307?to=/echo", {body = "data"}) return r.body'
    echoed = await lua(executor, server, body)
    assert echoed["method"] == "POST"
    assert echoed["body"] == "data"
    assert echoed["headers"]["Referer"] == f"{server}/status/307?to=/echo"


async def test_redirect_without_location_is_the_response(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/status/302") return json.encode({r.status_code, r.url})'
    assert await lua(executor, server, body) == [302, f"{server}/status/302"]


async def test_error_statuses_are_responses(executor: Executor, server: str) -> None:
    body = 'local r = http.delete(BASE .. "/status/404") return json.encode({r.status_code})'
    assert await lua(executor, server, body) == [404]


async def test_basic_auth(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/echo", {auth = {user = "john", pass = "s3cret"}}) return r.body'
    headers = (await lua(executor, server, body))["headers"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"john:s3cret").decode()


async def test_basic_auth_needs_user_and_pass(executor: Executor, server: str) -> None:
    body = 'local r, err = http.get(BASE .. "/echo", {auth = {user = "john"}}) return json.encode({tostring(r), err})'
    assert await lua(executor, server, body) == ["nil", "auth table must contain no nil user and pass fields"]


async def test_credentials_do_not_follow_a_redirect_to_another_host(executor: Executor, server: str) -> None:
    body = """local r = http.get(BASE .. "/cross-host", {auth = {user = "u", pass = "p"}, headers = {["X-Keep"] = "k"}})
        return r.body"""
    headers = (await lua(executor, server, body))["headers"]
    assert headers["X-Keep"] == "k"
    assert "Authorization" not in headers


async def test_gzip_bodies_are_decompressed(executor: Executor, server: str) -> None:
    body = f'local r = http.get(BASE .. "/gzip") return json.encode({RESPONSE})'
    result = await lua(executor, server, body)
    assert result["body"] == "squeezed " * 100
    assert result["body_size"] == 900
    assert "Content-Encoding" not in result["headers"]


async def test_timeout_in_seconds(executor: Executor, server: str) -> None:
    body = 'local r, err = http.get(BASE .. "/slow", {timeout = 0.2}) return json.encode({tostring(r), err})'
    assert await lua(executor, server, body) == ["nil", f'Get "{server}/slow": context deadline exceeded']


async def test_timeout_as_go_duration(executor: Executor, server: str) -> None:
    body = 'local r, err = http.get(BASE .. "/slow", {timeout = "200ms"}) return json.encode({tostring(r), err})'
    assert await lua(executor, server, body) == ["nil", f'Get "{server}/slow": context deadline exceeded']


async def test_invalid_timeout_duration(executor: Executor, server: str) -> None:
    body = 'local r, err = http.get(BASE .. "/echo", {timeout = "soon"}) return json.encode({tostring(r), err})'
    assert await lua(executor, server, body) == ["nil", 'time: invalid duration "soon"']


async def test_the_script_deadline_bounds_a_request(executor: Executor, server: str) -> None:
    with pytest.raises(ScriptTimeout):
        await lua(executor, server, 'local r = http.get(BASE .. "/slow") return "{}"', timeout_s=0.5)


async def test_connection_refused(executor: Executor, server: str) -> None:
    port = free_port()
    body = f'local r, err = http.get("http://127.0.0.1:{port}/x") return json.encode({{tostring(r), err}})'
    assert await lua(executor, server, body) == [
        "nil",
        f'Get "http://127.0.0.1:{port}/x": dial tcp 127.0.0.1:{port}: connect: connection refused',
    ]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/", 'Get "ftp://example.com/": unsupported protocol scheme "ftp"'),
        ("example.com", 'Get "example.com": unsupported protocol scheme ""'),
        ("", 'Get "": unsupported protocol scheme ""'),
        ("::nope", 'parse "::nope": missing protocol scheme'),
        ("http:///path", 'Get "http:///path": http: no Host in request URL'),
    ],
)
async def test_unusable_urls(executor: Executor, server: str, url: str, error: str) -> None:
    body = f'local r, err = http.get("{url}") return json.encode({{tostring(r), err}})'
    assert await lua(executor, server, body) == ["nil", error]


async def test_batch_runs_concurrently_and_reports_failures_by_index(executor: Executor, server: str) -> None:
    port = free_port()
    body = f"""
        local responses, errors = http.request_batch({{
            {{"get", BASE .. "/barrier/a"}},
            {{"GET", BASE .. "/barrier/b", {{timeout = 8}}}},
            {{"get", "http://127.0.0.1:{port}/"}},
            "not a table",
            {{"get", BASE .. "/barrier/c"}},
        }})
        return json.encode({{
            bodies = {{responses[1].body, responses[2].body, responses[5].body}},
            holes = {{tostring(responses[3]), tostring(responses[4]), tostring(errors[1]), tostring(errors[5])}},
            errors = {{errors[3], errors[4]}},
        }})
    """
    result = await lua(executor, server, body)
    # The barrier answers only when all three of its requests are in flight at once.
    assert result["bodies"] == ["a", "b", "c"]
    assert result["holes"] == ["nil", "nil", "nil", "nil"]
    assert result["errors"] == [
        f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connect: connection refused',
        "Request must be a table",
    ]


async def test_batch_without_failures_returns_one_value(executor: Executor, server: str) -> None:
    body = """
        local responses, errors = http.request_batch({{"post", BASE .. "/echo", {body = "x"}}})
        return json.encode({responses[1].status_code, tostring(errors)})
    """
    assert await lua(executor, server, body) == [200, "nil"]


async def test_batch_sends_at_most_sixteen_requests_at_once(executor: Executor) -> None:
    # The connection pool is shared with every other execution: one batch must not take all of it.
    crowd = _Crowd()
    app = web.Application()
    app.router.add_get("/crowd", crowd.handle)
    body = """
    local requests = {}
    for i = 1, 40 do requests[i] = {"GET", BASE .. "/crowd"} end
    local responses, errors = http.request_batch(requests)
    return json.encode({#responses, errors == nil, responses[40].body})
    """
    async with serve_app(app) as url:
        assert await lua(executor, url, body) == [40, True, "here"]
    assert crowd.most == BATCH_CONCURRENCY == 16


async def test_options_are_read_without_metamethods(executor: Executor, server: str) -> None:
    # gluahttp reads options with RawGet; a metamethod of the script's would run with the memory cap lifted.
    body = """
    local trap = {__index = function() error("called") end}
    local opts = setmetatable({headers = setmetatable({["X-Raw"] = "yes"}, trap)}, trap)
    local r = assert(http.get(BASE .. "/echo", opts))
    local batch = http.request_batch(setmetatable({setmetatable({"GET", BASE .. "/echo"}, trap)}, trap))
    return json.encode({json.decode(r.body).headers["X-Raw"], batch[1].status_code})
    """
    assert await lua(executor, server, body) == ["yes", 200]


async def test_batch_needs_a_table(executor: Executor, server: str) -> None:
    body = 'local ok, err = pcall(http.request_batch, "x") return json.encode({ok, err})'
    assert await lua(executor, server, body) == [
        False,
        "bad argument #1 to 'request_batch' (table expected, got string)",
    ]


async def test_works_without_a_shared_session(server: str) -> None:
    async with LuaExecutor(modules=builtin_modules(), nats=None, env={}, max_memory_bytes=16 << 20, threads=1) as ex:
        assert (await lua(ex, server, 'return http.get(BASE .. "/echo").body'))["method"] == "GET"


async def test_empty_credentials_are_allowed(executor: Executor, server: str) -> None:
    body = 'local r = http.get(BASE .. "/echo", {auth = {user = "", pass = ""}}) return r.body'
    headers = (await lua(executor, server, body))["headers"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b":").decode()


def test_http_scripts_run_on_worker_threads() -> None:
    assert not getattr(http_module, "inline_safe", False)


async def test_http_through_the_daemon(make_daemon: DaemonFactory, nc: nats.NATS, server: str, tmp_path: Path) -> None:
    scripts = tmp_path / "http-scripts"
    scripts.mkdir()
    (scripts / "fetch.lua").write_text(
        f"""--* subject: funcs.fetch
--* name: fetch
local http = require("http")
function OnMessage(subject, payload)
    local r, err = http.post("{server}/echo", {{body = payload}})
    if r == nil then return err end
    return r.status_code .. " " .. r.body
end
"""
    )
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR):
        msg = await nc.request("funcs.fetch", b"ping", timeout=10)
    (result,) = Reply.from_json(msg.data).results or ()
    assert result.error == ""
    assert result.payload is not None
    status, _, text = result.payload.partition(b" ")
    assert status == b"200"
    assert json.loads(text)["body"] == "ping"
