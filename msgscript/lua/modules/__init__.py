"""Lua modules scripts can `require`: the built-ins and installed plugins, found through entry points."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from msgscript.errors import ConfigError
from msgscript.lua.contract import LuaModule

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "msgscript.lua_modules"


def builtin_modules() -> dict[str, LuaModule]:
    """Every module registered in the `msgscript.lua_modules` entry-point group, by `require` name.

    Raises:
        ConfigError: two different modules claim the same name.
    """
    modules: dict[str, LuaModule] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        module: LuaModule = entry.load()
        name = getattr(module, "name", "") or entry.name
        known = modules.get(name)
        if known is not None and known is not module:
            raise ConfigError(f"two Lua modules are named {name!r} ({entry.value} and another)")
        modules[name] = module
        log.debug("Lua module %s from %s", name, entry.value)
    return modules
