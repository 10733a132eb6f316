"""The `log` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "log"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'log' is not implemented yet")


module = _Pending()
