"""The `json` Lua module, with the conventions of gopher-json (the Go msgscript's json module).

`json.encode(value)` returns a string, or `nil, error`: an empty table is `[]`, a table with only the
keys 1..n an array, a table with only string keys an object (keys sorted), anything else an error, and
strings are escaped like Go's encoding/json. `json.decode(text)` returns the value (JSON null is nil,
arrays are 1-based tables), or `nil, error`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import lupa.lua51 as lupa51

from msgscript.lua.module import ModuleContext
from msgscript.lua.runtime import fixed_notation, go_float_text, shortest_digits
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


class _EncodeError(Exception):
    pass


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


def _encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json_number(value)
    if isinstance(value, bytes):
        return go_string(value)
    if lupa51.lua_type(value) != "table":
        raise _EncodeError("cannot encode userdata to JSON")
    items = list(value.items())
    if not items:
        return "[]"
    if isinstance(items[0][0], bytes):
        items.sort(key=lambda item: item[0])
        return "{" + ",".join(f"{go_string(k)}:{_encode(v)}" for k, v in items) + "}"
    items.sort(key=lambda item: item[0])
    return "[" + ",".join(_encode(v) for _, v in items) + "]"


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
    """The innermost open bracket at the end of prefix, ignoring brackets inside strings."""
    stack: list[str] = []
    in_string = escaped = False
    for char in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, dict):
        return lua.table_from({k.encode("utf-8", "surrogateescape"): _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
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
            try:
                return (_encode(value).encode("utf-8"),)
            except _EncodeError as exc:
                return (None, str(exc).encode())
            except RecursionError:
                return (None, b"cannot encode deeply nested tables to JSON")

        def decode(text: Any = None, *_: Any) -> tuple[Any, ...]:
            if isinstance(text, int | float) and not isinstance(text, bool):
                text = str(text).encode()
            if not isinstance(text, bytes):
                kind = "nil" if text is None else lupa51.lua_type(text) or "boolean"
                return (None, f"bad argument #1 to 'decode' (string expected, got {kind})".encode())
            try:
                doc = json.loads(text.decode("utf-8", "replace"), parse_int=float, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                return (None, _decode_error(exc).encode())
            except (ValueError, RecursionError) as exc:
                return (None, str(exc).encode())
            return (_to_lua(lua, doc),)

        return {"encode": encode, "decode": decode}


def _validator(lua: Any) -> Any:
    real_globals = lua.globals()
    validate = real_globals[_VALIDATOR_KEY]
    if validate is None:
        validate = lua.execute(_VALIDATOR)
        real_globals[_VALIDATOR_KEY] = validate
    return validate


module = JsonModule()
