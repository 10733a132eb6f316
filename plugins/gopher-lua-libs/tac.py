"""The `tac` Lua module: read a file's lines from the last to the first, like the `tac` command.

`tac.open(path)` returns a scanner, or `nil, err`; `scanner:line()` returns the next line going up
(without its newline or a trailing carriage return), then nil; `scanner:close()` closes the file, which
also happens when the execution ends (an execution may hold 64 scanners open at once). A last line
without a final newline is a line; lines are read in blocks from the end, so a large file costs no more
memory than its longest line (which counts against the script's memory cap). Unlike the Go library,
lines longer than 8 KiB are read too (Go stops there), and opening a directory is an error (Go returns a
scanner without lines).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from msgscript.lua.api import HandleLimit, ModuleContext

from ._shared_io import TOO_MANY, check_self, check_string, open_for_reading, path_error, resolve, text

BLOCK_BYTES = 64 * 1024


class ReverseLines:
    """The lines of a seekable binary file, last first; what it reads is charged to the script's memory cap."""

    def __init__(self, file: BinaryIO, charge: Callable[[int], None]) -> None:
        self._file = file
        self._charge = charge
        self._size = self._position = file.seek(0, 2)
        self._pending: list[bytes] | None = []
        """The start of the file's part not yet split, last block first: a line whose beginning is not read yet."""
        self._lines: list[bytes] = []

    def next_line(self) -> bytes | None:
        """The next line going up, or None at the start of the file."""
        while not self._lines:
            if self._pending is None:
                return None
            if self._position == 0:
                first, self._pending = self._joined(self._pending), None
                if self._size == 0:
                    return None
                return _drop_cr(first)
            self._read_block()
        return _drop_cr(self._lines.pop())

    def _read_block(self) -> None:
        assert self._pending is not None
        start = max(0, self._position - BLOCK_BYTES)
        self._file.seek(start)
        block = self._file.read(self._position - start)
        self._charge(len(block))
        if self._position == self._size and block.endswith(b"\n"):
            # The newline ending the last line does not start another one.
            block = block[:-1]
        self._position = start
        if b"\n" not in block:
            # Still inside one long line: keep the pieces, joined once the line is whole.
            self._pending.append(block)
            return
        pieces = block.split(b"\n")
        pieces[-1] = self._joined([*self._pending, pieces[-1]])
        self._pending = [pieces[0]]
        self._lines = pieces[1:]

    def _joined(self, pending: list[bytes]) -> bytes:
        """The pieces of one line (last first) as one string, charged as the copy it is."""
        if len(pending) == 1:
            return pending[0]
        self._charge(sum(len(piece) for piece in pending))
        return b"".join(reversed(pending))


def _drop_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class TacModule:
    """Builds the `tac` table for one execution."""

    name = "tac"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{open = ...}`."""

        handles = HandleLimit()

        def open_(path: object = None, *_: object) -> object:
            name = check_string(path, 1, "open")
            if not handles.acquire():
                return (None, f"open {text(name)}: {TOO_MANY}")
            try:
                # Non-blocking, so that a named pipe without a writer does not hold the thread (it then fails
                # to seek, below); a regular file reads the same either way.
                fd = open_for_reading(resolve(ctx, name))
            except OSError as exc:
                handles.release()
                return (None, path_error("open", name, exc))
            try:
                file = os.fdopen(fd, "rb")
            except OSError as exc:  # a directory
                os.close(fd)
                handles.release()
                return (None, path_error("read", name, exc))
            try:
                lines = ReverseLines(file, ctx.charge)
            except OSError as exc:  # a pipe or socket, which cannot be read from the end
                file.close()
                handles.release()
                cause = OSError(errno.ESPIPE, os.strerror(errno.ESPIPE)) if exc.errno is None else exc
                return (None, path_error("read", name, cause))

            def close_file() -> None:
                if not file.closed:
                    file.close()
                    handles.release()

            ctx.on_close(close_file)

            def line(scanner: object = None, *_: object) -> object:
                check_self(scanner, "line", "tac")
                if file.closed:
                    return None
                return lines.next_line()

            def close(scanner: object = None, *_: object) -> None:
                check_self(scanner, "close", "tac")
                close_file()

            return {"line": line, "close": close}

        return {"open": open_}


module = TacModule()
