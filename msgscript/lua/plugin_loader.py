"""Plugins: Python modules that give Lua scripts more `require`-able modules.

A plugin is a Python file (`hello.py`) or package (a folder with `__init__.py`) that defines

    def preload(modules: PluginModules, envs: Mapping[str, str]) -> None

the counterpart of the Go msgscript's `Preload(L, envs)`. It runs once, at startup, and adds
LuaModule objects (see `msgscript.lua.api`) with `modules.add(...)`; `envs` is the daemon's
environment. `-plugin DIR` loads every plugin in DIR (not recursively, in name order); installed
packages offer theirs through the `msgscript.plugins` entry-point group, each entry naming a
`preload` function. Any failure is a ConfigError that stops the startup.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from msgscript.errors import ConfigError
from msgscript.lua.contract import LuaModule

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "msgscript.plugins"
PACKAGE_PREFIX = "msgscript_plugin_"
"""Plugins loaded from a directory are imported as `msgscript_plugin_<name>`."""

Preload = Callable[["PluginModules", Mapping[str, str]], object]


class PluginModules:
    """The modules the plugins add, by `require` name; handed to each plugin's `preload`."""

    def __init__(self, taken: Mapping[str, LuaModule] | None = None) -> None:
        self._taken = dict(taken or {})
        self.modules: dict[str, LuaModule] = {}
        self._source = ""

    def add(self, module: LuaModule) -> None:
        """Offer `module` to scripts as `require(module.name)`.

        Raises:
            ConfigError: the name is empty, or another plugin or a built-in module already has it.
        """
        name = getattr(module, "name", "")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"invalid plugin: {self._source}: a module without a name")
        if not callable(getattr(module, "load", None)):
            raise ConfigError(f"invalid plugin: {self._source}: module {name!r} has no load(lua, ctx) method")
        if name in self._taken or name in self.modules:
            raise ConfigError(f"invalid plugin: {self._source}: a Lua module named {name!r} already exists")
        self.modules[name] = module
        log.debug("Lua module %s from plugin %s", name, self._source)

    def run(self, source: str, preload: object, envs: Mapping[str, str]) -> None:
        """Call one plugin's preload function; `source` names the plugin in errors."""
        if not callable(preload):
            raise ConfigError(f"invalid plugin: {source}")
        self._source = source
        try:
            preload(self, envs)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"plugin {source} failed to preload: {exc}") from exc
        finally:
            self._source = ""


def plugin_files(directory: str) -> list[Path]:
    """The plugins in `directory`: `*.py` files and packages, skipping names starting with `_` or `.`."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"failed to read plugin directory {directory}: not a directory")
    found = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_file() and path.suffix == ".py":
            found.append(path)
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append(path)
    return found


def import_plugin(path: Path) -> ModuleType:
    """Import a plugin file or package under a name of its own, so a package's relative imports work."""
    stem = path.stem if path.is_file() else path.name
    name = PACKAGE_PREFIX + re.sub(r"\W", "_", stem)
    if path.is_file():
        spec = importlib.util.spec_from_file_location(name, path)
    else:
        init = path / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
    if spec is None or spec.loader is None:
        raise ConfigError(f"failed to open plugin file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"failed to open plugin file {path}: {type(exc).__name__}: {exc}") from exc
    return module


def _installed() -> Iterator[tuple[str, Any]]:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            yield f"{entry.name} ({entry.value})", entry.load()
        except Exception as exc:
            raise ConfigError(f"failed to open plugin {entry.value}: {type(exc).__name__}: {exc}") from exc


def load_plugins(directory: str, envs: Mapping[str, str], taken: Mapping[str, LuaModule]) -> dict[str, LuaModule]:
    """The Lua modules of the installed plugins and of the plugins in `directory` (if given).

    `taken` are the built-in modules, whose names a plugin may not reuse.

    Raises:
        ConfigError: a plugin cannot be imported, has no `preload`, fails in it, or adds a bad module.
    """
    modules = PluginModules(taken)
    for source, preload in _installed():
        modules.run(source, preload, envs)
    if directory:
        for path in plugin_files(directory):
            plugin = import_plugin(path)
            preload = getattr(plugin, "preload", None)
            if preload is None:
                raise ConfigError(f"failed to find Plugin symbol: {path} defines no preload(modules, envs)")
            modules.run(str(path), preload, envs)
            log.info("loaded plugin %s", path)
    return modules.modules
