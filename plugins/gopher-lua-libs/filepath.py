"""The `filepath` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "filepath"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'filepath' is not implemented yet")


module = _Pending()
