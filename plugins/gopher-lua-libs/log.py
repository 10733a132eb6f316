"""The `log` Lua module: loggers that write lines formatted like Go's log package.

`log.new([output [, prefix [, flags]]])` returns a logger writing to stdout by default; `output` is a file
path (opened for appending, created with mode 0644, relative to the execution's directory) or "STDOUT",
"-" or "STDERR". Methods: `:print(...)`, `:println(...)`, `:printf(format, ...)` (Go's Sprint, Sprintln
and Sprintf spacing and verbs applied to Lua values), `:set_prefix(s)`, `:set_output(output)` (returns
nothing or `err`), `:set_flags{date=, time=, microseconds=, utc=, longfile=, shortfile=, msgprefix=}`
(each a boolean, absent = false) and `:close()` (returns nothing or `err`). A line is
`<prefix><2009/01/23> <01:23:23.123123> <file:line:> <message>` with the parts the flags select, the
prefix after the date with msgprefix; a newline is added when the message lacks one. Files still open
are closed when the execution ends; an execution may hold 64 log files open at once.

Differences from gopher-lua-libs: `log.new` with a file it cannot open returns the logger (writing to
stdout, as there) and the error, where Go drops the error; `shortfile` and `msgprefix` are ours; `%d`,
`%o` and `%c` format integral numbers, where Go prints `%!d(lua.LNumber=5)`.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lupa.lua51 as lupa51

from msgscript.lua.api import HandleLimit, ModuleContext, lua_chunk, raw_getter

from ._shared_io import (
    TOO_MANY,
    GoFormatter,
    GoString,
    argument_error,
    check_string,
    check_table,
    errno_text,
    lua_type_name,
    path_error,
    resolve,
    text,
)

FILE_MODE = 0o644
FLAG_NAMES = ("date", "time", "microseconds", "utc", "longfile", "shortfile", "msgprefix")
STDOUT_NAMES = (b"-", b"STDOUT")
STDERR_NAME = b"STDERR"

# The print methods are Lua functions so that they can name the script line that called them
# (the longfile flag); they hand the line and the arguments to the Python half.
_LOGGER = b"""
local type, error, getinfo, match = type, error, debug.getinfo, string.match

local function location(mode)
  if mode == 0 then return nil end
  local info = getinfo(3, "Sl")
  if info == nil or info.currentline == nil or info.currentline < 0 then return "" end
  local source = info.short_src
  if mode == 2 then source = match(source, "[^/]*$") end
  return source .. ":" .. info.currentline .. ":"
end

local function check(logger, self, name)
  if self ~= logger then
    error("bad argument #1 to '" .. name .. "' (logger_ud expected, got " .. type(self) .. ")", 3)
  end
end

return function(impl)
  local emit, mode = impl.emit, impl.location_mode
  local logger = {}
  function logger.print(self, ...)
    check(logger, self, "print")
    emit("print", location(mode()), ...)
  end
  function logger.println(self, ...)
    check(logger, self, "println")
    emit("println", location(mode()), ...)
  end
  function logger.printf(self, format, ...)
    check(logger, self, "printf")
    local kind = type(format)
    if kind ~= "string" and kind ~= "number" then
      error("bad argument #2 to 'printf' (string expected, got " .. kind .. ")", 2)
    end
    emit("printf", location(mode()), format, ...)
  end
  logger.set_output = impl.set_output
  logger.set_prefix = impl.set_prefix
  logger.set_flags = impl.set_flags
  logger.close = impl.close
  return logger
end
"""


@dataclass(slots=True)
class Flags:
    """What goes in front of each message (Go's log flags, plus where the script called from)."""

    date: bool = False
    time: bool = False
    microseconds: bool = False
    utc: bool = False
    longfile: bool = False
    shortfile: bool = False
    msgprefix: bool = False

    @classmethod
    def from_table(cls, table: Any, function: str, rawget: Callable[[Any, object], Any]) -> Flags:
        """Read a flags table (raw: no metamethod of the script's runs); a non-boolean value is an error naming
        its key (`date: must be bool`)."""
        flags = cls()
        for name in FLAG_NAMES:
            value = rawget(table, name.encode())
            if value is None:
                continue
            if not isinstance(value, bool):
                raise argument_error(1, function, f"{name}: must be bool")
            setattr(flags, name, value)
        return flags

    def header(self, now: datetime.datetime) -> str:
        """The date and time part of a line, with its trailing space, or ""."""
        parts = []
        if self.date:
            parts.append(now.strftime("%Y/%m/%d"))
        if self.time or self.microseconds:
            clock = now.strftime("%H:%M:%S")
            if self.microseconds:
                clock += f".{now.microsecond:06d}"
            parts.append(clock)
        return "".join(part + " " for part in parts)


class Output:
    """Where a logger writes: the daemon's stdout or stderr, or a file opened for appending."""

    def __init__(self, stream: Any = None, fd: int | None = None, name: str = "") -> None:
        self._stream = stream
        self._fd = fd
        self._name = name
        self._closed = False

    @classmethod
    def open(cls, name: bytes, path: str) -> Output:
        """The output a script names: STDOUT, -, STDERR or a file path (resolved to `path`).

        Raises:
            OSError: the file cannot be opened.
        """
        if name in STDOUT_NAMES:
            return cls(stream=sys.stdout)
        if name == STDERR_NAME:
            return cls(stream=sys.stderr)
        # Non-blocking: opening a named pipe must not wait for a reader (it fails without one).
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, FILE_MODE)
        return cls(fd=fd, name=text(name))

    def write(self, data: bytes) -> None:
        """Write one line; errors are ignored, as Go's log package does."""
        try:
            if self._fd is not None and not self._closed:
                os.write(self._fd, data)
            elif self._stream is not None:
                self._stream.write(data.decode("utf-8", "replace"))
                self._stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> str | None:
        """Close a file output (stdout and stderr stay open); an error text if it was closed already."""
        if self._fd is None:
            return None
        if self._closed:
            return f"close {self._name}: file already closed"
        self._closed = True
        try:
            os.close(self._fd)
        except OSError as exc:
            return f"close {self._name}: {errno_text(exc)}"
        return None


class Logger:
    """One logger's state: output, prefix and flags."""

    def __init__(self, formatter: GoFormatter, files: HandleLimit) -> None:
        self.formatter = formatter
        self.output = Output(stream=sys.stdout)
        self.closer: Output | None = None
        """The output close() closes: the file last opened, none after a failed set_output (as in Go)."""
        self.prefix = ""
        self.flags = Flags()
        self._files = files
        """The log files the execution holds open, all loggers together."""

    def set_output(self, name: bytes, path: str) -> str | None:
        """Close the current file output and switch to `name`; on failure the old output stays (closed)."""
        self.close_output()
        self.closer = None
        is_file = name not in STDOUT_NAMES and name != STDERR_NAME
        if is_file and not self._files.acquire():
            return f"open {text(name)}: {TOO_MANY}"
        try:
            output = Output.open(name, path)
        except OSError as exc:
            if is_file:
                self._files.release()
            return path_error("open", name, exc)
        self.output = output
        if is_file:
            self.closer = output
        return None

    def close_output(self) -> str | None:
        """Close the file output close() is for, if any; the error text if it was closed already."""
        closer = self.closer
        if closer is None:
            return None
        error = closer.close()
        if error is None:
            self._files.release()
        return error

    def location_mode(self) -> int:
        """0: no file:line part, 1: the source as named, 2: its last path element only."""
        if self.flags.longfile:
            return 1
        return 2 if self.flags.shortfile else 0

    def emit(self, kind: bytes, where: bytes | None, args: tuple[object, ...]) -> None:
        """Format and write one line."""
        values: list[object] = list(args)
        formatter = self.formatter
        if kind == b"printf":
            format_text = _format_bytes(values.pop(0))
            if where:
                values.insert(0, GoString(text(where) + " "))
                format_text = b"%s" + format_text
            message = formatter.sprintf(format_text, values)
        elif kind == b"println":
            message = formatter.sprintln(([GoString(text(where))] if where else []) + values)
        else:
            message = formatter.sprint(([GoString(text(where) + " ")] if where else []) + values)
        self.output.write(self.line(message))

    def line(self, message: bytes) -> bytes:
        """Prefix and header in front of the message, and a final newline."""
        flags = self.flags
        now = datetime.datetime.now(datetime.UTC if flags.utc else None)
        prefix = self.prefix.encode("utf-8", "surrogateescape")
        header = flags.header(now).encode()
        head = header + prefix if flags.msgprefix else prefix + header
        if not message.endswith(b"\n"):
            message += b"\n"
        return head + message


def _format_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return check_string(value, 2, "printf")


class LogModule:
    """Builds the `log` table for one execution."""

    name = "log"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{new = ...}`."""
        factory = lua_chunk(lua, "gopher_log_logger", _LOGGER)
        formatter = GoFormatter(ctx.charge)
        rawget = raw_getter(lua)
        files = HandleLimit()

        def new(*args: object) -> object:
            logger = Logger(formatter, files)
            ctx.on_close(logger.close_output)
            error: str | None = None
            if args:
                name = check_string(args[0], 1, "new")
                error = logger.set_output(name, resolve(ctx, name))
            if len(args) > 1:
                logger.prefix = text(check_string(args[1], 2, "new"))
            if len(args) > 2:
                logger.flags = Flags.from_table(check_table(args[2], 3, "new"), "new", rawget)

            def emit(kind: bytes, where: bytes | None, *values: object) -> None:
                logger.emit(kind, where, values)

            def set_output(obj: object = None, output: object = None, *_: object) -> object:
                _check_logger(obj, "set_output")
                name = check_string(output, 2, "set_output")
                return logger.set_output(name, resolve(ctx, name))

            def set_prefix(obj: object = None, prefix: object = None, *_: object) -> None:
                _check_logger(obj, "set_prefix")
                logger.prefix = text(check_string(prefix, 2, "set_prefix"))

            def set_flags(obj: object = None, flags: object = None, *_: object) -> None:
                _check_logger(obj, "set_flags")
                logger.flags = Flags.from_table(check_table(flags, 2, "set_flags"), "set_flags", rawget)

            def close(obj: object = None, *_: object) -> object:
                _check_logger(obj, "close")
                return logger.close_output()

            impl = ctx.to_lua(
                {
                    "emit": emit,
                    "location_mode": logger.location_mode,
                    "set_output": set_output,
                    "set_prefix": set_prefix,
                    "set_flags": set_flags,
                    "close": close,
                }
            )
            handle = factory(impl)
            # The Go library ignores a file it cannot open (the logger writes to stdout); we say why.
            return (handle, error) if error else handle

        return {"new": new}


def _check_logger(value: object, function: str) -> None:
    if lupa51.lua_type(value) != "table":
        raise argument_error(1, function, f"logger_ud expected, got {lua_type_name(value)}")


module = LogModule()
