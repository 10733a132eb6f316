"""Helpers shared by the gopher-lua-libs modules that compute on text and values (no files, no sockets).

The argument checks are msgscript.lua.api's, under the names these modules use; numeric strings count
as numbers (gopher-lua's CheckNumber). Also the conversions between Lua strings (bytes) and Python text.
"""

from __future__ import annotations

from msgscript.lua.api import (
    LuaArgumentError,
    check_number,
    check_present,
    check_string,
    check_table,
    is_table,
    lua_type_name,
)

__all__ = [
    "LuaArgumentError",
    "argument_error",
    "check_number",
    "check_present",
    "check_string",
    "check_table",
    "is_table",
    "lua_bytes",
    "lua_type_name",
    "text",
]

# Raised as `argument_error(position, function, problem)`.
argument_error = LuaArgumentError


def text(value: bytes) -> str:
    """Lua bytes as str; bytes that are not UTF-8 survive as surrogates and come back unchanged."""
    return value.decode("utf-8", "surrogateescape")


def lua_bytes(value: str) -> bytes:
    """The inverse of `text`."""
    return value.encode("utf-8", "surrogateescape")
