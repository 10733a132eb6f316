"""The msgscript exception hierarchy: one root, `MsgscriptError`, for every error msgscript raises on purpose.

The classes without a module below live here; the others are defined next to the code that raises them (some
need a third-party base) and are importable from there. Where an error must also be a builtin or library
exception for the `except` clauses around it, it inherits from both.

    MsgscriptError
    ├── ConfigError                   settings the daemon or a command cannot start with
    ├── ScriptParseError
    ├── StoreError
    │   └── LibraryNotFound
    ├── NoScripts
    ├── ScriptError
    │   └── ScriptTimeout
    ├── LockError
    ├── EtcdError
    │   ├── EtcdUnavailable
    │   └── WatchCompacted            etcd_watch
    ├── CatalogError                  catalog
    │   ├── InvalidCatalogRequest
    │   └── CatalogMiss
    ├── BodyError                     http.body
    │   ├── BodyTooLarge
    │   ├── BadBody
    │   │   └── UnsupportedCoding
    │   └── BodyTimedOut
    ├── BodyReadTimeout               http.protocol, also a TimeoutError
    ├── UnsupportedVersion            http.protocol, also aiohttp's HttpProcessingError
    ├── JobAbandoned                  executors.threads, also a TimeoutError
    ├── LuaArgumentError              lua.args
    ├── LuaMemoryError                lua.execution, also a MemoryError
    ├── RequestError                  lua.modules.http
    ├── _EncodeError                  lua.modules.json
    ├── NoNatsInTests                 testbed
    └── CommandFailed                 cli.options, also a click.ClickException
"""

from __future__ import annotations

from collections.abc import Sequence


class MsgscriptError(Exception):
    """Root of every error msgscript raises on purpose."""


class ConfigError(MsgscriptError):
    """Raised when the daemon or the CLI is given settings it cannot start with."""


class ScriptParseError(MsgscriptError):
    """Raised when a script file carries a header value that cannot be used."""


class StoreError(MsgscriptError):
    """Raised when the script store cannot answer."""


class LibraryNotFound(StoreError):
    """Raised when a script requires a library the store does not hold."""

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        super().__init__(message or f"library {name!r} not found")


class NoScripts(MsgscriptError):
    """Raised by the dispatcher when no script runs for a subject; `durable` tells that durable ones exist
    (they run from their stream, not for a core NATS message or an HTTP request)."""

    def __init__(self, subject: str, *, durable: bool = False) -> None:
        self.subject = subject
        self.durable = durable
        super().__init__(f"script not found for subject: {subject}")


class ScriptError(MsgscriptError):
    """Raised by an executor when the user's script fails; the message becomes the result error."""


class ScriptTimeout(ScriptError):
    """Raised by an executor when the script ran past its deadline."""


class LockError(MsgscriptError):
    """Raised when the cluster lock of a script cannot be taken because etcd failed; the text is the result error."""


class EtcdError(MsgscriptError):
    """Raised by the etcd client when etcd answers a request with an error, or the client cannot be used."""


class EtcdUnavailable(EtcdError):
    """Raised by the etcd client when no etcd endpoint could be reached (refused, unresolvable or silent) in time."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.endpoints = tuple(endpoint for endpoint, _ in failures)
        if len(failures) == 1:
            endpoint, reason = failures[0]
            message = f"etcd at {endpoint} is unreachable: {reason}"
        else:
            message = "no etcd endpoint is reachable: " + "; ".join(f"{e}: {r}" for e, r in failures)
        super().__init__(message)
