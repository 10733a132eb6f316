"""The store a `msgscriptcli` store command works on, picked by the global flags (`-b`, `-e`, `--script`, …).

The commands reach scripts and libraries only through the Store protocol, whichever the backend; what
differs is how a store is opened, and how a failure reads (see `CommandStore.call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from msgscript import config
from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.errors import ConfigError, MsgscriptError, StoreError
from msgscript.store.base import Store
from msgscript.store.file_store import FileStore

T = TypeVar("T")

ETCD_REQUEST_TIMEOUT_S = 10.0
"""The bound on every etcd operation of a command once the store is open."""


def etcd_endpoints(urls: str) -> tuple[str, ...]:
    """The `-e` value (or ETCD_ENDPOINTS) split on commas."""
    return tuple(part.strip() for part in urls.split(",") if part.strip())


def etcd_settings(options: Mapping[str, str | None]) -> Settings:
    """Settings for the etcd backend from the global flags: endpoints, TLS files, user and password."""
    return Settings(
        backend="etcd",
        etcd_endpoints=etcd_endpoints(options.get("etcdurls") or ""),
        etcd_tls_ca_file=options.get("etcd_ca") or "",
        etcd_tls_cert_file=options.get("etcd_cert") or "",
        etcd_tls_key_file=options.get("etcd_key") or "",
        etcd_user=options.get("etcd_user") or "",
        etcd_password=options.get("etcd_password") or "",
    )


@dataclass(frozen=True, slots=True)
class CommandStore:
    """An open store, and whether it is etcd's (whose calls are bounded, and whose errors say why but not what
    failed: the command's own words go first, as in the Go CLI)."""

    store: Store
    is_etcd: bool = False

    async def call(self, failure: str, operation: Awaitable[T]) -> T:
        """Await one store operation.

        Raises:
            StoreError: it failed: `<failure>: <why>` on etcd (also after ETCD_REQUEST_TIMEOUT_S without an
                answer), the store's own text otherwise (it names the file or directory).
        """
        if not self.is_etcd:
            return await operation
        try:
            async with asyncio.timeout(ETCD_REQUEST_TIMEOUT_S):
                return await operation
        except TimeoutError:
            raise StoreError(f"{failure}: no answer from etcd within {ETCD_REQUEST_TIMEOUT_S:g}s") from None
        except MsgscriptError as exc:
            raise StoreError(f"{failure}: {exc}") from exc


@contextlib.asynccontextmanager
async def open_command_store(
    options: Mapping[str, str | None], holding: Literal["scripts", "libraries"]
) -> AsyncIterator[CommandStore]:
    """The `-b` store for a command on scripts or on libraries; for etcd, a store whose etcd answered.

    With `-b file` only the directory of what the command works on is read: the `lib` commands need no
    script directory, nor `add`, `list` and `rm` a library directory.

    Raises:
        ConfigError: unknown backend; a directory or file cannot be read; etcd cannot be reached
            (`failed to get script store: …`).
    """
    backend = options.get("backend") or config.DEFAULT_CLI_BACKEND
    if backend == "file":
        if holding == "scripts":
            files = FileStore(script_dir=options.get("script_dir") or "")
        else:
            files = FileStore(library_dir=options.get("library_dir") or "")
        await files.load()
        yield CommandStore(files)
        return
    if backend != "etcd":
        raise ConfigError(f"Unknown backend: {backend}")
    async with contextlib.AsyncExitStack() as stack:
        try:
            # Opening reads the store once (bounded): an unreachable etcd fails here, within seconds.
            store = await stack.enter_async_context(open_store(etcd_settings(options)))
        except MsgscriptError as exc:
            raise ConfigError(f"failed to get script store: {exc}") from exc
        yield CommandStore(store, is_etcd=True)


@contextlib.contextmanager
def quiet_etcd_client() -> Iterator[None]:
    """Silence the etcd client's outage logs for a command (unless debugging): the command reports it, once."""
    logger = logging.getLogger("msgscript.etcd_client")
    previous = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)
