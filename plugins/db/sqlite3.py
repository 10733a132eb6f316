"""The `sqlite3` Lua module: SQLite databases with the API of gluasql (the Go msgscript's db plugin).

    local sqlite3 = require("sqlite3")
    local c = sqlite3.new()
    c:set_timeout(1000)                        -- ms, optional; also how long to wait for a locked database
    local ok, err = c:open("data.db", {cache = "shared", mode = "rwc"})
    local rows, err = c:query("SELECT id, name FROM users")    -- { {id = 1, name = "a"}, ... }
    c:close()

A relative path is relative to the execution's current directory (its scratch directory unless
lfs.chdir moved it); ":memory:" is a private in-memory database. The options `cache` (shared,
private) and `mode` (ro, rw, rwc, memory) are those of SQLite's URI filenames; gluasql's other options
(`_auth*`, `_loc`, `_mutex`, `_txlock`) are accepted and ignored. Unlike gluasql the options table may
be left out, and open reports a file that cannot be opened at once.

Rows are tables keyed by column name holding SQLite's stored values: integers and reals are Lua numbers,
text and blobs are strings, NULL is nil. A statement without a result set gives an empty table; every
statement commits on its own (autocommit).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Generator
from typing import Any

from msgscript.lua.api import ModuleContext

from ._client import (
    LuaArgumentError,
    Row,
    SqlClient,
    check_client,
    option_text,
    options_table,
    to_string,
)

MEMORY = ":memory:"
URI_OPTIONS = ("cache", "mode")


class SqliteClient(SqlClient):
    """One `sqlite3.new()` client."""

    module = "sqlite3"
    not_connected = "open required"
    driver_errors = (sqlite3.Error, OSError)

    def open(self, path: bytes, options: dict[str, object]) -> tuple[object, ...]:
        """Open (or create) the database file: `(true)` or `(false, message)`."""
        limit = self.limit_s()
        if limit <= 0:
            return (False, "open timed out before it started")
        name = path.decode("utf-8", "surrogateescape")
        query = {key: option_text(options, key) for key in URI_OPTIONS if option_text(options, key)}
        if name == MEMORY:
            target = "file::memory:"
        else:
            target = "file:" + urllib.parse.quote(os.path.join(self.ctx.workdir(), name), safe="/")
        if query:
            target += "?" + urllib.parse.urlencode(query)
        try:
            conn = sqlite3.connect(target, timeout=limit, isolation_level=None, uri=True)
        except self.driver_errors as exc:
            return (False, self.describe(exc))
        conn.text_factory = bytes
        self.replace_connection(conn)
        return (True,)

    def stream_rows(self, conn: Any, sql: bytes) -> Generator[Row, None, None]:
        """Run one statement; rows come as SQLite makes them."""
        cursor = conn.execute(sql.decode("utf-8", "replace"))
        try:
            if cursor.description is None:
                return
            names = [column[0] for column in cursor.description]
            for values in cursor:
                yield dict(zip(names, values, strict=True))
        finally:
            cursor.close()

    def interrupt(self, conn: Any) -> None:
        """Abort the running statement (sqlite3's interrupt may be called from another thread)."""
        conn.interrupt()

    def interrupted(self, exc: BaseException) -> bool:
        """sqlite3_interrupt's error."""
        return isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted"

    def close_connection(self, conn: Any) -> None:
        """Close the database."""
        conn.close()

    def empty_query(self) -> tuple[object, ...]:
        """An empty SQL string is an argument error, as in gluasql's sqlite3."""
        raise LuaArgumentError(2, "query", "query string required")

    def lua_object(self) -> dict[str, Callable[..., object]]:
        """The Lua client table: open, query, set_timeout, close."""

        def open_(this: object = None, path: object = None, options: object = None, *_: object) -> tuple[object, ...]:
            check_client(this, "open")
            name = to_string(path)
            if not name:
                raise LuaArgumentError(2, "open", "file path string excepted")
            return self.open(name, options_table(options, 3, "open", required=False))

        return {"open": open_, **self.methods()}


class SqliteModule:
    """The `sqlite3` Lua module."""

    name = "sqlite3"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{new = ...}` bound to this execution."""

        def new(*_: object) -> dict[str, Callable[..., object]]:
            return SqliteClient(ctx).lua_object()

        return {"new": new, "_VERSION": "0.0.0", "_DEBUG": False}


module = SqliteModule()
