"""The `yaml` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "yaml"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'yaml' is not implemented yet")


module = _Pending()
