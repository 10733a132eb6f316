"""The `mysql` Lua module: MySQL and MariaDB clients with the API of gluasql (the Go msgscript's db plugin).

    local mysql = require("mysql")
    local c = mysql.new()
    c:set_timeout(1000)                       -- ms, optional
    local ok, err = c:connect({host = "127.0.0.1", port = 3306, database = "test",
                               user = "root", password = "", charset = "utf8mb4"})
    local rows, err = c:query("SELECT id, name FROM users")   -- { {id = 1, name = "a"}, ... }
    c:set_keepalive(10000, 10)                -- accepted, nothing to do: connections live one execution
    c:close()
    local quoted = "'" .. mysql.escape(value) .. "'"

Rows are tables keyed by column name. NULL is nil; integer, floating and decimal columns are Lua
numbers; everything else (dates, times, text, binary) is the text or bytes the server sends. A
statement without a result set gives an empty table. Failures are `nil, message` (`false, message` from
connect), with the server's code: `Error 1146 (42S02): Table 'test.x' doesn't exist`.

Unlike gluasql, connect opens the connection at once, so bad credentials or an unreachable server are
reported by connect rather than by the first query.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.charset import charset_by_name
from pymysql.constants import FIELD_TYPE

from msgscript.lua.api import ModuleContext, error_text

from ._client import Row, ServerClient, ServerModule, option_port, option_text

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3306
SOCKET_GRACE_S = 2.0
"""The socket timeout outlasts the script's deadline by this much: it only catches a server that stopped
answering, while the watchdog's KILL QUERY ends queries on time."""
KILL_TIMEOUT_S = 2.0
ER_QUERY_INTERRUPTED = 1317
CR_SERVER_LOST = 2013

_NUMBER_TYPES = {
    FIELD_TYPE.TINY: int,
    FIELD_TYPE.SHORT: int,
    FIELD_TYPE.LONG: int,
    FIELD_TYPE.LONGLONG: int,
    FIELD_TYPE.INT24: int,
    FIELD_TYPE.YEAR: int,
    FIELD_TYPE.FLOAT: float,
    FIELD_TYPE.DOUBLE: float,
    FIELD_TYPE.DECIMAL: float,
    FIELD_TYPE.NEWDECIMAL: float,
}
"""The only conversions made: other columns stay the server's text (as bytes, which Lua strings are)."""

_ESCAPES = {
    b"\r": b"\\r",
    b"\n": b"\\n",
    b"\\": b"\\\\",
    b"'": b"\\'",
    b'"': b'\\"',
    b"\x1a": b"\\Z",
    b"\x00": b"\\0",
}
_SPECIAL = re.compile(rb"[\r\n\\'\"\x1a\x00]")


def escape(value: bytes) -> bytes:
    """Backslash-escape what cannot appear as is inside a quoted MySQL string literal."""
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], value)


def describe(exc: BaseException) -> str:
    """A driver error the way the Go MySQL driver words it: `Error <code> (<sqlstate>): <message>`."""
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and args[0]:
        sqlstate = getattr(exc, "sqlstate", None)
        state = f" ({sqlstate})" if sqlstate else ""
        return f"Error {args[0]}{state}: {args[1]}"
    if isinstance(exc, pymysql.err.InterfaceError):
        return "connection is closed"
    return error_text(exc)


class MySQLClient(ServerClient):
    """One `mysql.new()` client."""

    module = "mysql"
    driver_errors = (pymysql.err.MySQLError, OSError)

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._params: dict[str, Any] = {}
        self._thread_id = 0

    def connect(self, options: dict[str, object], limit_s: float) -> tuple[object, ...]:
        """Open the connection described by the options table: `(true)` or `(false, message)`."""
        params: dict[str, Any] = {
            "host": option_text(options, "host", DEFAULT_HOST),
            "port": option_port(options, DEFAULT_PORT),
            "user": option_text(options, "user") or None,
            "password": option_text(options, "password"),
            "database": option_text(options, "database") or None,
            "charset": option_text(options, "charset", "utf8mb4"),
        }
        if charset_by_name(params["charset"]) is None:
            return (False, f"unknown charset {params['charset']}")
        socket_timeout_s = self.ctx.remaining_s() + SOCKET_GRACE_S
        try:
            conn = pymysql.connect(
                **params,
                connect_timeout=limit_s,
                read_timeout=socket_timeout_s,
                write_timeout=socket_timeout_s,
                conv=dict(_NUMBER_TYPES),
                use_unicode=False,
                autocommit=True,
            )
        except self.driver_errors as exc:
            return (False, describe(exc))
        self.replace_connection(conn)
        self._params = params
        self._thread_id = conn.thread_id()
        return (True,)

    def stream_rows(self, conn: Any, sql: bytes) -> Generator[Row, None, None]:
        """Run one statement; rows are read from the server one at a time (an unbuffered cursor)."""
        cursor: Any = conn.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(sql)
            if cursor.description is None:
                return
            names = [column[0] for column in cursor.description]
            while (values := cursor.fetchone()) is not None:
                yield dict(zip(names, values, strict=True))
        except GeneratorExit:
            # Abandoned past the memory cap: closing the cursor would first read the rest of the result set;
            # the connection is closed instead.
            cursor = None
            raise
        finally:
            if cursor is not None:
                cursor.close()

    def interrupt(self, conn: Any) -> None:
        """Ask the server, over a second connection, to stop the query this client is waiting for."""
        killer = pymysql.connect(
            **self._params,
            connect_timeout=KILL_TIMEOUT_S,
            read_timeout=KILL_TIMEOUT_S,
            write_timeout=KILL_TIMEOUT_S,
        )
        try:
            with killer.cursor() as cursor:
                cursor.execute(f"KILL QUERY {int(self._thread_id)}")
        finally:
            killer.close()

    def interrupted(self, exc: BaseException) -> bool:
        """KILL QUERY's error, or the socket timeout that stands in when the server did not answer it."""
        return bool(exc.args) and exc.args[0] in (ER_QUERY_INTERRUPTED, CR_SERVER_LOST)

    def close_connection(self, conn: Any) -> None:
        """Say goodbye to the server (a connection the driver dropped after an error is closed already)."""
        if conn.open:
            conn.close()

    def describe(self, exc: BaseException) -> str:
        """Driver errors with their MySQL code."""
        return describe(exc)


module = ServerModule("mysql", MySQLClient, escape, {"_VERSION": "0.0.0", "_DEBUG": False})
