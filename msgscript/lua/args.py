"""Checks and conversions for the arguments a Python function receives from Lua, for modules and plugins.

Values arrive as lupa hands them over (bytes for strings, int or float for numbers, bool, None for nil,
lupa objects for tables, functions and userdata). The checks follow gopher-lua's: `check_*` take
`(value, position, function)`, where `position` is the 1-based argument number and `function` the name
Lua shows, return the value converted, and raise `LuaArgumentError` with the text scripts see
(`bad argument #1 to 'get' (string expected, got nil)`); `opt_*` return a default for nil or a missing
argument. The `to_*` conversions never raise: what does not convert gives the zero value, as
gopher-lua's ToString, ToNumber and ToInt do.

A function declared with `*args` can tell a missing argument from a nil one with `argument(args, n)`:
it gives NO_VALUE, which the checks report as `got no value`.

    def put(*args: object) -> object:
        key = check_string(argument(args, 1), 1, "put")
        ttl = opt_number(argument(args, 2), 2, "put", 0)
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeGuard, overload

import lupa.lua51 as lupa51

from msgscript.errors import MsgscriptError
from msgscript.lua.numbers import lua_number_text
from msgscript.lua.runtime import as_text

_LUA_SPACE = b" \t\n\v\f\r"


class _NoValue:
    """The type of NO_VALUE."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Final = _NoValue()
"""An argument the caller did not pass (see `argument`); its Lua type name is `no value`."""


class LuaArgumentError(MsgscriptError):
    """Raised when a function called from Lua gets a bad argument; the text is luaL_argerror's, which scripts see.

    Built from its parts, `LuaArgumentError(2, "write", "string expected, got nil")` reads
    `bad argument #2 to 'write' (string expected, got nil)`; a single text already worded that way is
    taken as it is.
    """

    @overload
    def __init__(self, position: int, function: str, problem: str) -> None: ...

    @overload
    def __init__(self, text: str, /) -> None: ...

    def __init__(self, position: int | str, function: str = "", problem: str = "") -> None:
        if isinstance(position, str):
            super().__init__(position)
        else:
            super().__init__(f"bad argument #{position} to '{function}' ({problem})")


def argument(args: tuple[object, ...], position: int) -> object:
    """Argument `position` (1-based) of a call taken as `*args`, or NO_VALUE when fewer were passed."""
    return args[position - 1] if len(args) >= position else NO_VALUE


def lua_type_name(value: object) -> str:
    """The Lua type of a value from Lua, as error messages name it: `nil`, `boolean`, `number`, `string`,
    `table`, `function`, `userdata`, `thread`, or `no value` for NO_VALUE. A Python str is a string."""
    if value is NO_VALUE:
        return "no value"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, bytes | str):
        return "string"
    kind: str | None = lupa51.lua_type(value)
    return kind or "userdata"


def is_table(value: object) -> bool:
    """Whether a value from Lua is a table."""
    return bool(lupa51.lua_type(value) == "table")


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether a value from Lua is a number (Python's bool is an int, but Lua's booleans are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_number(text: bytes) -> float | None:
    """A string's number as Lua's tonumber reads it (decimal, or hexadecimal after 0x; spaces around it
    allowed), or None when it holds none."""
    body = text.strip(_LUA_SPACE)
    # Python's float() and int() also read "inf", "nan" and "1_000", which Lua does not.
    if not body or b"_" in body or not body.isascii():
        return None
    unsigned = body.lstrip(b"+-")
    if len(body) - len(unsigned) > 1 or not unsigned:
        return None
    if unsigned[:2].lower() == b"0x":
        try:
            return float(int(body, 16))
        except ValueError:
            return None
    if not (unsigned[:1].isdigit() or unsigned[:1] == b"."):
        return None
    try:
        return float(body)
    except ValueError:
        return None


def _expected(position: int, function: str, kind: str, value: object) -> LuaArgumentError:
    return LuaArgumentError(position, function, f"{kind} expected, got {lua_type_name(value)}")


def check_string(value: object, position: int, function: str) -> bytes:
    """A string argument as luaL_checkstring takes it: a string, or a number in its Lua text (`200`, `1.5`).

    Strings from Lua are bytes; a Python str is not one and is refused.
    """
    if isinstance(value, bytes):
        return value
    if is_number(value):
        return lua_number_text(value).encode()
    raise _expected(position, function, "string", value)


def check_text(value: object, position: int, function: str) -> str:
    """`check_string` as a str; bytes that are not UTF-8 survive as surrogates (`as_text`)."""
    return as_text(check_string(value, position, function))


def opt_string(value: object, position: int, function: str, default: bytes = b"") -> bytes:
    """An optional string argument: `default` for nil or a missing argument, else as `check_string`."""
    if value is None or value is NO_VALUE:
        return default
    return check_string(value, position, function)


def check_number(value: object, position: int, function: str, *, numeric_strings: bool = True) -> float:
    """A number argument. Like gopher-lua's CheckNumber, a string that reads as a number is one too
    (`parse_number`); with `numeric_strings=False` only numbers are, as gopher-lua's CheckInt takes them."""
    if is_number(value):
        return float(value)
    if numeric_strings and isinstance(value, bytes):
        number = parse_number(value)
        if number is not None:
            return number
    raise _expected(position, function, "number", value)


def opt_number(value: object, position: int, function: str, default: float, *, numeric_strings: bool = True) -> float:
    """An optional number argument: `default` for nil or a missing argument, else as `check_number`."""
    if value is None or value is NO_VALUE:
        return default
    return check_number(value, position, function, numeric_strings=numeric_strings)


def check_bool(value: object, position: int, function: str) -> bool:
    """A boolean argument; nothing else will do (no truthiness), as in gopher-lua's CheckBool."""
    if isinstance(value, bool):
        return value
    raise _expected(position, function, "boolean", value)


def opt_bool(value: object, position: int, function: str, default: bool = False) -> bool:
    """An optional boolean argument: `default` for nil or a missing argument, else as `check_bool`."""
    if value is None or value is NO_VALUE:
        return default
    return check_bool(value, position, function)


def check_table(value: object, position: int, function: str) -> Any:
    """A table argument, returned as the lupa table (`.items()`, `t[b"key"]`)."""
    if not is_table(value):
        raise _expected(position, function, "table", value)
    return value


def check_self(value: object, function: str, type_name: str) -> Any:
    """The object a method was called on, which must be a table: `obj.m()` written for `obj:m()` fails
    with `bad argument #1 to 'm' (<type_name> expected, got nil)`, as the Go modules' methods do."""
    if not is_table(value):
        raise _expected(1, function, type_name, value)
    return value


def check_present(args: tuple[object, ...], position: int, function: str) -> object:
    """Argument `position` (1-based) of a call taken as `*args`, of any type and nil included, which must
    have been passed: `bad argument #N to 'f' (value expected)` otherwise (luaL_checkany)."""
    if len(args) < position:
        raise LuaArgumentError(position, function, "value expected")
    return args[position - 1]


def to_string(value: object) -> bytes:
    """A value as gopher-lua's ToString gives it: a string as it is, a number in its Lua text, else empty."""
    if isinstance(value, bytes):
        return value
    if is_number(value):
        return lua_number_text(value).encode()
    return b""


def to_text(value: object) -> str:
    """`to_string` as a str; bytes that are not UTF-8 survive as surrogates (`as_text`)."""
    return as_text(to_string(value))


def to_number(value: object) -> float:
    """A value as gopher-lua's ToNumber gives it: a number, a string's number (`parse_number`), else 0."""
    if is_number(value):
        return float(value)
    if isinstance(value, bytes):
        number = parse_number(value)
        if number is not None:
            return number
    return 0.0


def to_integer(value: object) -> int:
    """A value as gopher-lua's ToInt gives it: `to_number` truncated toward zero; 0 for NaN and infinities."""
    number = to_number(value)
    return int(number) if math.isfinite(number) else 0
