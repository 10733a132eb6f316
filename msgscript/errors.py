"""The msgscript exception hierarchy."""

from __future__ import annotations


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


class ScriptError(MsgscriptError):
    """Raised by an executor when the user's script fails; the message becomes the result error."""


class ScriptTimeout(ScriptError):
    """Raised by an executor when the script ran past its deadline."""


class LockError(MsgscriptError):
    """Raised when the cluster lock of a script cannot be taken because etcd failed; the text is the result error."""
