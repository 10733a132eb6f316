"""What the three SQL modules share: argument checks, the client object and the query watchdog.

A client object is a Lua table of methods (`client:query(sql)` passes the table first) over one
`SqlClient`, which owns at most one connection. Every call that waits on the database is bounded by
the client's own timeout (`client:set_timeout(ms)`) and by the script's deadline, whichever comes
first: connecting gets it as its timeout, and a query that outlasts it is interrupted on the server by
a watchdog thread. A connection the script leaves open is closed when the execution ends.

Rows are fetched one by one and charged to the script's memory cap as they arrive: a result set past the
cap fails the query with `not enough memory` and closes the connection (its result is half read).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from msgscript.lua.api import (
    LuaArgumentError,
    ModuleContext,
    check_self,
    error_text,
    is_table,
    to_number,
    to_string,
    to_text,
)

__all__ = [
    "LuaArgumentError",
    "Row",
    "row_bytes",
    "ServerClient",
    "ServerModule",
    "SqlClient",
    "check_client",
    "milliseconds",
    "option_port",
    "option_text",
    "options_table",
    "to_string",
]

log = logging.getLogger(__name__)

Row = dict[str, object]

ROW_BYTES = 96
VALUE_BYTES = 64
"""Charged per row fetched (its dict) and per value in it (the Python object and its dict entry), besides the
value's text: rows are charged to the script's memory cap one by one as they arrive."""


def row_bytes(row: Row) -> int:
    """About how many bytes of Python objects one fetched row takes."""
    size = ROW_BYTES
    for value in row.values():
        size += VALUE_BYTES + (len(value) if isinstance(value, bytes | str) else 0)
    return size


def check_client(value: object, function: str) -> None:
    """Raise the Lua error for a method called with `.` instead of `:` (no client table first)."""
    check_self(value, function, "client")


def options_table(value: object, position: int, function: str, *, required: bool = True) -> dict[str, object]:
    """The string-keyed entries of an options table; raises the Lua argument error when it is not a table."""
    if value is None and not required:
        return {}
    if not is_table(value):
        raise LuaArgumentError(position, function, "options excepted")
    options: dict[str, object] = {}
    for key, item in value.items():  # type: ignore[attr-defined]
        if isinstance(key, bytes):
            options[key.decode("utf-8", "replace")] = item
    return options


def option_text(options: dict[str, object], key: str, default: str = "") -> str:
    """A string option (numbers are accepted and written as Lua writes them)."""
    return to_text(options.get(key)) or default


def option_port(options: dict[str, object], default: int) -> int:
    """The `port` option: a number, or a string holding one; anything else (or 0) means the default."""
    port = int(to_number(options.get("port")))
    return port if 0 < port < 65536 else default


def milliseconds(seconds: float) -> str:
    """A duration for an error message, in whole milliseconds."""
    return f"{round(seconds * 1000)}ms"


class SqlClient(ABC):
    """The state behind one Lua client object: its connection (if any) and its own timeout."""

    module: ClassVar[str]
    """The Lua module's name, for logs."""
    not_connected: ClassVar[str] = "connect required"
    """What query answers before a connection exists (gluasql's text)."""
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    """The driver exceptions that become `nil, message` returns instead of Lua errors."""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self.timeout_s: float | None = None
        self.conn: Any = None
        ctx.on_close(self.close)

    # What each database provides.

    @abstractmethod
    def stream_rows(self, conn: Any, sql: bytes) -> Generator[Row, None, None]:
        """Run one query on the connection and yield its rows, column name → value, as the driver reads them
        (nothing for a statement without a result set).

        `execute` charges each row to the script's memory cap before it asks for the next, so a driver must
        not buffer a whole result set first. Closed before its end, the stream was abandoned because the rows
        passed the cap: the connection is closed next and need not be left usable.
        """

    @abstractmethod
    def interrupt(self, conn: Any) -> None:
        """Stop the query running on the connection; called from the watchdog thread."""

    @abstractmethod
    def interrupted(self, exc: BaseException) -> bool:
        """Whether the driver error is the query being stopped by `interrupt` (rather than failing on its own)."""

    @abstractmethod
    def close_connection(self, conn: Any) -> None:
        """Close the connection."""

    def describe(self, exc: BaseException) -> str:
        """The message a script gets for a driver error."""
        return error_text(exc)

    # Shared behaviour.

    def execute(self, conn: Any, sql: bytes) -> list[Row]:
        """Run one query on the connection and return its rows (empty for statements without a result set).

        Each row is charged (`row_bytes`) as it arrives; ctx.charge raises MemoryError at the script's cap.
        """
        rows: list[Row] = []
        with contextlib.closing(self.stream_rows(conn, sql)) as stream:
            for row in stream:
                self.ctx.charge(row_bytes(row))
                rows.append(row)
        return rows

    def limit_s(self) -> float:
        """How long the next wait may last: the client's timeout, never past the script's deadline."""
        remaining = self.ctx.remaining_s()
        return remaining if self.timeout_s is None else min(self.timeout_s, remaining)

    def close(self) -> str | None:
        """Close the connection if there is one; returns the error text if closing failed."""
        conn, self.conn = self.conn, None
        if conn is None:
            return None
        try:
            self.close_connection(conn)
        except self.driver_errors as exc:
            return self.describe(exc)
        return None

    def replace_connection(self, conn: Any) -> None:
        """Adopt a new connection, closing the one the client had (connecting twice must not leak)."""
        self.close()
        self.conn = conn

    def query(self, sql: bytes) -> tuple[object, ...]:
        """Run `sql` under the watchdog: `(rows,)` or `(nil, message)`."""
        conn = self.conn
        if conn is None:
            return (None, self.not_connected)
        limit = self.limit_s()
        if limit <= 0:
            return (None, "query timed out before it started")
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            try:
                self.interrupt(conn)
            except self.driver_errors as exc:
                # The query then ends by the socket timeout or the server; nothing else can be done here.
                log.warning("could not interrupt a timed-out %s query: %s", self.module, error_text(exc))

        watchdog = threading.Timer(limit, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            rows = self.execute(conn, sql)
        except self.driver_errors as exc:
            if fired.is_set() and self.interrupted(exc):
                return (None, f"query timed out after {milliseconds(limit)}")
            return (None, self.describe(exc))
        except MemoryError:
            # The rows passed the memory cap with the result half read: the connection cannot be reused.
            self.close()
            raise
        finally:
            watchdog.cancel()
            watchdog.join()
        return (rows,)

    def set_timeout(self, ms: object) -> None:
        """Bound later connects and queries to `ms` milliseconds (0 or less: only the script's deadline)."""
        value = to_number(ms)
        self.timeout_s = value / 1000 if value > 0 else None

    def methods(self) -> dict[str, Callable[..., object]]:
        """The Lua methods every client has: query, set_timeout and close."""

        def query(this: object = None, sql: object = None, *_: object) -> tuple[object, ...]:
            check_client(this, "query")
            text = to_string(sql)
            if self.conn is not None and not text:
                return self.empty_query()
            return self.query(text)

        def set_timeout(this: object = None, ms: object = None, *_: object) -> None:
            check_client(this, "set_timeout")
            self.set_timeout(ms)

        def close(this: object = None, *_: object) -> tuple[object, ...]:
            check_client(this, "close")
            failure = self.close()
            return (True,) if failure is None else (False, failure)

        return {"query": query, "set_timeout": set_timeout, "close": close}

    def empty_query(self) -> tuple[object, ...]:
        """What query answers for an empty SQL string (gluasql's mysql text, sic)."""
        return (None, "query excepted")


class ServerClient(SqlClient):
    """A client of a database server (mysql, postgres): `connect(options)` and `set_keepalive` as well."""

    @abstractmethod
    def connect(self, options: dict[str, object], limit_s: float) -> tuple[object, ...]:
        """Open the connection described by the options table within limit_s (> 0): `(true)` or `(false, message)`."""

    def lua_object(self) -> dict[str, Callable[..., object]]:
        """The Lua client table: connect, query, set_timeout, set_keepalive, close."""

        def connect(this: object = None, options: object = None, *_: object) -> tuple[object, ...]:
            check_client(this, "connect")
            table = options_table(options, 2, "connect")
            limit = self.limit_s()
            if limit <= 0:
                return (False, "connect timed out before it started")
            return self.connect(table, limit)

        def set_keepalive(this: object = None, *_: object) -> tuple[object, ...]:
            check_client(this, "set_keepalive")
            # There is no pool to keep the connection in: it belongs to this execution.
            return (True,) if self.conn is not None else (None, self.not_connected)

        return {"connect": connect, "set_keepalive": set_keepalive, **self.methods()}


class ServerModule:
    """A Lua module offering `new()` for one kind of ServerClient, and `escape(s)` for its string literals."""

    inline_safe = False

    def __init__(
        self,
        name: str,
        client: Callable[[ModuleContext], ServerClient],
        escape: Callable[[bytes], bytes],
        fields: dict[str, object] | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._escape = escape
        self._fields = dict(fields or {})

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{new = ..., escape = ...}` bound to this execution."""

        def new(*_: object) -> dict[str, Callable[..., object]]:
            return self._client(ctx).lua_object()

        def escape(value: object = None, *_: object) -> bytes:
            return self._escape(to_string(value))

        return {"new": new, "escape": escape, **self._fields}
