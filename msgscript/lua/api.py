"""The public API for Lua modules and plugins: everything a plugin imports from msgscript comes from here.

- The contract: `LuaModule` (what a plugin adds), `ModuleContext` (what `load` gets for one execution),
  `Services` (`ctx.services`: the daemon's shared clients), `PluginModules` (what `preload` gets) and
  `lua_chunk` (a module's own Lua code).
- Argument checks and conversions with gopher-lua's errors (`check_string`, `opt_number`, `to_text`, ...;
  see msgscript.lua.args).
- Text as the Go msgscript writes it: `lua_number_text`, `go_float_text`, `error_text`, `as_text`.
- Staying within the execution's limits: `LoopCharges`, `HandleLimit`, `raw_getter`, `raw_text` (see
  docs/plugins.md, "Rules for modules").
- The built-in `json` module, for plugins that encode and decode as it does: `json_module`, and
  `json_decode_bytes` to charge a decode before it is made.

msgscript's own modules import these names from where they are defined.
"""

from __future__ import annotations

from msgscript.lua.args import (
    NO_VALUE,
    LuaArgumentError,
    argument,
    check_bool,
    check_number,
    check_present,
    check_self,
    check_string,
    check_table,
    check_text,
    is_number,
    is_table,
    lua_type_name,
    opt_bool,
    opt_number,
    opt_string,
    parse_number,
    to_integer,
    to_number,
    to_string,
    to_text,
)
from msgscript.lua.contract import LuaModule, ModuleContext, lua_chunk
from msgscript.lua.modules.json import decode_bytes as json_decode_bytes
from msgscript.lua.modules.json import module as json_module
from msgscript.lua.modules.support import HandleLimit, LoopCharges, raw_getter, raw_text
from msgscript.lua.numbers import go_float_text, lua_number_text
from msgscript.lua.plugin_loader import PluginModules
from msgscript.lua.runtime import as_text, error_text
from msgscript.services import Services

__all__ = [
    "NO_VALUE",
    "HandleLimit",
    "LoopCharges",
    "LuaArgumentError",
    "LuaModule",
    "ModuleContext",
    "PluginModules",
    "Services",
    "argument",
    "as_text",
    "check_bool",
    "check_number",
    "check_present",
    "check_self",
    "check_string",
    "check_table",
    "check_text",
    "error_text",
    "go_float_text",
    "is_number",
    "is_table",
    "json_decode_bytes",
    "json_module",
    "lua_chunk",
    "lua_number_text",
    "lua_type_name",
    "opt_bool",
    "opt_number",
    "opt_string",
    "parse_number",
    "raw_getter",
    "raw_text",
    "to_integer",
    "to_number",
    "to_string",
    "to_text",
]
