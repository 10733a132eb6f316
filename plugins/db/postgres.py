"""The `postgres` Lua module: PostgreSQL clients shaped like the `mysql` module.

The Go msgscript's README promised PostgreSQL but never shipped it; this module gives scripts the same
calls as `mysql`:

    local postgres = require("postgres")
    local c = postgres.new()
    c:set_timeout(1000)                       -- ms, optional
    local ok, err = c:connect({host = "127.0.0.1", port = 5432, database = "test",
                               user = "postgres", password = "", sslmode = "prefer"})
    local rows, err = c:query("SELECT id, name FROM users")   -- { {id = 1, name = "a"}, ... }
    c:close()
    local quoted = "'" .. postgres.escape(value) .. "'"

Rows are tables keyed by column name. NULL is nil; integer, floating and numeric columns are Lua numbers,
booleans are Lua booleans, bytea is its bytes; everything else (dates, json, arrays, uuid...) is the
server's text. A statement without a result set gives an empty table; a string of several statements
runs them all and gives the first one's rows. Every statement commits on its own (autocommit), as with
the other modules. Failures are `nil, message` (`false, message` from connect).
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types import bool as pg_bool
from psycopg.types import numeric, string

from msgscript.lua.runtime import error_text

from ._client import Row, ServerClient, ServerModule, option_port, option_text

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
CANCEL_TIMEOUT_S = 2.0
MIN_CONNECT_TIMEOUT_S = 2
"""libpq's floor for connect_timeout."""


def _adapters() -> AdaptersMap:
    """Loaders for the types Lua has a value for; any other type arrives as the server's text."""
    adapters = AdaptersMap(types=psycopg.postgres.types)
    adapters.register_loader(0, string.TextLoader)  # the fallback for every type without its own loader
    for name in ("int2", "int4", "int8", "oid"):
        adapters.register_loader(name, numeric.IntLoader)
    for name in ("float4", "float8", "numeric"):
        adapters.register_loader(name, numeric.FloatLoader)
    adapters.register_loader("bool", pg_bool.BoolLoader)
    adapters.register_loader("bytea", string.ByteaLoader)
    return adapters


_ADAPTERS = _adapters()


def escape(value: bytes) -> bytes:
    """Double the single quotes, so the value can sit inside a standard '...' string literal."""
    return value.replace(b"'", b"''")


def describe(exc: BaseException) -> str:
    """A driver error's first line (the server's message, without the position marker lines)."""
    return error_text(exc).split("\n", 1)[0]


class PostgresClient(ServerClient):
    """One `postgres.new()` client."""

    module = "postgres"
    driver_errors = (psycopg.Error, OSError)

    def connect(self, options: dict[str, object], limit_s: float) -> tuple[object, ...]:
        """Open the connection described by the options table: `(true)` or `(false, message)`."""
        params: dict[str, Any] = {
            "host": option_text(options, "host", DEFAULT_HOST),
            "port": option_port(options, DEFAULT_PORT),
        }
        for option, param in (("database", "dbname"), ("user", "user"), ("password", "password"), ("sslmode", "")):
            value = option_text(options, option)
            if value:
                params[param or option] = value
        try:
            conn = psycopg.connect(
                **params,
                connect_timeout=max(MIN_CONNECT_TIMEOUT_S, math.ceil(limit_s)),
                autocommit=True,
                prepare_threshold=None,
                context=_ADAPTERS,
            )
        except self.driver_errors as exc:
            return (False, describe(exc))
        self.replace_connection(conn)
        return (True,)

    def execute(self, conn: Any, sql: bytes) -> list[Row]:
        """Run the statement(s); rows come back as column → value tables."""
        with conn.cursor() as cursor:
            cursor.execute(sql)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def interrupt(self, conn: Any) -> None:
        """Send the server a cancel request for the running query."""
        cancel_safe = getattr(conn, "cancel_safe", None)
        if cancel_safe is not None:
            cancel_safe(timeout=CANCEL_TIMEOUT_S)
        else:
            conn.cancel()

    def interrupted(self, exc: BaseException) -> bool:
        """The server's answer to a cancel request."""
        return isinstance(exc, psycopg.errors.QueryCanceled)

    def close_connection(self, conn: Any) -> None:
        """Close the connection."""
        conn.close()

    def describe(self, exc: BaseException) -> str:
        """Driver errors as one line."""
        return describe(exc)


module = ServerModule("postgres", PostgresClient, escape)
