"""The `yaml` Lua module, with the conventions of the Go library (gopkg.in/yaml.v2 underneath).

- `yaml.decode(text)` → the first document as Lua values (mappings are tables, sequences arrays, null
  is nil), or `nil, err` (`yaml: line 1: mapping values are not allowed in this context`). Plain scalars
  resolve as yaml.v2 resolves them: `y`/`n`/`on`/`off` are booleans, `0x1f`/`0o17`/`0b11` integers,
  `1e3` a number, timestamps and `1:20` stay strings.
- `yaml.encode(value)` → YAML text, or `nil, err`. A table whose keys are exactly 1..n (or no keys) is a
  sequence, any other a mapping with its keys in yaml.v2's order (numbers first, then strings in natural
  order: `a2` before `a10`); integral numbers print without a point; a table met twice is an error
  (`nested table table: 0x...`), as are functions and userdata (`cannot encode values with function in them`).
- `yaml.new_decoder(reader)` → decoder with `:decode()`, the next document per call (`nil, "EOF"` after
  the last); the first call reads the reader to its end (`reader:read(n)` until nil).
  `yaml.new_encoder(writer)` → encoder with `:encode(value)`, which calls `writer:write(text)` (documents
  after the first start with `---`) and returns nothing, or the error. Files from io.open and the
  `strings` reader and builder fit.

Parsing and printing use PyYAML's safe loader and dumper (on libyaml, which yaml.v2 translates, where
PyYAML has it: the same decisions and error texts), adjusted to yaml.v2's choices. Aliases expanding to
more than a million values are refused (`yaml: document contains excessive aliasing`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator
from functools import cmp_to_key
from typing import Any

import yaml

from msgscript.lua.api import ModuleContext, go_float_text, lua_chunk

from ._shared_text import check_present, check_string, is_table, lua_type_name

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

# yaml.v2's plain scalars with a fixed meaning.
_FIXED: dict[str, tuple[str, Any]] = {}
for _words, _meaning in (
    (("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), (_BOOL, True)),
    (("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), (_BOOL, False)),
    (("", "~", "null", "Null", "NULL"), (_NULL, None)),
    ((".nan", ".NaN", ".NAN"), (_FLOAT, math.nan)),
    ((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), (_FLOAT, math.inf)),
    (("-.inf", "-.Inf", "-.INF"), (_FLOAT, -math.inf)),
    (("<<",), (_MERGE, "<<")),
):
    for _word in _words:
        _FIXED[_word] = _meaning

_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)\Z")
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+\.?[0-9]*)([eE][-+]?[0-9]+)?\Z")
_TIMESTAMP_LIKE = re.compile(
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]*)?([ \t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?)?\Z"
)
_BASE60_FLOAT = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?\Z")
_INT64 = 2**63
MAX_DECODED_VALUES = 1_000_000
NODE_BYTES = 400
"""Charged per YAML node parsed or dumped: PyYAML's node (and its marks) and the value made of it."""
_LUA_VALUE_BYTES = 64
_LUA_ENTRY_BYTES = 40
"""Charged per decoded value handed to Lua (a table or string), and per entry of a table."""

Charge = Callable[[int], None]


def _no_charge(nbytes: int) -> None:
    pass


_ALIASING = "yaml: document contains excessive aliasing"


def resolve_plain(value: str) -> tuple[str, Any]:
    """The tag and value yaml.v2 gives a plain (unquoted, untagged) scalar."""
    fixed = _FIXED.get(value)
    if fixed is not None:
        return fixed
    head = value[:1]
    if head == ".":
        if _GO_FLOAT.match(value):
            return _FLOAT, float(value)
    elif head.isdigit() and head.isascii() or head in ("+", "-"):
        if _TIMESTAMP_LIKE.match(value):
            return _TIMESTAMP, value
        plain = value.replace("_", "")
        number = _go_int(plain)
        if number is not None:
            return _INT, number
        if _YAML_FLOAT.match(plain):
            return _FLOAT, float(plain)
    return _STR, value


def _go_int(plain: str) -> int | None:
    """strconv.ParseInt(plain, 0, 64), then ParseUint: an integer in Go's literal syntax, or None."""
    if not _GO_INT.match(plain):
        return None
    sign = -1 if plain[0] == "-" else 1
    digits = plain.lstrip("+-")
    prefix = digits[:2].lower()
    if prefix in ("0x", "0o", "0b"):
        number = int(digits[2:], {"0x": 16, "0o": 8, "0b": 2}[prefix])
    elif len(digits) > 1 and digits[0] == "0":
        number = int(digits, 8)
    else:
        number = int(digits)
    number *= sign
    if -_INT64 <= number < 2**64 and (number >= 0 or plain[0] == "-"):
        return number
    return None


# libyaml (which yaml.v2 is a translation of) where PyYAML was built with it: the same parser and printer
# decisions and the same error texts.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader with yaml.v2's resolution of plain scalars."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return resolve_plain(value)[0]
        return super().resolve(kind, value, implicit)

    def construct_plain(self, node: Any) -> Any:
        value = self.construct_scalar(node)
        tag, resolved = resolve_plain(value)
        return resolved if tag == node.tag else value


for _tag in (_INT, _FLOAT, _BOOL, _NULL):
    _Loader.add_constructor(_tag, _Loader.construct_plain)
# Like yaml.v2 decoding into an interface, a timestamp stays a string.
_Loader.add_constructor(_TIMESTAMP, yaml.constructor.SafeConstructor.construct_yaml_str)


class _Dumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """PyYAML's safe dumper printing as yaml.v2 prints."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        # The printer writes a scalar plain when reading it back gives its tag: with yaml.v2's rules.
        if kind is yaml.ScalarNode and implicit[0]:
            return resolve_plain(value)[0]
        return super().resolve(kind, value, implicit)


def _represent_text(dumper: _Dumper, value: str) -> Any:
    if "\n" in value:
        style = "|"
    elif resolve_plain(value)[0] != _STR or _BASE60_FLOAT.match(value):
        style = '"'
    else:
        style = None
    return dumper.represent_scalar(_STR, value, style=style)


def _represent_float(dumper: _Dumper, value: float) -> Any:
    if math.isnan(value):
        written = ".nan"
    elif math.isinf(value):
        written = ".inf" if value > 0 else "-.inf"
    else:
        written = go_float_text(value)
    return dumper.represent_scalar(_FLOAT, written)


def _represent_map(dumper: _Dumper, value: dict[Any, Any]) -> Any:
    return dumper.represent_mapping("tag:yaml.org,2002:map", sorted(value.items(), key=_KEY_ORDER))


_Dumper.add_representer(str, _represent_text)
_Dumper.add_representer(float, _represent_float)
_Dumper.add_representer(dict, _represent_map)


# --- yaml.v2's order of mapping keys -------------------------------------------------------------------


def _kind(key: Any) -> int:
    """Go reflect.Kind numbers of the key types Lua values convert to (bool < int64 < float64 < string)."""
    if isinstance(key, bool):
        return 1
    if isinstance(key, int):
        return 6
    if isinstance(key, float):
        return 14
    return 24


def _key_compare(left: tuple[Any, Any], right: tuple[Any, Any]) -> int:
    a, b = left[0], right[0]
    if _less(a, b):
        return -1
    if _less(b, a):
        return 1
    return 0


def _less(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka < 24 and kb < 24:
        if float(a) != float(b):
            return float(a) < float(b)
        if ka != kb:
            return ka < kb
        return bool(a < b)
    if ka != 24 or kb != 24:
        return ka < kb
    # Text that is not UTF-8 stays bytes (printed as !!binary); it sorts by its characters all the same.
    if isinstance(a, bytes):
        a = a.decode("utf-8", "surrogateescape")
    if isinstance(b, bytes):
        b = b.decode("utf-8", "surrogateescape")
    return _text_less(a, b)


def _text_less(a: str, b: str) -> bool:
    """Strings: letters before other characters, runs of digits by their value (`a2` < `a10`)."""
    for i in range(min(len(a), len(b))):
        ca, cb = a[i], b[i]
        if ca == cb:
            continue
        la, lb = ca.isalpha(), cb.isalpha()
        if la and lb:
            return ca < cb
        if la or lb:
            return lb
        an = bn = 0
        if ca == "0" or cb == "0":
            j = i - 1
            while j >= 0 and a[j].isdecimal():
                if a[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(a) and a[ai].isdecimal():
            an = an * 10 + ord(a[ai]) - 48
            ai += 1
        bi = i
        while bi < len(b) and b[bi].isdecimal():
            bn = bn * 10 + ord(b[bi]) - 48
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return ca < cb
    return len(a) < len(b)


_KEY_ORDER = cmp_to_key(_key_compare)


# --- Lua values ↔ Python values ------------------------------------------------------------------------


class EncodeError(Exception):
    """A Lua value YAML cannot hold."""


def from_lua(value: Any, visited: set[str], charge: Charge = _no_charge) -> Any:
    """A Lua value as Python data for the dumper, with the Go library's choices and errors; every value is
    charged (its copy, and the node the dumper makes of it) before the dumper runs."""
    charge(NODE_BYTES + (len(value) if isinstance(value, bytes) else 0))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        number = float(value)
        if number.is_integer() and -_INT64 <= number < _INT64:
            return int(number)
        return number
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # printed as !!binary, as yaml.v2 prints text that is not UTF-8
    if not is_table(value):
        raise EncodeError(f"cannot encode values with {lua_type_name(value)} in them")
    # repr() names the table by its address without calling a __tostring metamethod (str() would).
    identity = repr(value)
    if identity in visited:
        address = identity.rsplit(" ", 1)[-1].rstrip(">")
        raise EncodeError(f"nested table table: {address}")
    visited.add(identity)
    # The keys first, then each value when its turn comes: a table holding one big string many times must not
    # be copied into Python whole before anything is charged. (The keys are present: indexing runs no
    # metamethod.)
    keys = list(value.keys())
    numbers = {key for key in keys if isinstance(key, int | float) and not isinstance(key, bool)}
    if len(numbers) == len(keys) and numbers == set(range(1, len(keys) + 1)):
        return [from_lua(value[index], visited, charge) for index in range(1, len(keys) + 1)]
    mapping = {}
    for key in keys:
        converted = from_lua(key, visited, charge)
        if isinstance(converted, list | dict):
            # What Go's runtime says when a map key cannot be hashed.
            kind = "[]interface {}" if isinstance(converted, list) else "map[interface {}]interface {}"
            raise EncodeError(f"runtime error: hash of unhashable type {kind}")
        mapping[converted] = from_lua(value[key], visited, charge)
    return mapping


class ExcessiveAliasing(Exception):
    """A document whose aliases expand to more values than MAX_DECODED_VALUES (a "billion laughs")."""


def to_lua(value: Any, charge: Charge = _no_charge) -> Any:
    """Decoded data as values for Lua (nested dicts and lists become tables on the way out), each charged
    (its bytes and the Lua value made of it) before it is made.

    Raises:
        ExcessiveAliasing: the data, with every alias expanded, holds more than MAX_DECODED_VALUES values.
    """
    # Aliases share their Python values: count the values with every alias expanded (cheaply, once per shared
    # value) before anything is made, so that a "billion laughs" gets its error rather than the memory cap's.
    if _expanded_count(value, {}) > MAX_DECODED_VALUES:
        raise ExcessiveAliasing
    return _to_lua(value, [MAX_DECODED_VALUES], charge)


def _expanded_count(value: Any, known: dict[int, int]) -> int:
    """How many values _to_lua makes of value (keys included), counting shared values every time they occur."""
    if not isinstance(value, dict | list | tuple):
        return 1
    count = known.get(id(value))
    if count is None:
        count = 1
        if isinstance(value, dict):
            for key, item in value.items():
                if _is_lua_key(key):
                    count += _expanded_count(key, known) + _expanded_count(item, known)
        else:
            for item in value:
                count += _expanded_count(item, known)
        known[id(value)] = count
    return count


def _to_lua(value: Any, budget: list[int], charge: Charge) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ExcessiveAliasing
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        charge(2 * len(data) + _LUA_VALUE_BYTES)
        return data
    if isinstance(value, dict):
        charge(_LUA_VALUE_BYTES + _LUA_ENTRY_BYTES * len(value))
        return {_to_lua(k, budget, charge): _to_lua(v, budget, charge) for k, v in value.items() if _is_lua_key(k)}
    if isinstance(value, list | tuple):
        charge(_LUA_VALUE_BYTES + _LUA_ENTRY_BYTES * len(value))
        return [_to_lua(v, budget, charge) for v in value]
    if isinstance(value, set):
        return {}
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return float(value)
    return value


def _is_lua_key(key: Any) -> bool:
    """Whether a decoded mapping key can be a Lua table key (not null, NaN, or a compound key)."""
    if isinstance(key, float):
        return not math.isnan(key)
    return isinstance(key, str | bytes | int)


class _ChargedText:
    """Where the dumper writes: each piece is charged as it comes, so that output past the memory cap stops it."""

    def __init__(self, charge: Charge) -> None:
        self._charge = charge
        self._parts: list[str] = []

    def write(self, text: str) -> None:
        self._charge(len(text))
        self._parts.append(text)

    def getvalue(self) -> str:
        return "".join(self._parts)


def encode_document(value: Any, explicit_start: bool = False, charge: Charge = _no_charge) -> str:
    """One YAML document for a Lua value, its work and output charged as they grow.

    Raises:
        EncodeError: the value holds a function, userdata, or a table twice.
        MemoryError: `charge` refused.
    """
    data = from_lua(value, set(), charge)
    stream = _ChargedText(charge)
    yaml.dump(data, stream, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, explicit_start=explicit_start)
    out = stream.getvalue()
    # PyYAML ends a document holding a bare scalar with "...", which yaml.v2 does not write.
    if out.endswith("\n...\n"):
        out = out[:-4]
    return out


def decode_error(exc: yaml.YAMLError) -> str:
    """A PyYAML error in yaml.v2's words: `yaml: line N: <problem>`."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"yaml: {exc.reason}"  # libyaml's own words (`invalid leading UTF-8 octet`)
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"yaml: {exc}"
    problem = exc.problem or "unknown problem parsing YAML content"
    problem = _PROBLEMS.get(problem, problem)
    if problem.startswith("expected <block end>"):
        problem = (
            "did not find expected key" if "mapping" in (exc.context or "") else "did not find expected '-' indicator"
        )
    line = 0
    if exc.problem_mark is not None and exc.problem_mark.line != 0:
        line = exc.problem_mark.line + (1 if isinstance(exc, yaml.scanner.ScannerError) else 0)
    elif exc.context_mark is not None:
        line = exc.context_mark.line
    return f"yaml: line {line}: {problem}" if line else f"yaml: {problem}"


# libyaml (under yaml.v2) words some problems differently from PyYAML.
_PROBLEMS = {"mapping values are not allowed here": "mapping values are not allowed in this context"}


def charge_nodes(source: bytes, charge: Charge, *, first_only: bool) -> None:
    """Charge what parsing a YAML stream will cost before it is parsed (PyYAML builds a document's whole node
    tree, several hundred bytes a node, before its values): one pass over the parser's events, which cost
    little each, charging every node. With first_only, only the first document is counted.

    A syntax error ends the count; the parse that follows reports it.
    """
    try:
        for event in yaml.parse(source, Loader=_BaseLoader):
            if isinstance(event, yaml.ScalarEvent):
                charge(NODE_BYTES + 2 * len(event.value))
            elif isinstance(event, yaml.NodeEvent):
                charge(NODE_BYTES)
            elif first_only and isinstance(event, yaml.DocumentEndEvent):
                return
    except yaml.YAMLError:
        return


def documents(source: bytes) -> Generator[Any, None, None]:
    """The documents of a YAML stream (bytes: the parser checks the UTF-8 itself), parsed one at a time."""
    loader = _Loader(source)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()


_OBJECTS = rb"""
local type, error, pcall, select, tostring = type, error, pcall, select, tostring
local getmetatable, setmetatable = getmetatable, setmetatable
local concat = table.concat
local READ_SIZE = 65536

-- The Go library takes any value with a write (read) function, and calls it as a method.
local function method(v, name)
  local t = type(v)
  if t ~= "table" and t ~= "userdata" then return nil end
  local ok, f = pcall(function() return v[name] end)
  if ok and type(f) == "function" then return f end
  return nil
end

return function(encode_document, open_stream)
  local Encoder, Decoder = {}, {}
  local encoder_methods, decoder_methods = {}, {}
  Encoder.__index, Decoder.__index = encoder_methods, decoder_methods
  Encoder.__tostring = function() return "yaml.Encoder" end
  Decoder.__tostring = function() return "yaml.Decoder" end

  local function check(self, mt, name, kind)
    if getmetatable(self) ~= mt then
      error("bad argument #1 to '" .. name .. "' (" .. kind .. " expected, got " .. type(self) .. ")", 3)
    end
  end

  -- Returns nothing on success and the error text on failure, as the Go encoder does.
  function encoder_methods.encode(self, ...)
    check(self, Encoder, "encode", "yaml.Encoder")
    if select("#", ...) == 0 then error("bad argument #2 to 'encode' (value expected)", 2) end
    local text, err = encode_document((...), self.written)
    if text == nil then return err end
    self.written = true
    local ok, write_err = pcall(self.write, self.writer, text)
    if not ok then return tostring(write_err) end
  end

  -- The reader is read to its end on the first call; each call returns the next document.
  function decoder_methods.decode(self)
    check(self, Decoder, "decode", "yaml.Decoder")
    local next_document = self.next_document
    if next_document == nil then
      local parts, n = {}, 0
      while true do
        local ok, chunk = pcall(self.read, self.reader, READ_SIZE)
        if not ok then return nil, tostring(chunk) end
        if chunk == nil then break end
        n = n + 1
        parts[n] = tostring(chunk)
      end
      local parsed, count, err = open_stream(concat(parts, "", 1, n))
      local i = 0
      next_document = function()
        i = i + 1
        if i <= count then return parsed[i] end
        if i == count + 1 and err ~= nil then return nil, err end
        return nil, "EOF"
      end
      self.next_document = next_document
    end
    return next_document()
  end

  function decoder_methods.set_strict(self, strict)
    check(self, Decoder, "set_strict", "yaml.Decoder")
    if type(strict) ~= "boolean" then
      error("bad argument #2 to 'set_strict' (boolean expected, got " .. type(strict) .. ")", 2)
    end
  end

  local function new_encoder(writer)
    local write = method(writer, "write")
    if write == nil then error("bad argument #1 to 'new_encoder' (expected writer)", 2) end
    return setmetatable({writer = writer, write = write, written = false}, Encoder)
  end

  local function new_decoder(reader)
    local read = method(reader, "read")
    if read == nil then error("bad argument #1 to 'new_decoder' (expected reader)", 2) end
    return setmetatable({reader = reader, read = read}, Decoder)
  end

  return new_encoder, new_decoder
end
"""


class YamlModule:
    """Builds the `yaml` table for one execution."""

    name = "yaml"
    inline_safe = True
    """Pure computation (encoders and decoders reach files only through objects the script opened)."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{decode, encode, new_decoder, new_encoder}`."""

        charge = ctx.charge

        def decode(value: object = None, *_: object) -> tuple[object, ...]:
            source = check_string(value, 1, "decode")
            # Only the first document counts, as with yaml.v2's Unmarshal.
            charge_nodes(source, charge, first_only=True)
            stream = documents(source)
            try:
                return (to_lua(next(stream, None), charge),)
            except yaml.YAMLError as exc:
                return (None, decode_error(exc))
            except RecursionError:
                return (None, "yaml: exceeded max depth")
            except ExcessiveAliasing:
                return (None, _ALIASING)
            finally:
                stream.close()

        def encode(*args: object) -> tuple[object, ...]:
            value = check_present(args, 1, "encode")
            try:
                return (encode_document(value, charge=charge),)
            except EncodeError as exc:
                return (None, str(exc))
            except (yaml.YAMLError, RecursionError) as exc:
                return (None, f"yaml: {exc}")

        def encode_next(value: object = None, explicit_start: object = False) -> tuple[object, ...]:
            try:
                return (encode_document(value, explicit_start=bool(explicit_start), charge=charge),)
            except EncodeError as exc:
                return (None, str(exc))
            except (yaml.YAMLError, RecursionError) as exc:
                return (None, f"yaml: {exc}")

        def open_stream(source: bytes) -> tuple[object, ...]:
            # Every document is parsed now, so that nothing of the stream stays in Python between calls; the
            # decoder hands them out one per call, then the error that stopped the parse, if any.
            charge_nodes(source, charge, first_only=False)
            parsed: list[object] = []
            error: str | None = None
            stream = documents(source)
            try:
                for document in stream:
                    parsed.append(to_lua(document, charge))
            except yaml.YAMLError as exc:
                error = decode_error(exc)
            except RecursionError:
                error = "yaml: exceeded max depth"
            except ExcessiveAliasing:
                error = _ALIASING
            finally:
                stream.close()
            return (dict(enumerate(parsed, start=1)), len(parsed), error)

        factory = lua_chunk(lua, "gopher-lua-libs.yaml", _OBJECTS)
        new_encoder, new_decoder = factory(ctx.to_lua(encode_next), ctx.to_lua(open_stream))
        return {"decode": decode, "encode": encode, "new_decoder": new_decoder, "new_encoder": new_encoder}


module = YamlModule()
