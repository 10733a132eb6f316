"""The `etcd` Lua module (being written: requiring it raises an error until then)."""

from __future__ import annotations

from typing import Any


class _Pending:
    name = "etcd"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'etcd' is not implemented yet")


module = _Pending()
