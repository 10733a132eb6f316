"""The `strings` Lua module: Go's strings package functions, on Lua strings taken as bytes.

`split(s [, sep])` (an empty or missing separator splits into UTF-8 characters, an invalid byte being a
character of its own, and `split("", "")` is `{}`), `fields(s)` (split around runs of Unicode white
space), `trim(s, cutset)`, `trim_space(s)`, `trim_prefix(s, prefix)`, `trim_suffix(s, suffix)`,
`has_prefix`, `has_suffix`, `contains`: the results of Go's functions of the same names, byte for byte.

`new_reader(s)` returns a reader with `:read([fmt])` (a byte count, `"*a"`, `"*l"` or `"*n"`, as for
Lua files; nil at the end) and `:close()`; `new_builder()` a writer with `:write(...)`, `:string()` and
`:close()`. Both can be handed to `yaml.new_decoder` and `yaml.new_encoder`. `strings.Reader` and
`strings.Builder` are their metatables.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from msgscript.lua.api import ModuleContext, lua_chunk, lua_number_text

from ._shared_text import check_string

# One UTF-8 encoded character as Go's utf8.DecodeRune accepts it (no overlong forms, no surrogates,
# nothing above U+10FFFF), or else a single byte, which Go decodes as U+FFFD of width 1.
_CHARACTER = re.compile(
    rb"[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}|.",
    re.DOTALL,
)
_INVALID = "\ufffd"
# Go's unicode.IsSpace, encoded: ASCII white space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
# U+2029, U+202F, U+205F, U+3000. Every sequence starts with a lead byte, so a match never begins
# inside another character.
_SPACE = rb"(?:[\t\n\v\f\r ]|\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80)"
_SPACES = re.compile(_SPACE + b"+")
_LEADING_SPACES = re.compile(_SPACE + b"+")
# The same characters with their bytes in reverse order, to find trailing space in the reversed string: a
# search for space at the end would backtrack over every run of space inside the string (quadratic time).
_TRAILING_SPACES_REVERSED = re.compile(
    rb"(?:[\t\n\v\f\r ]|[\x85\xa0]\xc2|\x80\x9a\xe1|[\x80-\x8a\xa8\xa9\xaf]\x80\xe2|\x9f\x81\xe2|\x80\x80\xe3)+"
)
# Bytes that may start a space (ASCII white space and the lead bytes of the others): one more than their
# count bounds the fields of a string.
_SPACE_STARTS = b"\t\n\v\f\r \xc2\xe1\xe2\xe3"
_PIECE_BYTES = 48
"""Charged per string split or fields make (a bytes object and its list slot), besides its text."""
_RUNE_BYTES = 96
"""Charged per distinct character of a trim cutset (a str and its set entry), and per character trimmed."""


def characters(value: bytes) -> list[bytes]:
    """The UTF-8 characters of a string as Go iterates them; each invalid byte is one of its own."""
    return _CHARACTER.findall(value)


def _rune(character: bytes) -> str:
    """The character a UTF-8 sequence stands for; U+FFFD for an invalid byte."""
    try:
        return character.decode("utf-8")
    except UnicodeDecodeError:
        return _INVALID


def go_split(value: bytes, sep: bytes) -> list[bytes]:
    """Go's strings.Split(value, sep)."""
    if sep:
        return value.split(sep)
    return characters(value)


def go_fields(value: bytes) -> list[bytes]:
    """Go's strings.Fields: the runs of text between Unicode white space."""
    return [part for part in _SPACES.split(value) if part]


def go_trim_space(value: bytes) -> bytes:
    """Go's strings.TrimSpace, in linear time."""
    leading = _LEADING_SPACES.match(value)
    start = leading.end() if leading else 0
    trailing = _TRAILING_SPACES_REVERSED.match(value[::-1])
    end = len(value) - (trailing.end() if trailing else 0)
    return value[start : max(start, end)]


def _first_character(value: bytes, start: int) -> bytes:
    """The character at start, as Go's utf8.DecodeRune reads it (an invalid byte is one of its own)."""
    found = _CHARACTER.match(value, start)
    assert found is not None  # the pattern matches any byte
    return found.group()


def _last_character(value: bytes, end: int) -> bytes:
    """The character ending at end, as Go's utf8.DecodeLastRune reads it."""
    start = end - 1
    if value[start] < 0x80:
        return value[start:end]
    limit = max(0, end - 4)
    start -= 1
    while start >= limit and 0x80 <= value[start] < 0xC0:
        start -= 1
    start = max(start, 0)
    character = _first_character(value, start)
    if start + len(character) != end:
        return value[end - 1 : end]
    return character


def go_trim(value: bytes, cutset: bytes, charge: Callable[[int], None] = lambda nbytes: None) -> bytes:
    """Go's strings.Trim: drop leading and trailing characters that occur in cutset.

    Only the characters trimmed are looked at, one by one (each charged, as is each distinct character of the
    cutset: the loop is Python's).
    """
    if not value or not cutset:
        return value
    if cutset.isascii():
        # ASCII bytes never occur inside a longer character: trimming bytes is trimming characters.
        return value.strip(cutset)
    cut: set[str] = set()
    for found in _CHARACTER.finditer(cutset):
        before = len(cut)
        cut.add(_rune(found.group()))
        if len(cut) > before:
            charge(_RUNE_BYTES)
    start, end = 0, len(value)
    while start < end:
        character = _first_character(value, start)
        if _rune(character) not in cut:
            break
        charge(_RUNE_BYTES)
        start += len(character)
    while end > start:
        character = _last_character(value, end)
        if _rune(character) not in cut:
            break
        charge(_RUNE_BYTES)
        end -= len(character)
    return value[start:end]


_OBJECTS = rb"""
local type, tostring, tonumber, error, select = type, tostring, tonumber, error, select
local setmetatable, getmetatable = setmetatable, getmetatable
local sub, find, match = string.sub, string.find, string.match
local concat = table.concat

return function(number_text)
  local function argument_text(v, position, name)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" then return number_text(v) end
    error("bad argument #" .. position .. " to '" .. name .. "' (string expected, got " .. t .. ")", 3)
  end

  local Reader, Builder = {}, {}
  local reader_methods, builder_methods = {}, {}
  Reader.__index, Builder.__index = reader_methods, builder_methods
  Reader.__tostring = function() return "strings.Reader" end
  Builder.__tostring = function() return "strings.Builder" end

  local function check(self, mt, name, kind)
    if getmetatable(self) ~= mt then
      error("bad argument #1 to '" .. name .. "' (" .. kind .. " expected, got " .. type(self) .. ")", 3)
    end
  end

  function reader_methods.read(self, fmt)
    check(self, Reader, "read", "strings.Reader")
    local s, pos = self.s, self.pos
    if fmt == nil then fmt = "*l" end
    if type(fmt) == "number" then
      if fmt <= 0 then return "" end
      if pos > #s then return nil end
      local chunk = sub(s, pos, pos + fmt - 1)
      self.pos = pos + #chunk
      return chunk
    end
    local f = type(fmt) == "string" and sub(fmt, 1, 1) == "*" and sub(fmt, 2, 2) or ""
    if f == "a" then
      self.pos = #s + 1
      return sub(s, pos)
    elseif f == "l" then
      if pos > #s then return nil end
      local nl = find(s, "\n", pos, true)
      if nl == nil then
        self.pos = #s + 1
        return sub(s, pos)
      end
      self.pos = nl + 1
      return sub(s, pos, nl - 1)
    elseif f == "n" then
      if pos > #s then return 0 end
      local from, to, text = find(s, "^%s*([%+%-]?[%d%.]+[eE]?[%+%-]?%d*)", pos)
      local n = from and tonumber(text)
      if n == nil then error("expected number", 2) end
      self.pos = to + 1
      return n
    end
    error("bad argument #2 to 'read' (unknown fmt string)", 2)
  end

  function reader_methods.close(self)
    check(self, Reader, "close", "strings.Reader")
  end

  function builder_methods.write(self, ...)
    check(self, Builder, "write", "strings.Builder")
    local parts, n = self.parts, self.n
    for i = 1, select("#", ...) do
      n = n + 1
      parts[n] = argument_text((select(i, ...)), i + 1, "write")
    end
    self.n = n
  end

  function builder_methods.string(self)
    check(self, Builder, "string", "strings.Builder")
    local s = concat(self.parts, "", 1, self.n)
    self.parts, self.n = {s}, 1
    return s
  end

  function builder_methods.close(self)
    check(self, Builder, "close", "strings.Builder")
  end

  local function new_reader(s)
    s = argument_text(s, 1, "new_reader")
    return setmetatable({s = s, pos = 1}, Reader)
  end

  local function new_builder()
    return setmetatable({parts = {}, n = 0}, Builder)
  end

  return new_reader, new_builder, Reader, Builder
end
"""


class StringsModule:
    """Builds the `strings` table for one execution."""

    name = "strings"
    inline_safe = True
    """Pure computation: scripts using it may run on the event loop."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return the module table: Go's string functions plus the reader and builder constructors."""

        # The pieces are charged before they are made: splitting a big string into characters makes a Python
        # object per byte.

        def split(value: object = None, *args: object) -> list[bytes]:
            subject = check_string(value, 1, "split")
            sep = check_string(args[0], 2, "split") if args else b""
            pieces = subject.count(sep) + 1 if sep else len(subject)
            ctx.charge(len(subject) + _PIECE_BYTES * pieces)
            return go_split(subject, sep)

        def fields(value: object = None, *_: object) -> list[bytes]:
            subject = check_string(value, 1, "fields")
            spaces = len(subject) - len(subject.translate(None, _SPACE_STARTS))
            ctx.charge(len(subject) + _PIECE_BYTES * (spaces + 1))
            return go_fields(subject)

        def trim(value: object = None, cutset: object = None, *_: object) -> bytes:
            return go_trim(check_string(value, 1, "trim"), check_string(cutset, 2, "trim"), ctx.charge)

        def trim_space(value: object = None, *_: object) -> bytes:
            return go_trim_space(check_string(value, 1, "trim_space"))

        def trim_prefix(value: object = None, prefix: object = None, *_: object) -> bytes:
            subject, start = check_string(value, 1, "trim_prefix"), check_string(prefix, 2, "trim_prefix")
            return subject[len(start) :] if subject.startswith(start) else subject

        def trim_suffix(value: object = None, suffix: object = None, *_: object) -> bytes:
            subject, end = check_string(value, 1, "trim_suffix"), check_string(suffix, 2, "trim_suffix")
            return subject[: len(subject) - len(end)] if end and subject.endswith(end) else subject

        def has_prefix(value: object = None, prefix: object = None, *_: object) -> bool:
            return check_string(value, 1, "has_prefix").startswith(check_string(prefix, 2, "has_prefix"))

        def has_suffix(value: object = None, suffix: object = None, *_: object) -> bool:
            return check_string(value, 1, "has_suffix").endswith(check_string(suffix, 2, "has_suffix"))

        def contains(value: object = None, part: object = None, *_: object) -> bool:
            return check_string(part, 2, "contains") in check_string(value, 1, "contains")

        factory = lua_chunk(lua, "gopher-lua-libs.strings", _OBJECTS)
        new_reader, new_builder, reader_mt, builder_mt = factory(ctx.to_lua(lua_number_text))
        return {
            "split": split,
            "fields": fields,
            "trim": trim,
            "trim_space": trim_space,
            "trim_prefix": trim_prefix,
            "trim_suffix": trim_suffix,
            "has_prefix": has_prefix,
            "has_suffix": has_suffix,
            "contains": contains,
            "new_reader": new_reader,
            "new_builder": new_builder,
            "Reader": reader_mt,
            "Builder": builder_mt,
        }


module = StringsModule()
