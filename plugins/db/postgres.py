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
import select
import time
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.types import bool as pg_bool
from psycopg.types import numeric, string

from msgscript.lua.api import error_text

from ._client import Row, ServerClient, ServerModule, option_port, option_text

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
CANCEL_TIMEOUT_S = 2.0
MIN_CONNECT_TIMEOUT_S = 2
"""libpq's floor for connect_timeout."""
SOCKET_GRACE_S = 2.0
"""How long past the script's deadline a query waits for a server that stopped answering (the watchdog's cancel
normally ends the query at the deadline)."""


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


_COPY_STATUSES = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)


class _CopyError(psycopg.ProgrammingError):
    """A query started a COPY, which a script cannot feed or read."""


class _Waiter:
    """Waits on a non-blocking libpq connection without holding the thread past a deadline (the query's own
    limit is enforced by the client's watchdog; this one only catches a server that stopped answering)."""

    def __init__(self, pgconn: Any, limit_s: float) -> None:
        self._pgconn = pgconn
        self._deadline = time.monotonic() + limit_s
        self._poller = select.poll()

    def _wait(self, events: int) -> None:
        left = self._deadline - time.monotonic()
        self._poller.register(self._pgconn.socket, events)
        try:
            ready = left > 0 and self._poller.poll(left * 1000)
        finally:
            self._poller.unregister(self._pgconn.socket)
        if not ready:
            raise psycopg.OperationalError("the server stopped answering")

    def sent(self) -> None:
        """Wait until the query is sent."""
        while self._pgconn.flush():
            self._wait(select.POLLOUT)

    def result(self) -> Any:
        """The next result, or None once the query is done."""
        while True:
            self._pgconn.consume_input()
            if not self._pgconn.is_busy():
                return self._pgconn.get_result()
            self._wait(select.POLLIN)


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

    def stream_rows(self, conn: Any, sql: bytes) -> Generator[Row, None, None]:
        """Run the statement(s); the first one's rows are yielded, the rows of later statements read and dropped.

        libpq would hold a whole result set in memory before the first row could be looked at, so the query
        runs in single-row mode (on the simple protocol, which allows several statements).
        """
        pgconn = conn.pgconn
        transformer = Transformer(conn)
        pgconn.send_query(sql)
        pgconn.set_single_row_mode()
        wait = _Waiter(pgconn, self.ctx.remaining_s() + SOCKET_GRACE_S)
        try:
            wait.sent()
            error = yield from self._results(conn, transformer, wait)
        except (psycopg.OperationalError, _CopyError):
            # Left in the middle of a query (a silent server, a COPY): the connection cannot be reused.
            self.close()
            raise
        # The server's own error (the query's, or the watchdog's cancel): the connection is ready again.
        if error is not None:
            raise error

    def _results(self, conn: Any, transformer: Any, wait: _Waiter) -> Generator[Row, None, psycopg.Error | None]:
        """Yield the first statement's rows; returns the first error the server reported, once the query is done."""
        names: list[str] | None = None
        first_done = False
        error: psycopg.Error | None = None
        while (result := wait.result()) is not None:
            status = result.status
            if status == pq.ExecStatus.SINGLE_TUPLE:
                if first_done:
                    continue
                if names is None:
                    names = [result.fname(i).decode(conn.info.encoding, "replace") for i in range(result.nfields)]
                    transformer.set_pgresult(result, set_loaders=True)
                else:
                    transformer.set_pgresult(result, set_loaders=False)
                yield dict(zip(names, transformer.load_row(0, tuple), strict=True))
            elif status == pq.ExecStatus.FATAL_ERROR:
                error = error or psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
            elif status in _COPY_STATUSES:
                raise _CopyError("COPY cannot be used in a query")
            else:
                first_done = True
        return error

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
