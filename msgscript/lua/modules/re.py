"""The `re` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "re"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 're' is not implemented yet")


module = _Pending()
