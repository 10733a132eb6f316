"""The db plugin: SQL clients for Lua scripts, modules `mysql`, `sqlite3` and `postgres` (API of tengattack/gluasql)."""

from __future__ import annotations

from collections.abc import Mapping

from msgscript.lua.api import PluginModules

from . import mysql, postgres, sqlite3


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    """Add the three SQL modules."""
    for module in (mysql, sqlite3, postgres):
        modules.add(module.module)
