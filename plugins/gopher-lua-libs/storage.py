"""The `storage` Lua module: a small persistent key/value store with expiring keys, in a JSON file.

`storage.open(path [, driver])` returns a store or `nil, err`; only the library's default "memory"
driver exists (the whole store lives in memory and is written to the file). Methods:
`:set(key, value [, ttl_s])` returns nothing or `err` (no ttl, nil or <= 0: the key does not expire);
`:get(key)` returns `value, found` (`nil, nil, err` if the stored value cannot be decoded);
`:keys()` the live keys, sorted; `:dump()` a table of live keys and values; `:sync()` writes the file
(through a temporary file and a rename) and drops expired keys; `:close()` syncs too. Values are any
JSON-able Lua value, encoded like the `json` module does.

One store exists per absolute path in the process, shared by every execution that opens it (a lock
keeps it consistent); the file is written on sync, close and when the last execution holding it ends,
and is read again when it is next opened. A store lives in the daemon's memory, so `set` counts the whole
store against the script's memory cap: a set that would take it past the cap fails with `not enough
memory` and stores nothing. The file format is the Go library's:
`{"data":{"<key>":{"value":"<base64 of the JSON value>","max_valid_at":<unix ns>}}}`. A relative
path lands in the execution's scratch directory, which goes away with it: stores meant to last need
absolute paths. Several daemon processes sharing one file do not see each other's changes.

Differences from gopher-lua-libs: a ttl may be fractional (Go truncates it to whole seconds, so 0.5
never expires there); `keys()` leaves out expired keys not yet synced away and is sorted; the "badger"
driver is not provided ("driver not found").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgscript.lua.api import ModuleContext, json_module

from ._shared_io import argument_error, check_self, check_string, path_error, resolve

DEFAULT_DRIVER = "memory"
NEVER_NS = 2**63 - 1
"""The expiry of a key set without a ttl: the largest Go int64."""
FILE_MODE = 0o644
_ENTRY_BYTES = 128
"""Charged per stored key, besides its text and value (the Python objects that hold them)."""
_LOAD_FACTOR = 4
"""Reading a store's file holds the text, its JSON objects and the entries: about this many times the file."""
_SYNC_FACTOR = 3
"""Writing the file makes copies of the values (base64, then the JSON text): about this many times the store."""


@dataclass(slots=True)
class _Entry:
    value: bytes
    """The value's JSON text."""
    expires_ns: int
    """Unix time in nanoseconds after which the entry is gone."""

    def is_live(self, now_ns: int) -> bool:
        return self.expires_ns > now_ns


def _entry_bytes(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_BYTES


class SharedStore:
    """The in-memory content of one store file, shared by all executions that opened it."""

    def __init__(self, path: str, entries: dict[str, _Entry]) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.entries = entries
        self.holders = 0
        self.dirty = False
        self.size = sum(_entry_bytes(key, entry.value) for key, entry in entries.items())
        """About how many bytes the entries take (they live in the daemon's memory, outside any script's)."""

    def set(self, key: str, value: bytes, ttl_s: float, charge: Callable[[int], None]) -> None:
        """Store the JSON text `value` under key, for ttl_s seconds (<= 0: for good).

        The whole store, with the new value, is charged to the script's memory cap first: a store cannot grow
        past what one execution may hold, however many executions fill it.

        Raises:
            MemoryError: the store would outgrow the cap (nothing is stored).
        """
        now = time.time_ns()
        expires = NEVER_NS if ttl_s <= 0 else min(NEVER_NS, now + int(ttl_s * 1e9))
        with self.lock:
            old = self.entries.get(key)
            size = self.size + _entry_bytes(key, value) - (0 if old is None else _entry_bytes(key, old.value))
            charge(size)
            self.entries[key] = _Entry(value, expires)
            self.size = size
            self.dirty = True

    def get(self, key: str) -> bytes | None:
        """The JSON text of a live key, or None."""
        with self.lock:
            entry = self.entries.get(key)
        if entry is None or not entry.is_live(time.time_ns()):
            return None
        return entry.value

    def live(self) -> dict[str, bytes]:
        """The live keys and their JSON texts."""
        now = time.time_ns()
        with self.lock:
            return {key: entry.value for key, entry in self.entries.items() if entry.is_live(now)}

    def sync(self) -> None:
        """Drop expired keys and write the file atomically.

        Raises:
            OSError: the file cannot be written.
        """
        now = time.time_ns()
        with self.lock:
            self.entries = {key: entry for key, entry in self.entries.items() if entry.is_live(now)}
            self.size = sum(_entry_bytes(key, entry.value) for key, entry in self.entries.items())
            document = {
                "data": {
                    key: {"value": base64.b64encode(entry.value).decode("ascii"), "max_valid_at": entry.expires_ns}
                    for key, entry in self.entries.items()
                }
            }
            temporary = self.path + ".tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file, separators=(",", ":"), ensure_ascii=False)
            os.replace(temporary, self.path)
            self.dirty = False


class StoreRegistry:
    """The stores open in this process, by absolute path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, SharedStore] = {}

    def acquire(self, path: str, charge: Callable[[int], None]) -> SharedStore:
        """The store for path, loading (or creating) its file if no execution holds it; count one holder.

        The store is charged to the opening script's memory cap (the file's size, when it is read).

        Raises:
            OSError: the file cannot be read or created.
            ValueError: the file is not a store.
            MemoryError: the store is larger than the cap leaves.
        """
        with self._lock:
            store = self._stores.get(path)
            if store is None:
                store = SharedStore(path, _read_entries(path, charge))
                store.sync()
                self._stores[path] = store
            else:
                charge(store.size)
            store.holders += 1
            return store

    def release(self, store: SharedStore) -> None:
        """One holder less; the last one writes the file and forgets the store (the next open reads it).

        Raises:
            OSError: the file cannot be written (the store then stays in memory, for the next sync).
        """
        with self._lock:
            store.holders -= 1
            if store.holders > 0:
                return
            # Under the registry lock: an execution opening the path now must read what was written.
            if store.dirty:
                store.sync()
            if self._stores.get(store.path) is store:
                del self._stores[store.path]


STORES = StoreRegistry()
"""Shared by every execution of the process, so that concurrent executions see one store per file."""


def _read_entries(path: str, charge: Callable[[int], None]) -> dict[str, _Entry]:
    try:
        # Non-blocking: a named pipe must not hold the thread (and the registry's lock) waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"invalid storage file {path}: not a regular file")
        # The file, the JSON objects parsed from it and the entries made of them.
        charge(_LOAD_FACTOR * info.st_size)
        raw = file.read()
    if not raw.strip():
        raise ValueError("unexpected end of JSON input")
    try:
        document = json.loads(raw)
        data = document.get("data") or {}
        return {
            key: _Entry(base64.b64decode(item["value"], validate=True), int(item["max_valid_at"]))
            for key, item in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"invalid storage file {path}: {exc}") from exc


class StorageModule:
    """Builds the `storage` table for one execution."""

    name = "storage"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{open = ...}`."""
        codec: Any = json_module.load(lua, ctx)
        encode, decode = codec["encode"], codec["decode"]

        def open_(path: object = None, driver: object = None, *_: object) -> object:
            name = check_string(path, 1, "open")
            if driver is not None and check_string(driver, 2, "open") != DEFAULT_DRIVER.encode():
                return (None, "driver not found")
            try:
                store = STORES.acquire(resolve(ctx, name), ctx.charge)
            except OSError as exc:
                return (None, path_error("open", name, exc))
            except ValueError as exc:
                return (None, str(exc))
            return _handle(store)

        def _handle(store: SharedStore) -> object:
            ctx.on_close(lambda: STORES.release(store))

            def set_(obj: object = None, key: object = None, *rest: object) -> object:
                check_self(obj, "set", "storage_ud")
                name = check_string(key, 2, "set")
                if not rest:
                    raise argument_error(3, "set", "value expected")
                ttl = rest[1] if len(rest) > 1 else None
                if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)):
                    raise argument_error(4, "set", "must be integer or nil")
                encoded = encode(rest[0])
                if encoded[0] is None:
                    return encoded[1]
                store.set(_key(name), encoded[0], float(ttl or 0), ctx.charge)
                return None

            def get(obj: object = None, key: object = None, *_: object) -> object:
                check_self(obj, "get", "storage_ud")
                value = store.get(_key(check_string(key, 2, "get")))
                if value is None:
                    return (None, False)
                decoded = decode(value)
                if len(decoded) > 1:
                    return (None, None, decoded[1])
                return (decoded[0], True)

            def keys(obj: object = None, *_: object) -> object:
                check_self(obj, "keys", "storage_ud")
                return sorted(store.live())

            def dump(obj: object = None, *_: object) -> object:
                check_self(obj, "dump", "storage_ud")
                table = lua.table()
                for key, value in store.live().items():
                    decoded = decode(value)
                    if len(decoded) > 1:
                        return (None, decoded[1])
                    table[key.encode("utf-8")] = decoded[0]
                return table

            def sync(obj: object = None, *_: object) -> object:
                check_self(obj, "sync", "storage_ud")
                ctx.charge(_SYNC_FACTOR * store.size)
                return _sync(store)

            def close(obj: object = None, *_: object) -> object:
                # Like the Go library, a closed store keeps working until the execution ends.
                check_self(obj, "close", "storage_ud")
                ctx.charge(_SYNC_FACTOR * store.size)
                return _sync(store)

            return {"set": set_, "get": get, "keys": keys, "dump": dump, "sync": sync, "close": close}

        return {"open": open_}


def _key(name: bytes) -> str:
    """A key as the file stores it: JSON text, so bytes that are not UTF-8 become U+FFFD (as in Go)."""
    return name.decode("utf-8", "replace")


def _sync(store: SharedStore) -> str | None:
    try:
        store.sync()
    except OSError as exc:
        return path_error("open", exc.filename or store.path, exc)
    return None


module = StorageModule()
