"""The `cmd` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "cmd"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'cmd' is not implemented yet")


module = _Pending()
