"""libraries/web.lua, the router library for HTML-mode scripts, run through the daemon's Lua executor."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest

from msgscript import config
from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.message import Message, Reply, Result
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message, run_lua
from tests.processes import command_env, daemon_running, start_daemon
from tests.servers import NatsServer, free_port

ROOT = Path(__file__).parent.parent
WEB = (ROOT / "libraries" / "web.lua").read_text()

# Handlers that show what they were given, as JSON.
APP = """
local app = Router.new()
local function show(req) return "", { queries = req:query(), paths = req:path(), form = req.form } end
app:get("/", show)
app:get("/users/<id>", function(req) return "", { user = req:path("id"), tab = req:query("tab") } end)
app:get("/users/me", function(req) return "", { me = true } end)
app:get("/files/<dir>/<name>", show)
app:get("/static", show)
app:post("/submit", show)
app:put("/put", show)
app:patch("/patch", show)
app:delete("/delete", show)
app:options("/options", show)
app:head("/head", show)
app:get("/created", function(req) return "", { ok = true }, 201 end)
app:get("/empty", function(req) end)
app:get("/moved", function(req) return "<p>ignored</p>", {}, 200, { redirect = "/elsewhere" } end)
"""


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    async with lua_executor() as ex:
        yield ex


async def request(executor: Executor, method: str, url: str, body: str = "", app: str = APP) -> Result:
    """Call the script (web.lua, then `app`) as the daemon does for an HTML-mode request."""
    result = await run_lua(executor, app, body, html=True, method=method, url=url, libraries=(WEB,))
    assert result.error == ""
    return result


async def shown(executor: Executor, method: str, url: str, body: str = "") -> object:
    result = await request(executor, method, url, body)
    assert result.http_code == 200
    assert result.http_headers == {"Content-Type": "application/json"}
    return json.loads(result.payload or b"")


# --- string:split --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delim", "pieces"),
    [
        ("a/b/c", "/", ["a", "b", "c"]),
        ("/a/b", "/", ["a", "b"]),  # a delimiter at the start gives no leading empty piece
        ("a/b/", "/", ["a", "b"]),  # an empty remainder is dropped
        ("a//b", "/", ["a", "", "b"]),  # empty pieces in between are kept
        ("//a", "/", ["", "a"]),
        ("", "/", []),
        ("abc", "/", ["abc"]),
        ("a.b.c", ".", ["a", "b", "c"]),  # plain text, not a pattern
        ("k::v::", "::", ["k", "v"]),
    ],
)
async def test_string_split(executor: Executor, text: str, delim: str, pieces: list[str]) -> None:
    body = "local parts = (payload):split(DELIM)\nreturn #parts .. '|' .. table.concat(parts, ',')"
    body = body.replace("DELIM", json.dumps(delim))
    expected = f"{len(pieces)}|{','.join(pieces)}".encode()
    assert await on_message(executor, body, text, libraries=(WEB,)) == expected


# --- routing -------------------------------------------------------------------------------------


async def test_router_new_defines_a_global_per_verb(executor: Executor) -> None:
    body = """local names = {}
for _, verb in ipairs({"GET", "POST", "PUT", "PATCH", "HEAD", "OPTIONS", "DELETE"}) do
    names[#names + 1] = verb .. "=" .. type(_G[verb])
end
local before = table.concat(names, ",")
Router.new()
names = {}
for _, verb in ipairs({"GET", "POST", "PUT", "PATCH", "HEAD", "OPTIONS", "DELETE"}) do
    names[#names + 1] = type(_G[verb])
end
return before .. "|" .. table.concat(names, ",")"""
    payload = await on_message(executor, body, libraries=(WEB,))
    before, after = (payload or b"").split(b"|")
    assert b"function" not in before
    assert after == b",".join([b"function"] * 7)


@pytest.mark.parametrize("verb", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_each_verb_reaches_its_routes(executor: Executor, verb: str) -> None:
    path = "/submit" if verb == "POST" else "/" + verb.lower()
    assert await shown(executor, verb, path, "a=1") == {"queries": [], "paths": [], "form": {"a": "1"}}
    result = await request(executor, verb, "/")
    assert (result.http_code, result.payload) == (404, b'{"error":"not found"}')


async def test_get_parses_the_query_without_decoding(executor: Executor) -> None:
    doc = await shown(executor, "GET", "/?a=1&b=x%20y+z&c&d=1=2&e=")
    assert doc == {"queries": {"a": "1", "b": "x%20y+z", "e": ""}, "paths": [], "form": []}


async def test_other_verbs_keep_the_query_in_the_path(executor: Executor) -> None:
    result = await request(executor, "POST", "/submit?a=1")
    assert (result.http_code, result.payload) == (404, b'{"error":"not found"}')


async def test_the_body_is_parsed_as_a_form(executor: Executor) -> None:
    doc = await shown(executor, "POST", "/submit", "name=Ada+L&x=%41&bad&two=1=2&&empty=")
    assert doc == {"queries": [], "paths": [], "form": {"name": "Ada+L", "x": "%41", "empty": ""}}
    # GET bodies are forms too.
    assert await shown(executor, "GET", "/?q=1", "f=2") == {"queries": {"q": "1"}, "paths": [], "form": {"f": "2"}}


async def test_an_empty_url_is_the_root(executor: Executor) -> None:
    assert await shown(executor, "GET", "") == {"queries": [], "paths": [], "form": []}
    assert await shown(executor, "GET", "?a=1") == {"queries": {"a": "1"}, "paths": [], "form": []}


async def test_an_exact_path_wins_over_a_pattern(executor: Executor) -> None:
    assert await shown(executor, "GET", "/users/me") == {"me": True}
    assert await shown(executor, "GET", "/users/42?tab=posts") == {"user": "42", "tab": "posts"}


async def test_patterns_capture_params_and_match_a_prefix(executor: Executor) -> None:
    doc = await shown(executor, "GET", "/files/docs/a.txt/extra/parts?x=1")
    assert doc == {"queries": {"x": "1"}, "paths": {"dir": "docs", "name": "a.txt"}, "form": []}


@pytest.mark.parametrize("url", ["/files/docs", "/nope", "/users", "/static/more", "/other/42"])
async def test_unmatched_paths_are_404(executor: Executor, url: str) -> None:
    # Too short for the pattern, unknown, or only a prefix of a route without params.
    result = await request(executor, "GET", url)
    assert result.http_code == 404
    assert result.payload == b'{"error":"not found"}'
    assert result.http_headers == {"Content-Type": "application/json"}


async def test_request_accessors(executor: Executor) -> None:
    app = """local r = Request.new({a = "1"}, {id = "7"}, {f = "x"})
function OnMessage()
    return r:query("a") .. r:path("id") .. r.form.f .. type(r:query()) .. type(r:path()) .. tostring(r:query("zz"))
end"""
    result = await run_lua(executor, app, libraries=(WEB,))
    assert result.payload == b"17xtabletablenil"


# --- responses -----------------------------------------------------------------------------------


async def test_json_responses(executor: Executor) -> None:
    result = await request(executor, "GET", "/created")
    assert (result.http_code, result.payload) == (201, b'{"ok":true}')
    assert result.http_headers == {"Content-Type": "application/json"}
    # No template and no data: an empty table, encoded as [].
    result = await request(executor, "GET", "/empty")
    assert (result.http_code, result.payload) == (200, b"[]")


async def test_redirect(executor: Executor) -> None:
    result = await request(executor, "GET", "/moved")
    assert (result.http_code, result.payload, result.http_headers) == (302, b"", {"Location": "/elsewhere"})


TEMPLATES = """
local app = Router.new()
app:get("/page", function(req)
    return "<p>Hi {{ name }}</p>", { name = req:query("name") }, 200, { header = "<b>head</b>", footer = "<i>foot</i>" }
end)
app:get("/bare", function(req)
    return "<p>{{ n }}</p>", { n = 5 }, 203, { no_template = true, headers = { ["Content-Type"] = "text/plain" } }
end)
app:get("/plain", function(req) return "<p>plain</p>" end)
"""


async def test_templates_render_inside_the_default_layout(executor: Executor) -> None:
    result = await request(executor, "GET", "/page?name=<Ada>", app=TEMPLATES)
    assert result.http_code == 200
    assert not result.http_headers  # the gateway then says text/html
    page = (result.payload or b"").decode()
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "<p>Hi &lt;Ada&gt;</p>" in page
    assert page.index("<b>head</b>") < page.index("<p>Hi") < page.index("<i>foot</i>") < page.index("</body>")
    plain = await request(executor, "GET", "/plain", app=TEMPLATES)
    assert "<body>" in (plain.payload or b"").decode()
    assert "<p>plain</p>" in (plain.payload or b"").decode()


async def test_no_template_skips_the_layout_and_headers_are_sent(executor: Executor) -> None:
    result = await request(executor, "GET", "/bare", app=TEMPLATES)
    assert (result.http_code, result.payload) == (203, b"<p>5</p>")
    assert result.http_headers == {"Content-Type": "text/plain"}


async def test_a_router_with_its_own_layout(executor: Executor) -> None:
    # The last Router.new owns the verb globals.
    app = (
        TEMPLATES
        + """
local custom = Router.new("<main>{{& body }}</main>")
custom:get("/custom", function(req) return "{{ x }}", { x = "y" } end)
"""
    )
    result = await request(executor, "GET", "/custom", app=app)
    assert (result.http_code, result.payload) == (200, b"<main>y</main>")


# --- through a daemon ----------------------------------------------------------------------------


async def test_a_web_app_through_a_daemon(
    make_daemon: DaemonFactory, fixture_dirs: tuple[Path, Path], nc: nats.NATS
) -> None:
    scripts, _ = fixture_dirs
    (scripts / "api.lua").write_text(
        """--* subject: web.api
--* name: api
--* html: true
--* require: web
local app = Router.new()
app:get("/items/<id>", function(req) return "", { id = req:path("id"), sort = req:query("sort") } end)
app:post("/items", function(req) return nil, nil, nil, { redirect = "/items/" .. req.form.id } end)
"""
    )

    async def call(method: str, url: str, body: bytes = b"") -> Result:
        message = Message(subject="web.api", payload=body, method=method, url=url)
        reply = Reply.from_json((await nc.request("web.api", message.to_json(), timeout=10)).data)
        (result,) = reply.results or ()
        return result

    async with make_daemon(plugin_dir=PLUGIN_DIR, library_dir=str(ROOT / "libraries")):
        got = await call("GET", "/items/9?sort=asc")
        assert (got.http_code, got.payload, got.error) == (200, b'{"id":"9","sort":"asc"}', "")
        got = await call("POST", "/items", b"id=3")
        assert (got.http_code, got.http_headers) == (302, {"Location": "/items/3"})
        got = await call("GET", "/nothing")
        assert (got.http_code, got.payload) == (404, b'{"error":"not found"}')


# --- the error convention ------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}

ERRORS = """
local app = Router.new()
app:get("/need", function(req) return nil, "name is required" end)
app:get("/teapot", function(req) return nil, "no coffee here", 418 end)
app:get("/text", function(req) return "", "just text" end)
app:get("/boom", function(req) error("boom") end)
app:get("/table", function(req) error({ code = 1 }) end)
app:get("/later", function(req) return "", { f = function() end } end)
app:get("/loop", function(req) while true do end end)
"""


async def test_a_message_instead_of_data_is_a_400(executor: Executor) -> None:
    result = await request(executor, "GET", "/need", app=ERRORS)
    assert (result.http_code, result.payload, result.http_headers) == (400, b'{"error":"name is required"}', JSON)
    # A code given with the message is kept.
    result = await request(executor, "GET", "/teapot", app=ERRORS)
    assert (result.http_code, result.payload) == (418, b'{"error":"no coffee here"}')
    # With a template ("" is JSON mode) a string is data, as before.
    result = await request(executor, "GET", "/text", app=ERRORS)
    assert (result.http_code, result.payload) == (200, b'"just text"')


async def test_a_handler_that_raises_is_a_500_with_the_error_text(executor: Executor) -> None:
    result = await request(executor, "GET", "/boom", app=ERRORS)
    assert (result.http_code, result.http_headers) == (500, JSON)
    assert re.fullmatch(r".+:\d+: boom", json.loads(result.payload or b"")["error"])
    result = await request(executor, "GET", "/table", app=ERRORS)
    assert (result.http_code, json.loads(result.payload or b"")["error"][:7]) == (500, "table: ")
    # Failing to build the response is the route's failure too.
    result = await request(executor, "GET", "/later", app=ERRORS)
    assert result.http_code == 500
    assert json.loads(result.payload or b"") == {"error": "failed to encode JSON: cannot encode function to JSON"}


async def test_the_deadline_is_not_a_route_error(executor: Executor) -> None:
    with pytest.raises(ScriptTimeout):
        await run_lua(executor, WEB + ERRORS, html=True, method="GET", url="/loop", timeout_s=0.5)


# --- args ----------------------------------------------------------------------------------------

ARGS = """
local app = Router.new()
app:get("/args/<id>", function(req) return "", req:args() end)
app:post("/args/<id>", function(req) return "", req:args() end)
app:post("/one", function(req) return "", { name = req:args("name"), missing = req:args("nope") } end)
app:post("/old", function(req) return "", { form = req.form, body = req.body } end)
"""


@pytest.mark.parametrize(
    ("method", "url", "body", "args"),
    [
        # Route parameters win over the query, which wins over the body.
        (
            "GET",
            "/args/7?id=q&x=q&y=q",
            '{"id": "b", "x": "b", "z": "b"}',
            {"id": "7", "x": "q", "y": "q", "z": "b"},
        ),
        ("GET", "/args/1?a=q", "a=f&b=f", {"id": "1", "a": "q", "b": "f"}),  # a form body
        (
            "POST",
            "/args/2",
            ' \n {"n": 1.5, "list": [1, "a"], "yes": true}',
            {"id": "2", "n": 1.5, "list": [1, "a"], "yes": True},
        ),
        ("POST", "/args/3", "[1, 2]", {"id": "3"}),  # neither an object nor a form
        ("POST", "/args/4", "", {"id": "4"}),
    ],
)
async def test_args_merge_route_query_and_body(
    executor: Executor, method: str, url: str, body: str, args: dict[str, object]
) -> None:
    result = await request(executor, method, url, body, app=ARGS)
    assert (result.http_code, result.http_headers) == (200, JSON)
    assert json.loads(result.payload or b"") == args


async def test_args_by_name(executor: Executor) -> None:
    result = await request(executor, "POST", "/one", '{"name": "Ada"}', app=ARGS)
    assert result.payload == b'{"name":"Ada"}'


async def test_a_body_that_is_not_json_is_a_400_for_args(executor: Executor) -> None:
    result = await request(executor, "POST", "/args/5", '{"id": ', app=ARGS)
    assert (result.http_code, result.http_headers) == (400, JSON)
    assert json.loads(result.payload or b"")["error"].startswith("invalid JSON body: ")
    # Handlers that do not ask for args see the body as before.
    result = await request(executor, "POST", "/old", '{"id": ', app=ARGS)
    assert json.loads(result.payload or b"") == {"form": [], "body": '{"id": '}


# --- pages without the template module ------------------------------------------------------------


async def test_a_page_without_mustache_tags_needs_no_template_module() -> None:
    app = """
local app = Router.new()
app:get("/", function(req) return "<p>plain</p>", nil, 200, { header = "<b>h</b>" } end)
app:get("/tags", function(req) return "<p>{{ x }}</p>", { x = 1 } end)
"""
    async with lua_executor(plugins=False) as bare:
        result = await request(bare, "GET", "/", app=app)
        assert result.http_code == 200
        assert "<header><b>h</b></header>\n<p>plain</p>\n" in (result.payload or b"").decode()
        result = await request(bare, "GET", "/tags", app=app)
        assert result.http_code == 500
        assert "template" in json.loads(result.payload or b"")["error"]


@pytest.mark.parametrize(
    ("header", "footer"), [(None, None), ("<nav>a & b</nav>", "<i>{{ not a tag }}</i>"), ("", "x\ny")]
)
async def test_the_default_layout_is_filled_as_mustache_fills_it(
    executor: Executor, header: str | None, footer: str | None
) -> None:
    layout = WEB.split("local DEFAULT_LAYOUT = [[", 1)[1].split("]]", 1)[0]
    values = "{ header = HEADER, footer = FOOTER }".replace("HEADER", lua_string(header))
    values = values.replace("FOOTER", lua_string(footer))
    app = f"""
local app = Router.new()
local values = {values}
app:get("/", function(req) return "<p>page</p>", nil, 200, values end)
function expected()
    values.body = "<p>page</p>"
    return require("template").choose("mustache"):render({lua_string(layout)}, values)
end
"""
    page = await request(executor, "GET", "/", app=app)
    mustache = await run_lua(executor, WEB + app + "\nfunction OnMessage() return expected() end", libraries=())
    assert page.payload == mustache.payload


def lua_string(text: str | None) -> str:
    """A Lua expression for `text` (nil for None)."""
    return "nil" if text is None else json.dumps(text)


# --- -production ---------------------------------------------------------------------------------

PRODUCTION_APP = """--* subject: web.prod
--* name: prod
--* html: true
--* require: web
local app = Router.new()
app:get("/boom", function(req) error("secret detail") end)
app:get("/need", function(req) return nil, "name is required" end)
app:get("/env", function(req) return "", { production = os.getenv("MSGSCRIPT_PRODUCTION") } end)
"""


@pytest.mark.parametrize(
    ("args", "env"),
    [(("-production",), {}), ((), {config.PRODUCTION_VARIABLE: "1"})],
    ids=["flag", "environment"],
)
async def test_production_hides_error_texts(
    tmp_path: Path,
    nats_server: NatsServer,
    client: aiohttp.ClientSession,
    args: tuple[str, ...],
    env: dict[str, str],
) -> None:
    (tmp_path / "prod.lua").write_text(PRODUCTION_APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}/web.prod"
    command = ("-natsurl", nats_server.url, "-script", str(tmp_path), "-library", str(ROOT / "libraries"))
    command += ("-http-host", "127.0.0.1", "-port", str(port), *args)
    daemon = await start_daemon(*command, env=command_env(**env), stdout=True)
    try:
        async with client.get(base + "/boom") as resp:
            assert (resp.status, await resp.read()) == (500, b'{"error":"internal server error"}')
            assert resp.headers["Content-Type"] == "application/json"
        # A caller's mistake is still told.
        async with client.get(base + "/need") as resp:
            assert (resp.status, await resp.read()) == (400, b'{"error":"name is required"}')
        async with client.get(base + "/env") as resp:
            assert await resp.json() == {"production": "1"}
    finally:
        await daemon.stop()
    # The text goes to the daemon's output instead.
    assert daemon.stdout is not None
    assert re.search(r"^web: GET /boom: .+:\d+: secret detail$", await daemon.stdout, re.MULTILINE)


async def test_without_production_scripts_see_no_production_variable(
    tmp_path: Path, nats_server: NatsServer, client: aiohttp.ClientSession
) -> None:
    (tmp_path / "prod.lua").write_text(PRODUCTION_APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}/web.prod"
    command = ("-natsurl", nats_server.url, "-script", str(tmp_path), "-library", str(ROOT / "libraries"))
    command += ("-http-host", "127.0.0.1", "-port", str(port))
    # A false value of the variable means no -production, and is not passed on.
    async with daemon_running(*command, env=command_env(**{config.PRODUCTION_VARIABLE: "0"})):
        async with client.get(base + "/env") as resp:
            assert await resp.json() == []
        async with client.get(base + "/boom") as resp:
            assert resp.status == 500
            assert (await resp.json())["error"].endswith(": secret detail")
