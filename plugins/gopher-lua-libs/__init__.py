"""The gopher-lua-libs plugin: the modules of vadv/gopher-lua-libs that Go msgscript scripts use.

`cmd crypto filepath inspect ioutil log runtime storage strings tac tcp template time yaml`, each in
the file of its name, with the functions and `value, err` returns of the Go library.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgscript.lua.api import PluginModules

from . import cmd, crypto, filepath, inspect, ioutil, log, runtime, storage, strings, tac, tcp, template, time, yaml

MODULES = (cmd, crypto, filepath, inspect, ioutil, log, runtime, storage, strings, tac, tcp, template, time, yaml)


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    """Add every module of the set."""
    for module in MODULES:
        modules.add(module.module)
