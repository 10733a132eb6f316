"""The `runtime` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "runtime"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'runtime' is not implemented yet")


module = _Pending()
