"""Modules stay inside the memory cap: what they read, decode or build for a script is charged as it grows.

Each test runs the daemon's Lua executor (built-ins and bundled plugins, one worker thread, a 16 MiB cap) in
a child process, so that the child's peak RSS measures what one script could make the daemon allocate: a
script asking a module for far more than the cap fails with `not enough memory`, the peak stays within a
few times the cap, and a normal-sized use in the same process still works.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql
import pytest
from aiohttp import web

from tests.servers import missing, serve_app

CAP = 16 * 1024 * 1024
MAX_GROWTH = 3 * CAP
"""How much a child's peak RSS may grow while its scripts run (Lua's own heap, under the cap, included)."""
ROOT = Path(__file__).resolve().parent.parent
HUGE = 200 * 1024 * 1024
"""What the scripts ask a module for: far past the cap."""
NO_MEMORY = "not enough memory"

# The child: runs each script once and prints its outcomes and the growth of its peak RSS past a warm-up
# script (which loads and uses the modules, so that imports and first-use caches are not counted).
CHILD = """
import asyncio, json, resource, sys
from msgscript.errors import ScriptError
from tests.lua_harness import lua_executor, run_lua

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

async def main():
    spec = json.load(sys.stdin)
    async with lua_executor(max_memory_bytes=spec["cap"], lua_threads=1) as ex:
        await run_lua(ex, spec["warmup"], timeout_s=30)
        base = peak()
        outcomes = []
        for content in spec["scripts"]:
            try:
                result = await run_lua(ex, content, timeout_s=60)
                outcomes.append({"payload": (result.payload or b"").decode("utf-8", "replace")})
            except ScriptError as exc:
                outcomes.append({"error": str(exc)})
        print(json.dumps({"growth": peak() - base, "outcomes": outcomes}))

asyncio.run(main())
"""


@dataclass(frozen=True, slots=True)
class Probe:
    """What a child process reported."""

    growth_bytes: int
    outcomes: list[dict[str, str]]

    def error(self, index: int) -> str:
        return self.outcomes[index].get("error", "")

    def payload(self, index: int) -> str | None:
        return self.outcomes[index].get("payload")


async def probe(scripts: list[str], warmup: str = "function OnMessage() end") -> Probe:
    """Run the scripts in a fresh daemon executor in a child process."""
    spec = json.dumps({"cap": CAP, "warmup": warmup, "scripts": scripts}).encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(spec), 110)
    assert proc.returncode == 0, err.decode(errors="replace")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return Probe(report["growth"], report["outcomes"])


def on_message(requires: str, body: str) -> str:
    """A script whose OnMessage runs body after `local <module> = require("<module>")` for each name."""
    lines = [f'local {name} = require("{name}")' for name in requires.split()]
    return "\n".join(lines) + f"\nfunction OnMessage(subject, payload)\n{body}\nend"


def assert_bounded(result: Probe) -> None:
    assert result.growth_bytes < MAX_GROWTH, f"peak RSS grew by {result.growth_bytes >> 20} MiB"


# --- json ---------------------------------------------------------------------------------------------------


async def test_json_stays_inside_the_memory_cap() -> None:
    result = await probe(
        [
            # One 4 MiB string, 32 times: 128 MiB of JSON (the encoder once peaked at 468 MB here).
            on_message(
                "json",
                'local s = ("x"):rep(4 * 1024 * 1024) local t = {} for i = 1, 32 do t[i] = s end return json.encode(t)',
            ),
            # A million empty arrays in 3 MiB of text: Python lists, then Lua tables.
            on_message("json", 'return tostring(#json.decode("[" .. ("[],"):rep(1024 * 1024) .. "[]]"))'),
            on_message(
                "json",
                'local s = ("é"):rep(512 * 1024) local back = json.decode(json.encode({a = s, b = {1, 2}})) '
                "return tostring(back.a == s) .. #back.b",
            ),
        ],
        warmup=on_message("json", 'return json.encode(json.decode("[1, {\\"a\\": \\"b\\"}]"))'),
    )
    assert NO_MEMORY in result.error(0)
    assert NO_MEMORY in result.error(1)
    assert result.payload(2) == "true2"
    assert_bounded(result)


# --- http ---------------------------------------------------------------------------------------------------


async def _stream(request: web.Request) -> web.StreamResponse:
    """`size` bytes, written a MiB at a time (the server never holds the body)."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    chunk = b"z" * (1024 * 1024)
    try:
        while size > 0:
            await response.write(chunk[:size])
            size -= len(chunk)
    except (ConnectionResetError, ConnectionError):
        pass
    return response


@pytest.fixture
async def streaming_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/stream", _stream)
    async with serve_app(app) as url:
        yield url


async def test_http_response_bodies_stay_inside_the_memory_cap(streaming_server: str) -> None:
    url = streaming_server
    result = await probe(
        [
            on_message("http", f'local r, err = http.get("{url}/stream?size={HUGE}") return tostring(err)'),
            on_message(
                "http",
                f'local r = http.request_batch({{{{"GET", "{url}/stream?size={HUGE}"}}, '
                f'{{"GET", "{url}/stream?size={HUGE}"}}}}) return "done"',
            ),
            on_message(
                "http",
                f'local body = ("b"):rep({HUGE // 16}) '
                f'local r, err = http.post("{url}/stream?size=1", {{body = body}}) return tostring(err)',
            ),
            on_message("http", f'local r = assert(http.get("{url}/stream?size=1048576")) return tostring(#r.body)'),
        ],
        warmup=on_message("http", f'return http.get("{url}/stream?size=10").body'),
    )
    assert NO_MEMORY in result.error(0)
    assert NO_MEMORY in result.error(1)
    # 12.5 MiB built in Lua, then copied for the request: past what the cap leaves.
    assert NO_MEMORY in result.error(2)
    assert result.payload(3) == str(1024 * 1024)
    assert_bounded(result)


# --- re ------------------------------------------------------------------------------------------------------


async def test_re_stays_inside_the_memory_cap() -> None:
    result = await probe(
        [
            # 100 MiB of replacement text from a 1 MiB subject.
            on_message("re", 'return (re.gsub(("x"):rep(1024 * 1024), "x", ("y"):rep(100)))'),
            # Four million empty matches.
            on_message("re", 'local n = 0 for m in re.gmatch(("x"):rep(4 * 1024 * 1024), "") do n = n + 1 end'),
            # Iterators no longer hold a copy of their subject: 64 of them over 4 MiB cost nothing in Python.
            on_message(
                "re",
                'local s = ("x"):rep(4 * 1024 * 1024) local its = {} '
                'for i = 1, 64 do its[i] = re.gmatch(s, "x+") end return tostring(#its[64]())',
            ),
            on_message("re", 'local s = re.gsub(("ab"):rep(1000), "(a)(b)", "$2$1") return s:sub(1, 4) .. #s'),
        ],
        warmup=on_message("re", 'return re.gsub("ab", "a", "c")'),
    )
    assert NO_MEMORY in result.error(0)
    assert NO_MEMORY in result.error(1)
    assert result.payload(2) == str(4 * 1024 * 1024)
    assert result.payload(3) == "baba2000"
    assert_bounded(result)


# --- files and processes: ioutil, tac, template, cmd ------------------------------------------------------------


@pytest.fixture
def sparse_file(tmp_path: Path) -> Iterator[Path]:
    """A 200 MiB file without a newline that takes no disk space."""
    path = tmp_path / "sparse.bin"
    with path.open("wb") as file:
        file.truncate(HUGE)
    yield path


async def test_file_reads_stay_inside_the_memory_cap(sparse_file: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"line 1\nline 2\n" * 1000)
    template = tmp_path / "page.mustache"
    template.write_bytes(b"<p>{{name}}</p>" + b" " * (20 * 1024 * 1024))
    result = await probe(
        [
            on_message("ioutil", f'return (ioutil.read_file("{sparse_file}"))'),
            on_message("ioutil", 'return (ioutil.read_file("/dev/zero"))'),
            on_message("tac", f'local s = assert(tac.open("{sparse_file}")) return s:line()'),
            on_message(
                "template",
                f'local m = template.choose("mustache") local out, err = m:render_file("{template}", {{name = "x"}}) '
                "return tostring(err)",
            ),
            on_message("ioutil tac", f'local s = tac.open("{small}") return #ioutil.read_file("{small}") .. s:line()'),
        ],
        warmup=on_message("ioutil tac template", f'return ioutil.read_file("{small}"):sub(1, 6)'),
    )
    for index in range(4):
        assert NO_MEMORY in result.error(index), result.outcomes[index]
    assert result.payload(4) == "14000line 2"
    assert_bounded(result)


async def test_command_output_stays_inside_the_memory_cap() -> None:
    result = await probe(
        [
            on_message("cmd", f'local r, err = cmd.exec("head -c {HUGE} /dev/zero", 30) return tostring(err)'),
            on_message("cmd", 'local r = cmd.exec("seq 1 3") return r.stdout'),
        ],
        warmup=on_message("cmd", 'return cmd.exec("true").stdout'),
    )
    assert NO_MEMORY in result.error(0)
    assert result.payload(1) == "1\n2\n3\n"
    assert_bounded(result)


# --- text and values: strings, yaml, template, log, scrape, storage ----------------------------------------------


async def test_text_modules_stay_inside_the_memory_cap(tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    result = await probe(
        [
            on_message("strings", 'return #strings.split(("x"):rep(4 * 1024 * 1024), "")'),
            on_message("strings", 'return #strings.fields(("x "):rep(2 * 1024 * 1024))'),
            on_message(
                "yaml",
                'local s = ("x"):rep(4 * 1024 * 1024) local t = {} for i = 1, 32 do t[i] = s end return yaml.encode(t)',
            ),
            on_message("yaml", 'return #yaml.decode("[" .. ("1,"):rep(1024 * 1024) .. "1]")'),
            on_message(
                "template",
                "local items = {} for i = 1, 100000 do items[i] = i end "
                'return template.choose("mustache"):render("{{#items}}" .. ("-"):rep(1000) .. "{{/items}}", '
                "{items = items})",
            ),
            on_message("log", 'local l = log.new("STDERR") l:printf("%999999999d", 1) return "printed"'),
            on_message("scrape", 'return #scrape.find_text_by_tag(("<a>"):rep(1024 * 1024), "a")'),
            on_message(
                "storage",
                f'local s = storage.open("{store}") local v = ("v"):rep(4 * 1024 * 1024) '
                'for i = 1, 16 do local err = s:set("k" .. i, v) if err then return err end end return "stored"',
            ),
            on_message(
                "strings yaml template scrape",
                'return #strings.split("a,b,c", ",") .. yaml.encode({a = 1}) '
                '.. template.choose("mustache"):render("{{x}}", {x = "y"}) '
                '.. scrape.find_text_by_tag("<p>hi</p>", "p")[1]',
            ),
        ],
        warmup=on_message(
            "strings yaml template log scrape storage",
            'return yaml.encode(yaml.decode("a: [1, 2]")) .. strings.trim(" x ", " ")',
        ),
    )
    for index in range(8):
        assert NO_MEMORY in result.error(index), result.outcomes[index]
    assert result.payload(8) == "3a: 1\nyhi"
    assert_bounded(result)


# --- sockets and databases: tcp, postgres, mysql, sqlite3 --------------------------------------------------------


@pytest.fixture
async def flood_server() -> AsyncIterator[int]:
    """A TCP server that sends 200 MiB to whoever connects (then closes)."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"f" * (1024 * 1024)
        try:
            for _ in range(HUGE // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_tcp_receives_stay_inside_the_memory_cap(flood_server: int) -> None:
    address = f"127.0.0.1:{flood_server}"
    result = await probe(
        [
            on_message("tcp", f'local c = assert(tcp.open("{address}")) c.readTimeout = 30 return c:read("*a")'),
            on_message("tcp", f'local c = assert(tcp.open("{address}")) c.readTimeout = 30 return c:read("*l")'),
            on_message("tcp", f'local c = assert(tcp.open("{address}")) return tostring(#c:read(100))'),
        ],
        warmup=on_message("tcp", f'local c = assert(tcp.open("{address}")) return c:read(1)'),
    )
    assert NO_MEMORY in result.error(0)
    assert NO_MEMORY in result.error(1)
    assert result.payload(2) == "100"
    assert_bounded(result)


def _databases_up() -> None:
    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5).close()
    except psycopg.Error:
        missing("PostgreSQL on 127.0.0.1:5432")
    try:
        pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test").close()
    except pymysql.err.MySQLError:
        missing("MariaDB on 127.0.0.1:3306")


POSTGRES = '{host = "127.0.0.1", port = 5432, user = "postgres", database = "test"}'
MYSQL = '{host = "127.0.0.1", port = 3306, user = "root", password = "", database = "test"}'
# 200 rows of 1 MB each.
BIG_ROWS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 200) SELECT {blob} AS b FROM r"


def _query(module: str, open_call: str, sql: str) -> str:
    return on_message(
        module,
        f"local c = {module}.new() assert({open_call}) "
        f'local ok, err = pcall(c.query, c, "{sql}") '
        "local rows, again = c:query('SELECT 1 AS one') "
        "return tostring(err) .. '|' .. tostring(rows) .. '|' .. tostring(again)",
    )


async def test_query_results_stay_inside_the_memory_cap() -> None:
    _databases_up()
    result = await probe(
        [
            _query("postgres", f"c:connect({POSTGRES})", BIG_ROWS.format(blob="repeat('x', 1000000)")),
            _query("mysql", f"c:connect({MYSQL})", BIG_ROWS.format(blob="REPEAT('x', 1000000)")),
            _query("sqlite3", 'c:open(":memory:")', BIG_ROWS.format(blob="zeroblob(1000000)")),
            on_message(
                "postgres",
                f"local c = postgres.new() assert(c:connect({POSTGRES})) "
                "local rows = assert(c:query(\"SELECT repeat('y', 1000) AS s FROM generate_series(1, 100);"
                ' SELECT 2")) '
                "return #rows .. #rows[1].s",
            ),
        ],
        warmup=on_message(
            "postgres mysql sqlite3",
            f"local p = postgres.new() assert(p:connect({POSTGRES})) p:query('SELECT 1') "
            f"local m = mysql.new() assert(m:connect({MYSQL})) m:query('SELECT 1') "
            "local s = sqlite3.new() s:open(':memory:') s:query('SELECT 1')",
        ),
    )
    for index in range(3):
        err, rows, again = (result.payload(index) or "").split("|")
        assert NO_MEMORY in err, result.outcomes[index]
        # The half-read connection was closed.
        assert (rows, again) in (("nil", "connect required"), ("nil", "open required"))
    assert result.payload(3) == "1001000"
    assert_bounded(result)
