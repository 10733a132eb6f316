"""The vault plugin (being written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgscript.plugins import PluginModules


class _Pending:
    name = "vault"

    def load(self, lua: Any, ctx: Any) -> object:
        raise RuntimeError("module 'vault' is not implemented yet")


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    modules.add(_Pending())
