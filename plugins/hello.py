"""The `hello` plugin: `require("hello").print()` prints and returns `Hello from a Go plugin!`.

The text is the Go msgscript's, kept so that scripts written for it (examples/hello_plugin.lua) give the
same answer. This file is also the smallest example of a plugin (see docs/plugins.md).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from msgscript.lua.api import ModuleContext, PluginModules

GREETING = "Hello from a Go plugin!"


class Hello:
    """The `hello` Lua module."""

    name = "hello"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        def hello_print() -> str:
            print(GREETING, file=sys.stdout, flush=True)
            return GREETING

        return {"print": hello_print}


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    """Add the `hello` module."""
    modules.add(Hello())
