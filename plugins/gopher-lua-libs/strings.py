"""The `strings` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "strings"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'strings' is not implemented yet")


module = _Pending()
