"""The db plugin (`mysql`, `postgres`, `sqlite3`) against the real MariaDB and PostgreSQL and SQLite files.

`mysql` and `postgres` share one suite: each behaviour is written once and runs on both servers (the `backend`
fixture), with what each server answers given next to the case where the texts differ. Cases that exist on one
server only (value types, escaping rules, several statements in one query, a driver's own options) name it.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nats
import psycopg
import pymysql
import pytest

from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message
from tests.servers import free_port, missing

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
MYSQL_LUA = '{host = "127.0.0.1", port = 3306, user = "root", password = "", database = "test"}'
POSTGRES_LUA = '{host = "127.0.0.1", port = 5432, user = "postgres", database = "test"}'

# Lua: a row as "column=type:value,..." in column order, so one string shows every value and its Lua type.
DESCRIBE = """
local function describe(row)
  local keys = {}
  for k in pairs(row) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. type(row[k]) .. ":" .. tostring(row[k]) end
  return table.concat(out, ",")
end
"""


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def poll(check: Any, timeout_s: float = 10.0) -> bool:
    """Wait until check() is true (a server finishes its side of a disconnect on its own schedule)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


def fullmatch(pattern: bytes, text: bytes | None) -> bool:
    """Whether the whole of `text` matches `pattern` (across lines: a server's error may span several)."""
    return text is not None and re.fullmatch(pattern, text, re.DOTALL) is not None


class Server(Protocol):
    """The test's own connection to a database server, to prepare tables and see what scripts did."""

    def execute(self, sql: str) -> None: ...

    def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any: ...

    def is_running(self, marker: str) -> bool:
        """Whether a query whose text holds `marker` is still running on the server."""
        ...

    def has_session(self, session_id: int) -> bool:
        """Whether the connection with the server's id `session_id` is still open."""
        ...

    def close(self) -> None: ...


class MariaDB:
    """A connection to the local MariaDB; skips the test (fails it under CI) when there is none."""

    def __init__(self) -> None:
        try:
            self.conn = pymysql.connect(**MYSQL, autocommit=True, connect_timeout=5)
        except pymysql.err.MySQLError:
            missing("MariaDB on 127.0.0.1:3306")

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql)

    def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def is_running(self, marker: str) -> bool:
        (count,) = self.fetchone(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s", (f"%{marker}%",)
        )
        # This query's own text contains the marker too.
        return int(count) > 1

    def has_session(self, session_id: int) -> bool:
        (count,) = self.fetchone("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (session_id,))
        return int(count) > 0

    def close(self) -> None:
        self.conn.close()


class PostgreSQL:
    """A connection to the local PostgreSQL; skips the test (fails it under CI) when there is none."""

    def __init__(self) -> None:
        try:
            self.conn = psycopg.connect(**POSTGRES, autocommit=True, connect_timeout=5)
        except psycopg.Error:
            missing("PostgreSQL on 127.0.0.1:5432")

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def is_running(self, marker: str) -> bool:
        (count,) = self.fetchone(
            "SELECT COUNT(*) FROM pg_stat_activity"
            " WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )
        return bool(count)

    def has_session(self, session_id: int) -> bool:
        (count,) = self.fetchone("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s", (session_id,))
        return bool(count)

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True, slots=True)
class Backend:
    """One of the two database servers, as a script reaches it and as the test checks on it."""

    module: str
    """The Lua module; also the test id."""
    options: str
    """The Lua options table of connect() for the local server."""
    sleep: str
    """The SQL function that sleeps for its argument in seconds."""
    session_id: str
    """The SQL expression of the server's id for the current connection."""
    server: Callable[[], Server]


BACKENDS = {
    "mysql": Backend("mysql", MYSQL_LUA, "SLEEP", "CONNECTION_ID()", MariaDB),
    "postgres": Backend("postgres", POSTGRES_LUA, "pg_sleep", "pg_backend_pid()", PostgreSQL),
}


def only(module: str) -> pytest.MarkDecorator:
    """Run a test on one server only: the case does not exist, or reads differently, on the other."""
    return pytest.mark.parametrize("backend", [module], indirect=True)


def per_server(argnames: str, **cases: tuple[object, ...]) -> pytest.MarkDecorator:
    """Run a test on each server (a keyword per Lua module) with that server's values of `argnames`."""
    return pytest.mark.parametrize(
        ["backend", *(name.strip() for name in argnames.split(","))],
        [(module, *values) for module, values in cases.items()],
        ids=list(cases),
        indirect=["backend"],
    )


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def server(backend: Backend) -> Iterator[Server]:
    server = backend.server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def table(server: Server) -> Iterator[str]:
    name = unique("msgscript_t")
    try:
        yield name
    finally:
        server.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with lua_executor(env={}) as executor:
        yield executor


# mysql and postgres


async def test_connect_query_and_close(ex: Executor, backend: Backend, server: Server, table: str) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        local ok, err = c:connect({backend.options})
        assert(ok == true and err == nil, err)
        local created, err2 = c:query("CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))")
        assert(err2 == nil and type(created) == "table" and #created == 0, err2)
        assert(#c:query("INSERT INTO {table} VALUES (1, 'one'), (2, 'two')") == 0)
        local rows = c:query("SELECT id, name FROM {table} ORDER BY id")
        local closed = c:close()
        return #rows .. rows[1].name .. rows[2].id .. tostring(closed)
    """
    assert await on_message(ex, body) == b"2one2true"
    # Committed: every statement commits on its own.
    assert server.fetchone(f"SELECT name FROM {table} WHERE id = 2") == ("two",)


@per_server(
    "text",
    mysql=(b'it\'s a "quote" \\ back\r\n\x1a\x00 end',),
    postgres=(b"it's a \"quote\" \\ back\r\n'' end",),  # a PostgreSQL string cannot hold NUL
)
@pytest.mark.usefixtures("server")
async def test_escaped_text_round_trips(ex: Executor, backend: Backend, text: bytes) -> None:
    body = f"""
        local db = require("{backend.module}")
        local c = db.new()
        c:connect({backend.options})
        local rows = c:query("SELECT '" .. db.escape(payload) .. "' AS v")
        return rows[1].v
    """
    assert await on_message(ex, body, text) == text


@per_server(
    "unknown, syntax_error, unknown_error",
    mysql=(
        "SELECT * FROM msgscript_no_such_table",
        # The rest of MariaDB's text names the server and its version.
        rb"Error 1064 \(42000\): You have an error in your SQL syntax.*",
        re.escape(b"Error 1146 (42S02): Table 'test.msgscript_no_such_table' doesn't exist"),
    ),
    postgres=(
        "SELECT nosuch FROM pg_class",
        re.escape(b'syntax error at or near "SELEKT"'),
        re.escape(b'column "nosuch" does not exist'),
    ),
)
@pytest.mark.usefixtures("server")
async def test_bad_sql_is_an_error_return(
    ex: Executor, backend: Backend, unknown: str, syntax_error: bytes, unknown_error: bytes
) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        c:connect({backend.options})
        local rows, err = c:query("SELEKT 1")
        local rows2, err2 = c:query("{unknown}")
        local after = c:query("SELECT 3 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. tostring(rows2) .. "|" .. err2 .. "|" .. after[1].n
    """
    result = await on_message(ex, body)
    assert result is not None
    first, message, second, message2, after = result.split(b"|")
    assert (first, second, after) == (b"nil", b"nil", b"3")
    assert fullmatch(syntax_error, message), message
    assert fullmatch(unknown_error, message2), message2


@per_server(
    "options, error",
    mysql=(
        '{host = "127.0.0.1", user = "msgscript_nobody", password = "wrong"}',
        rb"Error 1045 \(28000\): Access denied for user 'msgscript_nobody'@.*\(using password: YES\)",
    ),
    postgres=(
        '{host = "127.0.0.1", user = "msgscript_nobody", database = "test"}',
        rb'connection failed: .*role "msgscript_nobody" does not exist',
    ),
)
@pytest.mark.usefixtures("server")
async def test_bad_credentials(ex: Executor, backend: Backend, options: str, error: bytes) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        local ok, err = c:connect({options})
        local rows, err2 = c:query("SELECT 1")
        return tostring(ok) .. "|" .. err .. "|" .. err2
    """
    result = await on_message(ex, body)
    assert fullmatch(rb"false\|" + error + rb"\|connect required", result), result


@per_server(
    "options, error",
    mysql=("", rb"Error 2003: Can't connect to MySQL server on '127\.0\.0\.1'"),
    postgres=(', user = "x"', rb"connection failed: "),
)
async def test_refused_port(ex: Executor, backend: Backend, options: str, error: bytes) -> None:
    port = free_port()
    body = f"""
        local ok, err = require("{backend.module}").new():connect({{host = "127.0.0.1", port = {port}{options}}})
        return tostring(ok) .. "|" .. err
    """
    result = await on_message(ex, body)
    assert fullmatch(rb"false\|" + error + rb".*", result), result
    assert result is not None and b"Connection refused" in result


async def test_calls_without_a_connection(ex: Executor, backend: Backend) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        local r1, e1 = c:query("SELECT 1")
        local k1, ke1 = c:set_keepalive(1000, 5)
        local closed = c:close()
        return tostring(r1) .. "|" .. e1 .. "|" .. tostring(k1) .. "|" .. ke1 .. "|" .. tostring(closed)
    """
    assert await on_message(ex, body) == b"nil|connect required|nil|connect required|true"


@pytest.mark.usefixtures("server")
async def test_keepalive_empty_query_and_closed_client(ex: Executor, backend: Backend) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        c:connect({backend.options})
        local kept = c:set_keepalive(10000, 10)
        local r, e = c:query("")
        c:close()
        local r2, e2 = c:query("SELECT 1")
        return tostring(kept) .. "|" .. tostring(r) .. "|" .. e .. "|" .. e2 .. "|" .. tostring(c:close())
    """
    assert await on_message(ex, body) == b"true|nil|query excepted|connect required|true"


async def test_argument_errors(ex: Executor, backend: Backend) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        local ok1, e1 = pcall(function() local r = c:connect() return r end)
        local ok2, e2 = pcall(function() local r = c.query("SELECT 1") return r end)
        return e1 .. "|" .. e2
    """
    assert await on_message(ex, body) == (
        b"<string>:4: bad argument #2 to 'connect' (options excepted)|"
        b"<string>:5: bad argument #1 to 'query' (client expected, got string)"
    )


async def test_set_timeout_interrupts_a_query(ex: Executor, backend: Backend, server: Server) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("{backend.module}").new()
        c:set_timeout(300)
        c:connect({backend.options})
        local rows, err = c:query("SELECT {backend.sleep}(20) AS {marker}")
        local after = c:query("SELECT 5 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. after[1].n
    """
    assert await on_message(ex, body) == b"nil|query timed out after 300ms|5"
    assert not server.is_running(marker)


async def test_query_past_the_script_deadline_is_interrupted(ex: Executor, backend: Backend, server: Server) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("{backend.module}").new()
        c:connect({backend.options})
        c:query("SELECT {backend.sleep}(30) AS {marker}")
        return "not reached"
    """
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="script timed out after 1s"):
        await on_message(ex, body, timeout_s=1.0)
    assert time.monotonic() - started < 15  # the 30 s query did not run to its end
    assert await poll(lambda: not server.is_running(marker))


async def test_unclosed_connection_is_closed_when_the_execution_ends(
    ex: Executor, backend: Backend, server: Server
) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        c:connect({backend.options})
        return tostring(c:query("SELECT {backend.session_id} AS id")[1].id)
    """
    session_id = int(await on_message(ex, body) or b"0")
    assert session_id > 0
    assert await poll(lambda: not server.has_session(session_id))


async def test_connecting_again_closes_the_first_connection(ex: Executor, backend: Backend, server: Server) -> None:
    body = f"""
        local c = require("{backend.module}").new()
        c:connect({backend.options})
        local first = c:query("SELECT {backend.session_id} AS id")[1].id
        c:connect({backend.options})
        local second = c:query("SELECT {backend.session_id} AS id")[1].id
        c:close()
        return first .. " " .. second
    """
    first, second = (await on_message(ex, body) or b"").split()
    assert first != second
    assert await poll(lambda: not server.has_session(int(first)))


# mysql only


@only("mysql")
async def test_mysql_value_types(ex: Executor, server: Server, table: str) -> None:
    server.execute(
        f"CREATE TABLE {table} (i INT, big BIGINT, d DOUBLE, dec_ DECIMAL(6,2), s VARCHAR(10),"
        " dt DATETIME, b BLOB, flag BOOLEAN, nothing INT)"
    )
    server.execute(
        f"INSERT INTO {table} VALUES (-7, 4294967297, 1.5, 12.50, 'héllo', '2024-03-01 12:34:56', x'00ff', TRUE, NULL)"
    )
    body = f"""{DESCRIBE}
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        local rows = c:query("SELECT * FROM {table}")
        return describe(rows[1]) .. "|" .. #rows[1].b .. "|" .. string.byte(rows[1].b, 2)
    """
    assert await on_message(ex, body) == (
        b"b=string:\x00\xff,big=number:4294967297,d=number:1.5,dec_=number:12.5,dt=string:2024-03-01 12:34:56,"
        b"flag=number:1,i=number:-7,s=string:h\xc3\xa9llo|2|255"
    )


async def test_mysql_escape(ex: Executor) -> None:
    body = r"""
        local mysql = require("mysql")
        return mysql.escape('I\'m busy.\r\n"Apple"') .. "|" .. mysql.escape("a\\b\26c\0d") .. "|" .. mysql.escape()
    """
    assert await on_message(ex, body) == b'I\\\'m busy.\\r\\n\\"Apple\\"|a\\\\b\\Zc\\0d|'


@only("mysql")
@pytest.mark.usefixtures("server")
async def test_mysql_charset_option(ex: Executor) -> None:
    body = """
        local mysql = require("mysql")
        local c = mysql.new()
        local ok, err = c:connect({host = "127.0.0.1", user = "root", database = "test", charset = "latin1"})
        local rows = c:query("SELECT @@character_set_client AS cs")
        local bad, err2 = mysql.new():connect({host = "127.0.0.1", user = "root", charset = "klingon"})
        return tostring(ok) .. "|" .. rows[1].cs .. "|" .. tostring(bad) .. "|" .. err2 .. "|" .. mysql._VERSION
    """
    assert await on_message(ex, body) == b"true|latin1|false|unknown charset klingon|0.0.0"


# postgres only


@only("postgres")
@pytest.mark.usefixtures("server")
async def test_postgres_value_types(ex: Executor) -> None:
    body = f"""{DESCRIBE}
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows = c:query([[SELECT -7::int4 AS i, 4294967297::int8 AS big, 1.5::float8 AS d,
            12.50::numeric(6,2) AS dec_, 'héllo'::text AS s, '2024-03-01 12:34:56'::timestamp AS dt,
            '\\x00ff'::bytea AS b, true AS flag, false AS off, NULL::int AS nothing, '{{1,2}}'::int[] AS arr,
            '{{"a": 1}}'::json AS j]])
        return describe(rows[1])
    """
    assert await on_message(ex, body) == (
        b"arr=string:{1,2},b=string:\x00\xff,big=number:4294967297,d=number:1.5,dec_=number:12.5,"
        b'dt=string:2024-03-01 12:34:56,flag=boolean:true,i=number:-7,j=string:{"a": 1},off=boolean:false,'
        b"s=string:h\xc3\xa9llo"
    )


async def test_postgres_escape_doubles_quotes(ex: Executor) -> None:
    assert await on_message(ex, """return require("postgres").escape("it's")""") == b"it''s"


@only("postgres")
@pytest.mark.usefixtures("server")
async def test_postgres_several_statements_give_the_first_result(ex: Executor) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("SELECT 1 AS a; SELECT 2 AS b")
        return tostring(rows[1].a) .. tostring(rows[1].b) .. tostring(err)
    """
    assert await on_message(ex, body) == b"1nilnil"


@only("postgres")
async def test_postgres_rows_of_later_statements_are_read_and_dropped(ex: Executor, server: Server, table: str) -> None:
    # Rows stream one at a time: the later statements still run, their rows are not kept, and an error in any
    # statement is the query's error, with the connection ready for the next one.
    server.execute(f"CREATE TABLE {table} (name text)")
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows = c:query("SELECT n FROM generate_series(1, 3) AS n; INSERT INTO {table} (name) VALUES ('later');"
          .. " SELECT n FROM generate_series(1, 1000) AS n")
        local failed, err = c:query("SELECT 1; SELECT 1 / 0")
        local again = c:query("SELECT name FROM {table}")
        return #rows .. rows[3].n .. "|" .. tostring(failed) .. "|" .. err .. "|" .. again[1].name
    """
    assert await on_message(ex, body) == b"33|nil|division by zero|later"


@only("postgres")
@pytest.mark.usefixtures("server")
async def test_postgres_copy_is_refused_and_the_connection_closed(ex: Executor) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("COPY (SELECT 1) TO STDOUT")
        local after, after_err = c:query("SELECT 1 AS one")
        return tostring(rows) .. "|" .. err .. "|" .. tostring(after) .. "|" .. after_err
    """
    assert await on_message(ex, body) == b"nil|COPY cannot be used in a query|nil|connect required"


# sqlite3


async def test_sqlite_open_query_and_close(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    body = f"""
        local sqlite3 = require("sqlite3")
        local c = sqlite3.new()
        local ok, err = c:open("{path}", {{cache = "private"}})
        assert(ok == true and err == nil, err)
        local created, err2 = c:query("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        assert(err2 == nil and #created == 0, err2)
        assert(#c:query("INSERT INTO t VALUES (1, 'one'), (2, 'two')") == 0)
        local rows = c:query("SELECT id, name FROM t ORDER BY id")
        return #rows .. rows[1].name .. rows[2].id .. tostring(c:close())
    """
    assert await on_message(ex, body) == b"2one2true"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM t WHERE id = 2").fetchone() == ("two",)


async def test_sqlite_value_types(ex: Executor) -> None:
    body = f"""{DESCRIBE}
        local c = require("sqlite3").new()
        c:open(":memory:")
        c:query("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n INTEGER)")
        c:query("INSERT INTO t VALUES (-7, 1.5, 'héllo', x'00ff', NULL)")
        return describe(c:query("SELECT * FROM t")[1])
    """
    assert await on_message(ex, body) == b"b=string:\x00\xff,i=number:-7,r=number:1.5,s=string:h\xc3\xa9llo"


async def test_sqlite_relative_path_is_in_the_execution_directory(ex: Executor) -> None:
    name = unique("msgscript") + ".db"
    body = f"""
        local c = require("sqlite3").new()
        assert(c:open("{name}"))
        c:query("CREATE TABLE t (x)")
        local file = io.open("{name}", "rb")
        local header = file:read(15)
        file:close()
        return header
    """
    assert await on_message(ex, body) == b"SQLite format 3"
    assert not (Path.cwd() / name).exists()


async def test_sqlite_open_options_and_failures(ex: Executor, tmp_path: Path) -> None:
    existing = tmp_path / "ro.db"
    with sqlite3.connect(existing) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    body = f"""
        local sqlite3 = require("sqlite3")
        local ro = sqlite3.new()
        assert(ro:open("{existing}", {{mode = "ro"}}))
        local r1, e1 = ro:query("INSERT INTO t VALUES (1)")
        local ok2, e2 = sqlite3.new():open("{tmp_path}/missing.db", {{mode = "ro"}})
        local ok3, e3 = sqlite3.new():open("{tmp_path}/no/such/dir/x.db")
        return tostring(r1) .. "|" .. e1 .. "|" .. tostring(ok2) .. "|" .. e2 .. "|" .. tostring(ok3) .. "|" .. e3
    """
    assert await on_message(ex, body) == (
        b"nil|attempt to write a readonly database"
        b"|false|unable to open database file|false|unable to open database file"
    )


async def test_sqlite_bad_sql_and_calls_without_a_database(ex: Executor) -> None:
    body = """
        local c = require("sqlite3").new()
        local r0, e0 = c:query("SELECT 1")
        c:open(":memory:")
        local r1, e1 = c:query("SELEKT 1")
        local r2, e2 = c:query("SELECT 1; SELECT 2")
        local after = c:query("SELECT 3 AS n")
        c:close()
        local r3, e3 = c:query("SELECT 1")
        return e0 .. "|" .. tostring(r1) .. "|" .. e1 .. "|" .. e2 .. "|" .. after[1].n .. "|" .. e3
    """
    assert await on_message(ex, body) == (
        b'open required|nil|near "SELEKT": syntax error|You can only execute one statement at a time.|3|open required'
    )


async def test_sqlite_argument_errors(ex: Executor) -> None:
    body = """
        local c = require("sqlite3").new()
        local _, e1 = pcall(function() local r = c:open() return r end)
        local _, e2 = pcall(function() local r = c:open("x.db", "nope") return r end)
        c:open(":memory:")
        local _, e3 = pcall(function() local r = c:query("") return r end)
        return e1 .. "|" .. e2 .. "|" .. e3
    """
    assert await on_message(ex, body) == (
        b"<string>:4: bad argument #2 to 'open' (file path string excepted)|"
        b"<string>:5: bad argument #3 to 'open' (options excepted)|"
        b"<string>:7: bad argument #2 to 'query' (query string required)"
    )


ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


async def test_sqlite_set_timeout_interrupts_a_query(ex: Executor) -> None:
    body = f"""
        local c = require("sqlite3").new()
        c:set_timeout(300)
        c:open(":memory:")
        local rows, err = c:query("{ENDLESS}")
        return tostring(rows) .. "|" .. err .. "|" .. c:query("SELECT 5 AS n")[1].n
    """
    assert await on_message(ex, body) == b"nil|query timed out after 300ms|5"


async def test_sqlite_query_past_the_script_deadline_is_interrupted(ex: Executor) -> None:
    body = f"""
        local c = require("sqlite3").new()
        c:open(":memory:")
        c:query("{ENDLESS}")
        return "not reached"
    """
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="script timed out after 1s"):
        await on_message(ex, body, timeout_s=1.0)
    assert time.monotonic() - started < 15


async def test_sqlite_set_timeout_bounds_the_wait_for_a_lock(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        body = f"""
            local c = require("sqlite3").new()
            c:set_timeout(200)
            c:open("{path}")  -- the wait for a lock is the timeout at open
            c:set_timeout(0)
            local rows, err = c:query("INSERT INTO t VALUES (1)")
            return tostring(rows) .. "|" .. err
        """
        assert await on_message(ex, body) == b"nil|database is locked"
    finally:
        holder.close()


async def test_sqlite_unclosed_database_is_closed_when_the_execution_ends(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "open.db"
    body = f"""
        local c = require("sqlite3").new()
        c:open("{path}")
        c:query("CREATE TABLE t (x)")
        c:query("BEGIN EXCLUSIVE")
        c:query("INSERT INTO t VALUES (1)")
        return "left open"
    """
    assert await on_message(ex, body) == b"left open"
    # Had the script's connection survived, its exclusive lock would make this fail at once.
    with sqlite3.connect(path, timeout=0) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]
    conn.close()


# end to end


DB_SCRIPT = """--* subject: funcs.db
--* name: db
local sqlite3 = require("sqlite3")
local postgres = require("postgres")

function OnMessage(subject, payload)
    local lite = sqlite3.new()
    assert(lite:open("scratch.db"))
    lite:query("CREATE TABLE t (name TEXT)")
    lite:query("INSERT INTO t VALUES ('" .. payload .. "')")
    local pg = postgres.new()
    local ok, err = pg:connect(%s)
    if not ok then return "connect: " .. err end
    local rows = pg:query("SELECT upper('" .. lite:query("SELECT name FROM t")[1].name .. "') AS v")
    return rows[1].v
end
"""


@only("postgres")
@pytest.mark.usefixtures("server")
async def test_db_modules_through_a_daemon(make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path) -> None:
    scripts = tmp_path / "db_scripts"
    scripts.mkdir()
    (scripts / "db.lua").write_text(DB_SCRIPT % POSTGRES_LUA)
    async with make_daemon(plugin_dir=PLUGIN_DIR, script_dir=str(scripts)):
        first = Reply.from_json((await nc.request("funcs.db", b"john", timeout=10)).data)
        # A second run gets a fresh scratch directory: CREATE TABLE does not find the first run's file.
        second = Reply.from_json((await nc.request("funcs.db", b"jane", timeout=10)).data)
    assert [r.payload for r in first.results or ()] == [b"JOHN"]
    assert [r.payload for r in second.results or ()] == [b"JANE"]
