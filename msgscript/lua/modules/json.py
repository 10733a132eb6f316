"""The `json` Lua module, with the conventions of gopher-json (the Go msgscript's json module).

`json.encode(value)` returns a string, or `nil, error`: an empty table is `[]`, a table with only the
keys 1..n an array, a table with only string keys an object (keys sorted), anything else an error, and
strings are escaped like Go's encoding/json. `json.decode(text)` returns the value (JSON null is nil,
arrays are 1-based tables), or `nil, error`.

Both count what they build against the script's memory cap as they go (the output piece by piece; the
objects a text decodes to, estimated from the text before it is parsed): past it they fail with the Lua
error `not enough memory`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import lupa.lua51 as lupa51

from msgscript.errors import MsgscriptError
from msgscript.lua.contract import ModuleContext
from msgscript.lua.numbers import fixed_notation, go_float_text, shortest_digits
from msgscript.message import go_string

# The structure check runs in Lua, where a table can be a key of the visited set (lupa hands Python a
# new wrapper object for every access, so Python cannot tell two references to one table apart). Like
# gopher-json, a table met twice is an error, which also bounds the work on shared subtables.
_VALIDATOR = b"""
local type, next, rawget, pcall, error = type, next, rawget, pcall, error
return function(value)
  local visited = {}
  local function check(v)
    local t = type(v)
    if t == "table" then
      if visited[v] then error("cannot encode recursively nested tables to JSON", 0) end
      visited[v] = true
      local first = next(v)
      if first == nil then return end
      local kind = type(first)
      if kind ~= "number" and kind ~= "string" then error("cannot encode mixed or invalid key types", 0) end
      local n = 0
      for key, item in next, v do
        if type(key) ~= kind then error("cannot encode mixed or invalid key types", 0) end
        n = n + 1
        check(item)
      end
      if kind == "number" then
        for i = 1, n do
          if rawget(v, i) == nil then error("cannot encode sparse array", 0) end
        end
      end
    elseif t == "function" or t == "userdata" or t == "thread" then
      error("cannot encode " .. t .. " to JSON", 0)
    end
  end
  local ok, err = pcall(check, value)
  if ok then return nil end
  return err
end
"""
# What encoding and decoding charge the execution (see ModuleContext.charge), besides the text itself.
_SLICE_BYTES = 64 * 1024
"""Long strings are escaped this many bytes at a time."""
_TABLE_BYTES = 64
"""Encoding, per table visited (its lupa wrapper and iteration), which also bounds the work on empty tables."""
_KEY_BYTES = 64
"""Encoding, per object key held for sorting (besides its length)."""
_PY_STRING_BYTES = 56
_PY_CONTAINER_BYTES = 72
_PY_ITEM_BYTES = 40
"""Decoding, the Python objects json.loads makes: per string (besides its text), per array or object, and
per value held by one (a list slot or dict entry and a number object)."""
_LUA_STRING_BYTES = 24
_LUA_TABLE_BYTES = 64
_LUA_SLOT_BYTES = 16
_LUA_NODE_BYTES = 40
"""Decoding, the Lua values made: per string (besides its bytes), per table, per array item, per object key."""
_FOUR_BYTE_LEAD = re.compile(rb"[\xf0-\xff]")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TEXT_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")

# Stored in the runtime's own globals (scripts see a separate environment) so it compiles once per runtime.
_VALIDATOR_KEY = b"__msgscript_json_validator"

_DECODE_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Extra data": "after top-level value",
    "Expecting ':' delimiter": "after object key",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}


class _EncodeError(MsgscriptError):
    """Raised while encoding a value that JSON cannot hold (userdata, NaN, infinities); `encode` returns its text."""


def json_number(value: float) -> str:
    """Format a number like Go's encoding/json does for a float64 (`1`, `1.5`, `1e+21`, `1e-7`)."""
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        raise _EncodeError(f"json: unsupported value: {go_float_text(number)}")
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign = "-" if number < 0 else ""
    digits, point = shortest_digits(number)
    if abs(number) < 1e-6 or abs(number) >= 1e21:
        exponent = point - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        # Go writes e+21 but e-7 (it trims a leading zero from negative exponents only).
        exp_text = f"-{-exponent}" if exponent < 0 else f"+{exponent:02d}"
        return f"{sign}{mantissa}e{exp_text}"
    return sign + fixed_notation(digits, point)


class _Encoder:
    """Writes a value's JSON into one buffer, charging the execution for every piece as it is added, so that
    output past the memory cap stops the encoding early (a table holding one big string many times)."""

    __slots__ = ("_charge", "out")

    def __init__(self, charge: Callable[[int], None]) -> None:
        self._charge = charge
        self.out = bytearray()

    def write(self, piece: bytes) -> None:
        self._charge(len(piece))
        self.out += piece

    def value(self, value: Any) -> None:
        if value is None:
            self.write(b"null")
        elif value is True:
            self.write(b"true")
        elif value is False:
            self.write(b"false")
        elif isinstance(value, int | float):
            self.write(json_number(value).encode())
        elif isinstance(value, bytes):
            self.string(value)
        elif lupa51.lua_type(value) == "table":
            self.table(value)
        else:
            raise _EncodeError("cannot encode userdata to JSON")

    def string(self, raw: bytes) -> None:
        if len(raw) <= _SLICE_BYTES:
            self.write(go_string(raw).encode())
            return
        # A long string is escaped a slice at a time, so that its escaped copy (up to six times its size)
        # never exists whole. Slices end before a byte that starts a character, where escaping may cut.
        self.write(b'"')
        start = 0
        while start < len(raw):
            end = _slice_end(raw, start + _SLICE_BYTES)
            self.write(go_string(raw[start:end])[1:-1].encode())
            start = end
        self.write(b'"')

    def table(self, table: Any) -> None:
        # Values are fetched one at a time: a table holding one big string many times must not be copied
        # into Python whole. The validator guarantees the keys are 1..n or strings, and present (so indexing
        # runs no __index metamethod).
        self._charge(_TABLE_BYTES)
        first = next(iter(table.keys()), None)
        if first is None:
            self.write(b"[]")
        elif isinstance(first, bytes):
            keys = []
            for key in table.keys():
                self._charge(len(key) + _KEY_BYTES)
                keys.append(key)
            keys.sort()
            self.write(b"{")
            for i, key in enumerate(keys):
                if i:
                    self.write(b",")
                self.string(key)
                self.write(b":")
                self.value(table[key])
            self.write(b"}")
        else:
            self.write(b"[")
            for i in range(1, len(table) + 1):
                if i > 1:
                    self.write(b",")
                self.value(table[i])
            self.write(b"]")


def _slice_end(raw: bytes, end: int) -> int:
    """Where a slice of raw ending near `end` may end: before a byte that is not a UTF-8 continuation byte.

    A character is at most four bytes long, so at most three continuation bytes are stepped over; a longer
    run is invalid bytes, each escaped on its own wherever the cut falls.
    """
    if end >= len(raw):
        return len(raw)
    for cut in range(end, max(end - 3, 1) - 1, -1):
        if not 0x80 <= raw[cut] < 0xC0:
            return cut
    return end


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _decode_error(exc: json.JSONDecodeError) -> str:
    rest = exc.doc[exc.pos :]
    if not rest.strip() or exc.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    char = rest[0]
    if exc.msg == "Expecting ',' delimiter":
        where = "after array element" if _innermost(exc.doc[: exc.pos]) == "[" else "after object key:value pair"
    else:
        where = _DECODE_CONTEXT.get(exc.msg, "")
    if not where:
        return exc.msg
    return f"invalid character {_quote_char(char)} {where}"


def _quote_char(char: str) -> str:
    """Quote one character the way Go's JSON errors do: 'x', '\\n', '"'."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char)[1:-1] + "'"


def _innermost(prefix: str) -> str:
    """The innermost open bracket at the end of prefix, ignoring brackets inside strings (also one left open
    at the end); in C-speed passes but for one step per bracket (json is inline-safe)."""
    outside = _TEXT_STRING.sub("", prefix)
    quote = outside.find('"')
    if quote >= 0:
        outside = outside[:quote]
    depth = 0
    for char in reversed(_NOT_BRACKET.sub("", outside)):
        if char in "]}":
            depth += 1
        elif depth:
            depth -= 1
        else:
            return char
    return ""


def decode_bytes(text: bytes) -> int:
    """About how many bytes of Python objects json.loads makes for a text: the decoded text, its strings,
    arrays and objects and the values they hold (counted from the text, in linear time, before parsing)."""
    if text.isascii():
        width = 1
    else:
        width = 4 if _FOUR_BYTE_LEAD.search(text) else 2
    skeleton, strings = _JSON_STRING.subn(b"", text)
    containers = skeleton.count(b"[") + skeleton.count(b"{")
    items = skeleton.count(b",") + containers + 1
    return (
        2 * width * len(text) + strings * _PY_STRING_BYTES + containers * _PY_CONTAINER_BYTES + items * _PY_ITEM_BYTES
    )


def _to_lua(lua: Any, value: Any, charge: Callable[[int], None]) -> Any:
    # Lua values are made while the memory cap is lifted: they are charged before they are made.
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        # The bytes and the Lua string made from them.
        charge(2 * len(data) + _LUA_STRING_BYTES)
        return data
    if isinstance(value, dict):
        charge(_LUA_TABLE_BYTES + len(value) * _LUA_NODE_BYTES)
        return lua.table_from({k.encode("utf-8", "surrogateescape"): _to_lua(lua, v, charge) for k, v in value.items()})
    if isinstance(value, list):
        charge(_LUA_TABLE_BYTES + len(value) * _LUA_SLOT_BYTES)
        return lua.table_from([_to_lua(lua, v, charge) for v in value])
    return value


class JsonModule:
    """Builds the `json` table for one execution."""

    name = "json"
    inline_safe = True
    """Pure computation: scripts using it may run on the event loop."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{encode = ..., decode = ...}`."""
        validate = _validator(lua)

        def encode(value: Any = None, *_: Any) -> tuple[bytes | None, ...]:
            if lupa51.lua_type(value) is not None:
                problem = validate(value)
                if problem is not None:
                    return (None, problem)
            encoder = _Encoder(ctx.charge)
            try:
                encoder.value(value)
            except _EncodeError as exc:
                return (None, str(exc).encode())
            except RecursionError:
                return (None, b"cannot encode deeply nested tables to JSON")
            # The copy is the value returned, which the call's accounting counts.
            return (bytes(encoder.out),)

        def decode(text: Any = None, *_: Any) -> tuple[Any, ...]:
            if isinstance(text, int | float) and not isinstance(text, bool):
                text = str(text).encode()
            if not isinstance(text, bytes):
                kind = "nil" if text is None else lupa51.lua_type(text) or "boolean"
                return (None, f"bad argument #1 to 'decode' (string expected, got {kind})".encode())
            ctx.charge(decode_bytes(text))
            try:
                doc = json.loads(text.decode("utf-8", "replace"), parse_int=float, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                return (None, _decode_error(exc).encode())
            except (ValueError, RecursionError) as exc:
                return (None, str(exc).encode())
            return (_to_lua(lua, doc, ctx.charge),)

        return {"encode": encode, "decode": decode}


def _validator(lua: Any) -> Any:
    real_globals = lua.globals()
    validate = real_globals[_VALIDATOR_KEY]
    if validate is None:
        validate = lua.execute(_VALIDATOR)
        real_globals[_VALIDATOR_KEY] = validate
    return validate


module = JsonModule()
