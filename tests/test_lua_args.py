"""msgscript.lua.args: the argument checks and conversions, on values a real Lua runtime hands to Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lupa.lua51 as lupa51
import pytest

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


@pytest.fixture(scope="module")
def lua() -> Any:
    return lupa51.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)


def values(lua: Any, source: str) -> tuple[object, ...]:
    """What Python receives when Lua calls it with the arguments `source` lists."""
    received: list[tuple[object, ...]] = []
    lua.eval(f"function(f) f({source}) end")(lambda *args: received.append(args))
    return received[0]


def raises(call: Callable[[], object]) -> str:
    with pytest.raises(LuaArgumentError) as caught:
        call()
    return str(caught.value)


def test_lua_type_name_names_what_lua_passes(lua: Any) -> None:
    args = values(lua, 'nil, true, 1, 1.5, "s", {}, print, newproxy()')
    names = [lua_type_name(value) for value in args]
    assert names == ["nil", "boolean", "number", "number", "string", "table", "function", "userdata"]


def test_lua_type_name_of_a_missing_argument_and_python_text() -> None:
    assert lua_type_name(NO_VALUE) == "no value"
    assert lua_type_name("text") == "string"
    assert lua_type_name(object()) == "userdata"


def test_argument_tells_a_missing_argument_from_nil(lua: Any) -> None:
    one = values(lua, '"k"')
    two = values(lua, '"k", nil')
    assert argument(one, 1) == b"k"
    assert argument(one, 2) is NO_VALUE
    assert argument(two, 2) is None
    assert (
        raises(lambda: check_bool(argument(one, 2), 2, "get"))
        == "bad argument #2 to 'get' (boolean expected, got no value)"
    )
    assert (
        raises(lambda: check_bool(argument(two, 2), 2, "get")) == "bad argument #2 to 'get' (boolean expected, got nil)"
    )


def test_is_table_and_is_number(lua: Any) -> None:
    table, function, number, flag, string = values(lua, '{}, print, 2, false, "2"')
    assert is_table(table)
    assert not any(is_table(value) for value in (function, number, flag, string, None, {}))
    assert is_number(number) and is_number(2.5)
    assert not any(is_number(value) for value in (flag, True, string, None, table))


def test_argument_error_text() -> None:
    error = LuaArgumentError(2, "write", "string expected, got nil")
    assert str(error) == "bad argument #2 to 'write' (string expected, got nil)"
    assert str(LuaArgumentError("bad argument #1 to 'x' (closed)")) == "bad argument #1 to 'x' (closed)"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (b"10", 10.0),
        (b" \t1.5\n", 1.5),
        (b"-2", -2.0),
        (b"+.5", 0.5),
        (b"5.", 5.0),
        (b"1e3", 1000.0),
        (b"0x1F", 31.0),
        (b"-0x10", -16.0),
    ],
)
def test_parse_number_reads_what_lua_reads(text: bytes, number: float) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"  ",
        b"abc",
        b"1 2",
        b"- 1",
        b"--1",
        b"+-1",
        b"inf",
        b"nan",
        b"1_000",
        b"0x_1f",
        b"0x",
        b"1e",
        "١".encode(),
    ],
)
def test_parse_number_refuses_what_lua_refuses(text: bytes) -> None:
    assert parse_number(text) is None


def test_check_string_takes_strings_and_numbers_in_their_lua_text(lua: Any) -> None:
    string, integral, fraction, big = values(lua, '"s\\0", 200, 1.5, 2^70')
    assert check_string(string, 1, "f") == b"s\x00"
    assert check_string(integral, 1, "f") == b"200"
    assert check_string(fraction, 1, "f") == b"1.5"
    assert check_string(big, 1, "f") == b"1.1805916207174113e+21"


def test_check_string_refuses_other_values(lua: Any) -> None:
    flag, table = values(lua, "true, {}")
    assert raises(lambda: check_string(None, 1, "f")) == "bad argument #1 to 'f' (string expected, got nil)"
    assert raises(lambda: check_string(flag, 2, "f")) == "bad argument #2 to 'f' (string expected, got boolean)"
    assert raises(lambda: check_string(table, 3, "g")) == "bad argument #3 to 'g' (string expected, got table)"
    assert raises(lambda: check_string(NO_VALUE, 1, "f")) == "bad argument #1 to 'f' (string expected, got no value)"
    # Lua strings arrive as bytes: a Python str is not a value from Lua.
    assert raises(lambda: check_string("s", 1, "f")) == "bad argument #1 to 'f' (string expected, got string)"


def test_check_text_keeps_bytes_that_are_not_utf8() -> None:
    assert check_text(b"caf\xc3\xa9", 1, "f") == "café"
    assert check_text(b"\xff", 1, "f").encode("utf-8", "surrogateescape") == b"\xff"
    assert check_text(7, 1, "f") == "7"
    assert raises(lambda: check_text(None, 2, "f")) == "bad argument #2 to 'f' (string expected, got nil)"


def test_opt_string() -> None:
    assert opt_string(None, 2, "f") == b""
    assert opt_string(NO_VALUE, 2, "f", b"d") == b"d"
    assert opt_string(3, 2, "f", b"d") == b"3"
    assert raises(lambda: opt_string(False, 2, "f")) == "bad argument #2 to 'f' (string expected, got boolean)"


def test_check_number_reads_numeric_strings_unless_told_not_to(lua: Any) -> None:
    integral, string, hexadecimal = values(lua, '3, " 2.5 ", "0x10"')
    assert check_number(integral, 1, "f") == 3.0
    assert isinstance(check_number(integral, 1, "f"), float)
    assert check_number(string, 1, "f") == 2.5
    assert check_number(hexadecimal, 1, "f") == 16.0
    assert check_number(integral, 1, "f", numeric_strings=False) == 3.0
    message = raises(lambda: check_number(string, 2, "exec", numeric_strings=False))
    assert message == "bad argument #2 to 'exec' (number expected, got string)"


def test_check_number_refuses_other_values() -> None:
    assert raises(lambda: check_number(b"soon", 2, "f")) == "bad argument #2 to 'f' (number expected, got string)"
    assert raises(lambda: check_number(True, 1, "f")) == "bad argument #1 to 'f' (number expected, got boolean)"
    assert raises(lambda: check_number(None, 1, "f")) == "bad argument #1 to 'f' (number expected, got nil)"


def test_opt_number() -> None:
    assert opt_number(None, 3, "f", 1) == 1
    assert opt_number(NO_VALUE, 3, "f", -1.5) == -1.5
    assert opt_number(b"4", 3, "f", 1) == 4.0
    assert raises(lambda: opt_number(b"4", 3, "f", 1, numeric_strings=False)) == (
        "bad argument #3 to 'f' (number expected, got string)"
    )
    assert raises(lambda: opt_number(False, 3, "f", 1)) == "bad argument #3 to 'f' (number expected, got boolean)"


def test_check_bool_and_opt_bool(lua: Any) -> None:
    yes, no, one = values(lua, "true, false, 1")
    assert check_bool(yes, 1, "f") is True
    assert check_bool(no, 1, "f") is False
    assert raises(lambda: check_bool(one, 2, "get")) == "bad argument #2 to 'get' (boolean expected, got number)"
    assert opt_bool(None, 3, "new") is False
    assert opt_bool(NO_VALUE, 3, "new", True) is True
    assert opt_bool(yes, 3, "new") is True
    assert raises(lambda: opt_bool(b"true", 3, "new")) == "bad argument #3 to 'new' (boolean expected, got string)"


def test_check_table_returns_the_table(lua: Any) -> None:
    (table,) = values(lua, "{a = 1}")
    assert check_table(table, 1, "f") is table
    assert check_table(table, 1, "f")[b"a"] == 1
    assert raises(lambda: check_table(b"x", 1, "batch")) == "bad argument #1 to 'batch' (table expected, got string)"
    assert raises(lambda: check_table(NO_VALUE, 1, "f")) == "bad argument #1 to 'f' (table expected, got no value)"


def test_check_self_names_the_object_type(lua: Any) -> None:
    (obj,) = values(lua, "{}")
    assert check_self(obj, "query", "client") is obj
    assert raises(lambda: check_self(b"select 1", "query", "client")) == (
        "bad argument #1 to 'query' (client expected, got string)"
    )
    assert raises(lambda: check_self(None, "close", "tcp_client_ud")) == (
        "bad argument #1 to 'close' (tcp_client_ud expected, got nil)"
    )


def test_check_present_takes_nil_but_not_a_missing_argument(lua: Any) -> None:
    assert check_present(values(lua, "nil"), 1, "encode") is None
    assert check_present(values(lua, "1, 2"), 2, "encode") == 2
    assert raises(lambda: check_present((), 1, "encode")) == "bad argument #1 to 'encode' (value expected)"


def test_to_string_and_to_text(lua: Any) -> None:
    string, number, flag, table = values(lua, '"\\255", 0.25, true, {}')
    assert to_string(string) == b"\xff"
    assert to_string(number) == b"0.25"
    assert to_string(flag) == b"" and to_string(table) == b"" and to_string(None) == b""
    assert to_text(string).encode("utf-8", "surrogateescape") == b"\xff"
    assert to_text(12) == "12"
    assert to_text(None) == ""


def test_to_number_and_to_integer(lua: Any) -> None:
    negative, string, flag, infinite = values(lua, '-2.7, " 42 ", true, 1/0')
    assert to_number(negative) == -2.7
    assert to_number(string) == 42.0
    assert to_number(b"0x10") == 16.0
    assert to_number(b"nope") == 0.0 and to_number(flag) == 0.0 and to_number(None) == 0.0
    assert to_integer(negative) == -2
    assert to_integer(string) == 42
    assert to_integer(b"1.9") == 1
    assert to_integer(infinite) == 0
    assert to_integer(float("nan")) == 0
    assert to_integer(flag) == 0
