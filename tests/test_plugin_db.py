"""The db plugin (`mysql`, `postgres`, `sqlite3`) against the real MariaDB and PostgreSQL and SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pymysql
import pytest

from msgscript.errors import ScriptTimeout
from msgscript.executors import Executor
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


@pytest.fixture
def mysql_conn() -> Iterator[Any]:
    try:
        conn = pymysql.connect(**MYSQL, autocommit=True, connect_timeout=5)
    except pymysql.err.MySQLError:
        missing("MariaDB on 127.0.0.1:3306")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def pg_conn() -> Iterator[Any]:
    try:
        conn = psycopg.connect(**POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.Error:
        missing("PostgreSQL on 127.0.0.1:5432")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def mysql_table(mysql_conn: Any) -> Iterator[str]:
    name = unique("msgscript_t")
    try:
        yield name
    finally:
        with mysql_conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def pg_table(pg_conn: Any) -> Iterator[str]:
    name = unique("msgscript_t")
    try:
        yield name
    finally:
        pg_conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with lua_executor(env={}) as executor:
        yield executor


def mysql_query_running(conn: Any, marker: str) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s", (f"%{marker}%",))
        (count,) = cursor.fetchone()
    # This query's own text contains the marker too.
    return int(count) > 1


def mysql_connection_exists(conn: Any, thread_id: int) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,))
        (count,) = cursor.fetchone()
    return int(count) > 0


def pg_query_running(conn: Any, marker: str) -> bool:
    row = conn.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
        (f"%{marker}%",),
    ).fetchone()
    return bool(row[0])


def pg_backend_exists(conn: Any, pid: int) -> bool:
    return bool(conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0])


# mysql


async def test_mysql_connect_query_and_close(ex: Executor, mysql_conn: Any, mysql_table: str) -> None:
    body = f"""
        local mysql = require("mysql")
        local c = mysql.new()
        local ok, err = c:connect({MYSQL_LUA})
        assert(ok == true and err == nil, err)
        local created, err2 = c:query("CREATE TABLE {mysql_table} (id INT PRIMARY KEY, name VARCHAR(20))")
        assert(err2 == nil and type(created) == "table" and #created == 0, err2)
        assert(#c:query("INSERT INTO {mysql_table} VALUES (1, 'one'), (2, 'two')") == 0)
        local rows = c:query("SELECT id, name FROM {mysql_table} ORDER BY id")
        local closed = c:close()
        return #rows .. rows[1].name .. rows[2].id .. tostring(closed)
    """
    assert await on_message(ex, body) == b"2one2true"
    with mysql_conn.cursor() as cursor:
        cursor.execute(f"SELECT name FROM {mysql_table} WHERE id = 2")
        assert cursor.fetchone() == ("two",)  # committed: every statement commits on its own


async def test_mysql_value_types(ex: Executor, mysql_conn: Any, mysql_table: str) -> None:
    with mysql_conn.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {mysql_table} (i INT, big BIGINT, d DOUBLE, dec_ DECIMAL(6,2), s VARCHAR(10),"
            " dt DATETIME, b BLOB, flag BOOLEAN, nothing INT)"
        )
        cursor.execute(
            f"INSERT INTO {mysql_table} VALUES (-7, 4294967297, 1.5, 12.50, 'héllo',"
            " '2024-03-01 12:34:56', x'00ff', TRUE, NULL)"
        )
    body = f"""{DESCRIBE}
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        local rows = c:query("SELECT * FROM {mysql_table}")
        return describe(rows[1]) .. "|" .. #rows[1].b .. "|" .. string.byte(rows[1].b, 2)
    """
    assert await on_message(ex, body) == (
        b"b=string:\x00\xff,big=number:4294967297,d=number:1.5,dec_=number:12.5,dt=string:2024-03-01 12:34:56,"
        b"flag=number:1,i=number:-7,s=string:h\xc3\xa9llo|2|255"
    )


async def test_mysql_escape(ex: Executor, mysql_conn: Any) -> None:
    body = r"""
        local mysql = require("mysql")
        return mysql.escape('I\'m busy.\r\n"Apple"') .. "|" .. mysql.escape("a\\b\26c\0d") .. "|" .. mysql.escape()
    """
    assert await on_message(ex, body) == b'I\\\'m busy.\\r\\n\\"Apple\\"|a\\\\b\\Zc\\0d|'


async def test_mysql_escaped_text_round_trips(ex: Executor, mysql_conn: Any) -> None:
    body = f"""
        local mysql = require("mysql")
        local c = mysql.new()
        c:connect({MYSQL_LUA})
        local rows = c:query("SELECT '" .. mysql.escape(payload) .. "' AS v")
        return rows[1].v
    """
    tricky = b'it\'s a "quote" \\ back\r\n\x1a\x00 end'
    assert await on_message(ex, body, tricky) == tricky


async def test_mysql_bad_sql_is_an_error_return(ex: Executor, mysql_conn: Any) -> None:
    body = f"""
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        local rows, err = c:query("SELEKT 1")
        local rows2, err2 = c:query("SELECT * FROM msgscript_no_such_table")
        local after = c:query("SELECT 3 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. tostring(rows2) .. "|" .. err2 .. "|" .. after[1].n
    """
    result = await on_message(ex, body)
    assert result is not None
    first, message, second, message2, after = result.split(b"|")
    assert (first, second, after) == (b"nil", b"nil", b"3")
    assert message.startswith(b"Error 1064 (42000): You have an error in your SQL syntax")
    assert message2 == b"Error 1146 (42S02): Table 'test.msgscript_no_such_table' doesn't exist"


async def test_mysql_bad_credentials(ex: Executor, mysql_conn: Any) -> None:
    body = """
        local c = require("mysql").new()
        local ok, err = c:connect({host = "127.0.0.1", user = "msgscript_nobody", password = "wrong"})
        local rows, err2 = c:query("SELECT 1")
        return tostring(ok) .. "|" .. err .. "|" .. err2
    """
    result = await on_message(ex, body)
    assert result is not None
    assert result.startswith(b"false|Error 1045 (28000): Access denied for user 'msgscript_nobody'@")
    assert result.endswith(b"(using password: YES)|connect required")


async def test_mysql_refused_port(ex: Executor) -> None:
    port = free_port()
    body = f"""
        local ok, err = require("mysql").new():connect({{host = "127.0.0.1", port = {port}}})
        return tostring(ok) .. "|" .. err
    """
    result = await on_message(ex, body)
    assert result is not None
    assert result.startswith(b"false|Error 2003: Can't connect to MySQL server on '127.0.0.1'")
    assert b"Connection refused" in result


async def test_mysql_charset_option(ex: Executor, mysql_conn: Any) -> None:
    body = """
        local mysql = require("mysql")
        local c = mysql.new()
        local ok, err = c:connect({host = "127.0.0.1", user = "root", database = "test", charset = "latin1"})
        local rows = c:query("SELECT @@character_set_client AS cs")
        local bad, err2 = mysql.new():connect({host = "127.0.0.1", user = "root", charset = "klingon"})
        return tostring(ok) .. "|" .. rows[1].cs .. "|" .. tostring(bad) .. "|" .. err2 .. "|" .. mysql._VERSION
    """
    assert await on_message(ex, body) == b"true|latin1|false|unknown charset klingon|0.0.0"


async def test_mysql_calls_without_a_connection(ex: Executor) -> None:
    body = """
        local c = require("mysql").new()
        local r1, e1 = c:query("SELECT 1")
        local k1, ke1 = c:set_keepalive(1000, 5)
        local closed = c:close()
        return tostring(r1) .. "|" .. e1 .. "|" .. tostring(k1) .. "|" .. ke1 .. "|" .. tostring(closed)
    """
    assert await on_message(ex, body) == b"nil|connect required|nil|connect required|true"


async def test_mysql_keepalive_empty_query_and_closed_client(ex: Executor, mysql_conn: Any) -> None:
    body = f"""
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        local kept = c:set_keepalive(10000, 10)
        local r, e = c:query("")
        c:close()
        local r2, e2 = c:query("SELECT 1")
        return tostring(kept) .. "|" .. tostring(r) .. "|" .. e .. "|" .. e2 .. "|" .. tostring(c:close())
    """
    assert await on_message(ex, body) == b"true|nil|query excepted|connect required|true"


async def test_mysql_argument_errors(ex: Executor) -> None:
    body = """
        local c = require("mysql").new()
        local ok1, e1 = pcall(function() local r = c:connect() return r end)
        local ok2, e2 = pcall(function() local r = c.query("SELECT 1") return r end)
        return e1 .. "|" .. e2
    """
    assert await on_message(ex, body) == (
        b"<string>:4: bad argument #2 to 'connect' (options excepted)|"
        b"<string>:5: bad argument #1 to 'query' (client expected, got string)"
    )


async def test_mysql_set_timeout_interrupts_a_query(ex: Executor, mysql_conn: Any) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("mysql").new()
        c:set_timeout(300)
        c:connect({MYSQL_LUA})
        local rows, err = c:query("SELECT SLEEP(20) AS {marker}")
        local after = c:query("SELECT 5 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. after[1].n
    """
    assert await on_message(ex, body) == b"nil|query timed out after 300ms|5"
    assert not mysql_query_running(mysql_conn, marker)


async def test_mysql_query_past_the_script_deadline_is_interrupted(ex: Executor, mysql_conn: Any) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        c:query("SELECT SLEEP(30) AS {marker}")
        return "not reached"
    """
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="script timed out after 1s"):
        await on_message(ex, body, timeout_s=1.0)
    assert time.monotonic() - started < 15  # the 30 s query did not run to its end
    assert await poll(lambda: not mysql_query_running(mysql_conn, marker))


async def test_mysql_unclosed_connection_is_closed_when_the_execution_ends(ex: Executor, mysql_conn: Any) -> None:
    body = f"""
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        return tostring(c:query("SELECT CONNECTION_ID() AS id")[1].id)
    """
    thread_id = int(await on_message(ex, body) or b"0")
    assert thread_id > 0
    assert await poll(lambda: not mysql_connection_exists(mysql_conn, thread_id))


async def test_mysql_connecting_again_closes_the_first_connection(ex: Executor, mysql_conn: Any) -> None:
    body = f"""
        local c = require("mysql").new()
        c:connect({MYSQL_LUA})
        local first = c:query("SELECT CONNECTION_ID() AS id")[1].id
        c:connect({MYSQL_LUA})
        local second = c:query("SELECT CONNECTION_ID() AS id")[1].id
        c:close()
        return first .. " " .. second
    """
    first, second = (await on_message(ex, body) or b"").split()
    assert first != second
    assert await poll(lambda: not mysql_connection_exists(mysql_conn, int(first)))


# postgres


async def test_postgres_connect_query_and_close(ex: Executor, pg_conn: Any, pg_table: str) -> None:
    body = f"""
        local postgres = require("postgres")
        local c = postgres.new()
        local ok, err = c:connect({POSTGRES_LUA})
        assert(ok == true and err == nil, err)
        local created, err2 = c:query("CREATE TABLE {pg_table} (id INT PRIMARY KEY, name TEXT)")
        assert(err2 == nil and #created == 0, err2)
        assert(#c:query("INSERT INTO {pg_table} VALUES (1, 'one'), (2, 'two')") == 0)
        local rows = c:query("SELECT id, name FROM {pg_table} ORDER BY id")
        local closed = c:close()
        return #rows .. rows[1].name .. rows[2].id .. tostring(closed)
    """
    assert await on_message(ex, body) == b"2one2true"
    assert pg_conn.execute(f"SELECT name FROM {pg_table} WHERE id = 2").fetchone() == ("two",)


async def test_postgres_value_types(ex: Executor, pg_conn: Any) -> None:
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


async def test_postgres_several_statements_give_the_first_result(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("SELECT 1 AS a; SELECT 2 AS b")
        return tostring(rows[1].a) .. tostring(rows[1].b) .. tostring(err)
    """
    assert await on_message(ex, body) == b"1nilnil"


async def test_postgres_rows_of_later_statements_are_read_and_dropped(
    ex: Executor, pg_conn: Any, pg_table: str
) -> None:
    # Rows stream one at a time: the later statements still run, their rows are not kept, and an error in any
    # statement is the query's error, with the connection ready for the next one.
    pg_conn.execute(f"CREATE TABLE {pg_table} (name text)")
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows = c:query("SELECT n FROM generate_series(1, 3) AS n; INSERT INTO {pg_table} (name) VALUES ('later');"
          .. " SELECT n FROM generate_series(1, 1000) AS n")
        local failed, err = c:query("SELECT 1; SELECT 1 / 0")
        local again = c:query("SELECT name FROM {pg_table}")
        return #rows .. rows[3].n .. "|" .. tostring(failed) .. "|" .. err .. "|" .. again[1].name
    """
    assert await on_message(ex, body) == b"33|nil|division by zero|later"


async def test_postgres_copy_is_refused_and_the_connection_closed(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("COPY (SELECT 1) TO STDOUT")
        local after, after_err = c:query("SELECT 1 AS one")
        return tostring(rows) .. "|" .. err .. "|" .. tostring(after) .. "|" .. after_err
    """
    assert await on_message(ex, body) == b"nil|COPY cannot be used in a query|nil|connect required"


async def test_postgres_escape(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local postgres = require("postgres")
        local c = postgres.new()
        c:connect({POSTGRES_LUA})
        local rows = c:query("SELECT '" .. postgres.escape(payload) .. "' AS v")
        return postgres.escape("it's") .. "|" .. rows[1].v
    """
    tricky = b"it's a \"quote\" \\ back\r\n'' end"
    assert await on_message(ex, body, tricky) == b"it''s|" + tricky


async def test_postgres_bad_sql_is_an_error_return(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("SELEKT 1")
        local rows2, err2 = c:query("SELECT nosuch FROM pg_class")
        local after = c:query("SELECT 3 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. tostring(rows2) .. "|" .. err2 .. "|" .. after[1].n
    """
    assert await on_message(ex, body) == (b'nil|syntax error at or near "SELEKT"|nil|column "nosuch" does not exist|3')


async def test_postgres_bad_credentials(ex: Executor, pg_conn: Any) -> None:
    body = """
        local c = require("postgres").new()
        local ok, err = c:connect({host = "127.0.0.1", user = "msgscript_nobody", database = "test"})
        local rows, err2 = c:query("SELECT 1")
        return tostring(ok) .. "|" .. err .. "|" .. err2
    """
    result = await on_message(ex, body)
    assert result is not None
    assert result.startswith(b"false|connection failed: ")
    assert result.endswith(b'role "msgscript_nobody" does not exist|connect required')


async def test_postgres_refused_port(ex: Executor) -> None:
    port = free_port()
    body = f"""
        local ok, err = require("postgres").new():connect({{host = "127.0.0.1", port = {port}, user = "x"}})
        return tostring(ok) .. "|" .. err
    """
    result = await on_message(ex, body)
    assert result is not None
    assert result.startswith(b"false|connection failed: ")
    assert b"Connection refused" in result


async def test_postgres_calls_without_a_connection(ex: Executor) -> None:
    body = """
        local c = require("postgres").new()
        local r1, e1 = c:query("SELECT 1")
        local k1, ke1 = c:set_keepalive(1000, 5)
        return tostring(r1) .. "|" .. e1 .. "|" .. tostring(k1) .. "|" .. ke1 .. "|" .. tostring(c:close())
    """
    assert await on_message(ex, body) == b"nil|connect required|nil|connect required|true"


async def test_postgres_keepalive_empty_query_and_closed_client(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        local kept = c:set_keepalive(10000, 10)
        local r, e = c:query("")
        c:close()
        local r2, e2 = c:query("SELECT 1")
        return tostring(kept) .. "|" .. tostring(r) .. "|" .. e .. "|" .. e2
    """
    assert await on_message(ex, body) == b"true|nil|query excepted|connect required"


async def test_postgres_set_timeout_interrupts_a_query(ex: Executor, pg_conn: Any) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("postgres").new()
        c:set_timeout(300)
        c:connect({POSTGRES_LUA})
        local rows, err = c:query("SELECT pg_sleep(20) AS {marker}")
        local after = c:query("SELECT 5 AS n")
        return tostring(rows) .. "|" .. err .. "|" .. after[1].n
    """
    assert await on_message(ex, body) == b"nil|query timed out after 300ms|5"
    assert not pg_query_running(pg_conn, marker)


async def test_postgres_query_past_the_script_deadline_is_interrupted(ex: Executor, pg_conn: Any) -> None:
    marker = unique("msgscript_sleep")
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        c:query("SELECT pg_sleep(30) AS {marker}")
        return "not reached"
    """
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="script timed out after 1s"):
        await on_message(ex, body, timeout_s=1.0)
    assert time.monotonic() - started < 15
    assert await poll(lambda: not pg_query_running(pg_conn, marker))


async def test_postgres_unclosed_connection_is_closed_when_the_execution_ends(ex: Executor, pg_conn: Any) -> None:
    body = f"""
        local c = require("postgres").new()
        c:connect({POSTGRES_LUA})
        return tostring(c:query("SELECT pg_backend_pid() AS pid")[1].pid)
    """
    pid = int(await on_message(ex, body) or b"0")
    assert pid > 0
    assert await poll(lambda: not pg_backend_exists(pg_conn, pid))


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


async def test_db_modules_through_a_daemon(
    make_daemon: DaemonFactory, nc: nats.NATS, pg_conn: Any, tmp_path: Path
) -> None:
    scripts = tmp_path / "db_scripts"
    scripts.mkdir()
    (scripts / "db.lua").write_text(DB_SCRIPT % POSTGRES_LUA)
    async with make_daemon(plugin_dir=PLUGIN_DIR, script_dir=str(scripts)):
        first = Reply.from_json((await nc.request("funcs.db", b"john", timeout=10)).data)
        # A second run gets a fresh scratch directory: CREATE TABLE does not find the first run's file.
        second = Reply.from_json((await nc.request("funcs.db", b"jane", timeout=10)).data)
    assert [r.payload for r in first.results or ()] == [b"JOHN"]
    assert [r.payload for r in second.results or ()] == [b"JANE"]
