"""Checking that a Lua file compiles, without running any of it (the file store's hot reload refuses broken edits).

Scripts are compiled by Lua 5.1 as the executor runs them; a file's `--*` header lines are Lua comments, so the
file's own text is compiled and the line in the compiler's message is the line in the file.
"""

from __future__ import annotations

import re
import threading

import lupa.lua51 as lupa51

from msgscript.lua.runtime import error_text

_CHUNK = "=f"
"""The chunk name: Lua cuts long names, so a short one is given and taken out of the message again."""
_MESSAGE = re.compile(r"^f:(\d+): (.*)$", re.DOTALL)


class LuaSyntaxCheck:
    """Compiles texts on one Lua runtime of its own, from any thread (one at a time).

    An instance is the `SyntaxCheck` the file store takes: `check(text)` is None when the text compiles, else
    `(line, message)`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lua: lupa51.LuaRuntime | None = None

    def __call__(self, text: str) -> tuple[int, str] | None:
        """None when `text` compiles as Lua 5.1; else the line the compiler stopped at and its message."""
        source = text.encode("utf-8", "surrogateescape")
        with self._lock:
            if self._lua is None:
                self._lua = lupa51.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
            try:
                self._lua.compile(source, name=_CHUNK)
            except lupa51.LuaError as exc:
                message = error_text(exc)
            else:
                return None
        match = _MESSAGE.match(message)
        if match is None:
            return 0, message
        return int(match.group(1)), match.group(2)
