"""Helpers shared by the gopher-lua-libs modules that compute on text and values (no files, no sockets).

Argument checks raising the texts a Lua library raises (`bad argument #1 to 'split' (string expected,
got nil)`), and the conversions between Lua strings (bytes) and Python text.
"""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lupa51

from msgscript.lua.runtime import lua_number_text


class LuaArgumentError(Exception):
    """A bad argument to a module function; it becomes a Lua error with this text."""


def lua_type_name(value: object) -> str:
    """The Lua type of a value handed to Python (`nil`, `boolean`, `number`, `string`, `table`, ...)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, bytes | str):
        return "string"
    return lupa51.lua_type(value) or "userdata"


def is_table(value: object) -> bool:
    """Whether a value handed to Python is a Lua table."""
    return bool(lupa51.lua_type(value) == "table")


def argument_error(position: int, function: str, message: str) -> LuaArgumentError:
    """`bad argument #N to 'f' (message)`."""
    return LuaArgumentError(f"bad argument #{position} to '{function}' ({message})")


def check_string(value: object, position: int, function: str) -> bytes:
    """A string argument: strings, and numbers in their Lua text (luaL_checkstring)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return lua_number_text(value).encode()
    raise argument_error(position, function, f"string expected, got {lua_type_name(value)}")


def check_number(value: object, position: int, function: str) -> float:
    """A number argument: numbers, and strings that read as one (gopher-lua's CheckNumber)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bytes):
        number = parse_lua_number(value)
        if number is not None:
            return number
    raise argument_error(position, function, f"number expected, got {lua_type_name(value)}")


def check_table(value: object, position: int, function: str) -> Any:
    """A table argument."""
    if not is_table(value):
        raise argument_error(position, function, f"table expected, got {lua_type_name(value)}")
    return value


def check_present(args: tuple[object, ...], position: int, function: str) -> object:
    """Argument `position` (1-based) of any type, nil included, which must have been passed (luaL_checkany)."""
    if len(args) < position:
        raise argument_error(position, function, "value expected")
    return args[position - 1]


def parse_lua_number(text: bytes) -> float | None:
    """A string's number as Lua's tonumber reads it (decimal or 0x hex, surrounding spaces allowed), or None."""
    stripped = text.strip(b" \t\n\v\f\r")
    if not stripped:
        return None
    try:
        body = stripped.decode("ascii")
    except UnicodeDecodeError:
        return None
    unsigned = body.lstrip("+-")
    if len(body) - len(unsigned) > 1:
        return None
    if unsigned[:2].lower() == "0x":
        try:
            return float(int(body, 16))
        except ValueError:
            return None
    # Python's float() also reads "inf", "nan" and "1_000", which Lua does not.
    if "_" in body or not unsigned or not (unsigned[0].isdigit() or unsigned[0] == "."):
        return None
    try:
        return float(body)
    except ValueError:
        return None


def text(value: bytes) -> str:
    """Lua bytes as str; bytes that are not UTF-8 survive as surrogates and come back unchanged."""
    return value.decode("utf-8", "surrogateescape")


def lua_bytes(value: str) -> bytes:
    """The inverse of `text`."""
    return value.encode("utf-8", "surrogateescape")
