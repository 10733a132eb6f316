"""The `tac` Lua module: read a file's lines from the last to the first, like the `tac` command.

`tac.open(path)` returns a scanner, or `nil, err`; `scanner:line()` returns the next line going up
(without its newline or a trailing carriage return), then nil; `scanner:close()` closes the file, which
also happens when the execution ends. A last line without a final newline is a line; lines are read in
blocks from the end, so a large file costs no more memory than its longest line. Unlike the Go
library, lines longer than 8 KiB are read too (Go stops there), and opening a directory is an error
(Go returns a scanner without lines).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from msgscript.lua.module import ModuleContext

from ._shared_io import check_self, check_string, path_error, resolve

BLOCK_BYTES = 64 * 1024


class ReverseLines:
    """The lines of a seekable binary file, last first."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._size = self._position = file.seek(0, 2)
        self._pending: bytes | None = b""
        """The start of the file's part not yet split: a line whose beginning is not read yet."""
        self._lines: list[bytes] = []

    def next_line(self) -> bytes | None:
        """The next line going up, or None at the start of the file."""
        while not self._lines:
            if self._pending is None:
                return None
            if self._position == 0:
                first, self._pending = self._pending, None
                if self._size == 0:
                    return None
                return _drop_cr(first)
            self._read_block()
        return _drop_cr(self._lines.pop())

    def _read_block(self) -> None:
        start = max(0, self._position - BLOCK_BYTES)
        self._file.seek(start)
        block = self._file.read(self._position - start)
        if self._position == self._size and block.endswith(b"\n"):
            # The newline ending the last line does not start another one.
            block = block[:-1]
        self._position = start
        pieces = (block + (self._pending or b"")).split(b"\n")
        self._pending = pieces[0]
        self._lines = pieces[1:]


def _drop_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


class TacModule:
    """Builds the `tac` table for one execution."""

    name = "tac"

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{open = ...}`."""

        def open_(path: object = None, *_: object) -> object:
            name = check_string(path, 1, "open")
            try:
                file = open(resolve(ctx, name), "rb")
            except IsADirectoryError as exc:
                return (None, path_error("read", name, exc))
            except OSError as exc:
                return (None, path_error("open", name, exc))
            ctx.on_close(file.close)
            lines = ReverseLines(file)

            def line(scanner: object = None, *_: object) -> object:
                check_self(scanner, "line", "tac")
                if file.closed:
                    return None
                return lines.next_line()

            def close(scanner: object = None, *_: object) -> None:
                check_self(scanner, "close", "tac")
                file.close()

            return {"line": line, "close": close}

        return {"open": open_}


module = TacModule()
