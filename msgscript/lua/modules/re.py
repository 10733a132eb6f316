"""The `re` Lua module: Go (RE2) regular expressions with the calling conventions of Lua's string library.

As gluare (the Go msgscript's `re`): `find(s, pattern [, init [, plain]])` returns the 1-based start and
inclusive end of the match and its captures, or nil; `match(s, pattern [, init])` the captures (or the
whole match when the pattern has none), or nil; `gmatch(s, pattern)` an iterator over the same;
`gsub(s, pattern, repl [, n])` the new string and the number of matches, where a string `repl` uses Go's
expansion syntax (`$1`, `${1}`, `${name}`, `$$`), a table is indexed by the first capture (or the whole
match) and a function gets the captures (or the whole match); a false or nil value keeps the match.
`quote(s)` escapes the characters Go's regexp.QuoteMeta escapes. An invalid pattern is a Lua error with
Go's text (`error parsing regexp: missing closing ): `(a``).

Strings are bytes and positions byte offsets. Matching is RE2's: linear in the subject's length, so no
pattern can make a script hang; backreferences and look-around are invalid patterns, as in Go.
Several matches follow Go's FindAll rules: an empty match right after a match is skipped.
A capture that took no part in the match is the empty string, as Go's FindStringSubmatch reports it,
except that `find` finds nothing when its first capture took no part (as gluare does).

`gmatch` finds every match when it is called, as gluare does. What `gmatch` and `gsub` build (the matches
found, the new string) counts against the script's memory cap as it grows: past it they fail with the
Lua error `not enough memory`.
"""

from __future__ import annotations

import array
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import re2

from msgscript.lua.args import LuaArgumentError, check_string, lua_type_name, opt_number
from msgscript.lua.contract import ModuleContext, lua_chunk

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False

# RE2's error texts, and what Go's regexp/syntax says for the same mistake.
_GO_ERRORS = {
    "missing )": "missing closing )",
    "missing ]": "missing closing ]",
    "unexpected )": "unexpected )",
    "invalid escape sequence": "invalid escape sequence",
    "invalid character class": "invalid character class",
    "invalid character class range": "invalid character class range",
    "bad repetition operator": "invalid nested repetition operator",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid named capture group": "invalid named capture",
    "invalid UTF-8": "invalid UTF-8",
    "trailing \\": "trailing backslash at end of expression",
    "pattern too large - compile failed": "expression too large",
    "pattern too large - reverse compile failed": "expression too large",
    "nesting depth exceeded": "expression nests too deeply",
}

# gmatch, and gsub with a table or a function: the Python half finds the matches (at once, as gluare does)
# and returns their spans packed in a string, 4 bytes a number; the Lua half cuts the captures out of the
# script's own string and calls the replacement, so that the script's code runs under the sandbox's limits
# and no copy of the subject outlives the call. A match is `1 + groups` pairs (1-based start, inclusive end):
# the whole match, then each group ((1, 0), the empty string, for a group that took no part).
_MATCHES = b"""
local type, error, unpack, concat, sub, byte = type, error, unpack, table.concat, string.sub, string.byte

local function number(spans, i)
  local p = 4 * i - 3
  local a, b, c, d = byte(spans, p, p + 3)
  return a + 256 * (b + 256 * (c + 256 * d))
end

local function capture(subject, spans, base, g)
  return sub(subject, number(spans, base + 2 * g + 1), number(spans, base + 2 * g + 2))
end

local function captures(subject, spans, base, ngroups)
  if ngroups == 0 then return capture(subject, spans, base, 0) end
  local list = {}
  for g = 1, ngroups do list[g] = capture(subject, spans, base, g) end
  return unpack(list, 1, ngroups)
end

return function(gmatch_prepare, gsub_prepare)
  local function gmatch(s, pattern)
    local kind, spans, ngroups, subject = gmatch_prepare(s, pattern)
    if kind == 1 then error(spans, 2) end
    subject = subject or s
    local width = 2 * (ngroups + 1)
    local count, m = #spans / (4 * width), 0
    return function()
      if m >= count then return nil end
      m = m + 1
      return captures(subject, spans, (m - 1) * width, ngroups)
    end
  end

  local function gsub(s, pattern, repl, n)
    local kind, a, b, c = gsub_prepare(s, pattern, repl, n)
    if kind == 0 then return a, b end
    if kind == 1 then error(a, 2) end
    local spans, ngroups, subject = a, b, c or s
    local width = 2 * (ngroups + 1)
    local count = #spans / (4 * width)
    local by_table = type(repl) == "table"
    local out, nout, last = {}, 0, 1
    for m = 1, count do
      local base = (m - 1) * width
      local first, final = number(spans, base + 1), number(spans, base + 2)
      local value
      if by_table then
        value = repl[capture(subject, spans, base, ngroups > 0 and 1 or 0)]
      else
        value = repl(captures(subject, spans, base, ngroups))
      end
      local t = type(value)
      if value == nil or value == false then
        value = sub(subject, first, final)
      elseif t ~= "string" and t ~= "number" then
        error("invalid replacement value (a " .. t .. ")", 2)
      end
      out[nout + 1], out[nout + 2] = sub(subject, last, first - 1), value
      nout = nout + 2
      last = final + 1
    end
    out[nout + 1] = sub(subject, last)
    return concat(out), count
  end

  return gmatch, gsub
end
"""
# Charged per match found (the work of finding it), per number of its packed spans (the array, and its copy
# handed to Lua), and per part of a gsub template applied.
_MATCH_BYTES = 16
_SPAN_BYTES = 8
_QUOTED_BYTE = re.compile(rb"[\\.+*?()|\[\]{}^$]")


def _integer(value: object, default: int, position: int, function: str) -> int:
    """An optional integer argument: numbers are truncated, numeric strings read; NaN and infinities refused."""
    number = opt_number(value, position, function, default)
    if not math.isfinite(number):
        raise LuaArgumentError(position, function, f"number expected, got {lua_type_name(value)}")
    return int(number)


def compile_pattern(pattern: bytes) -> Any:
    """Compile a Go regular expression (RE2 caches recent ones); raises ValueError with Go's error text."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        code, _, arg = text.partition(": ")
        go_code = _GO_ERRORS.get(code)
        if go_code is None:
            raise ValueError(f"error parsing regexp: {text}") from None
        raise ValueError(f"error parsing regexp: {go_code}: `{arg}`") from None


def _rune_width(s: bytes, pos: int) -> int:
    """The length of the UTF-8 character at pos (1 for a byte that starts none), as Go steps over it."""
    for width in (1, 2, 3, 4):
        try:
            s[pos : pos + width].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return width
    return 1


def iter_matches(rx: Any, s: bytes, limit: int = -1) -> Iterator[list[tuple[int, int]]]:
    """The spans (whole match, then groups; (-1, -1) for a group not taking part) of successive matches.

    Go's rules: at most `limit` matches (all if negative), and an empty match right after the previous
    match is skipped, the search then moving on by one character.
    """
    pos, prev_end, count, end = 0, -1, 0, len(s)
    groups = range(rx.groups + 1)
    while (limit < 0 or count < limit) and pos <= end:
        m = rx.search(s, pos)
        if m is None:
            return
        start, stop = m.span()
        accept = True
        if stop == pos:
            accept = start != prev_end
            pos += _rune_width(s, pos) if pos < end else 1
        else:
            pos = stop
        prev_end = stop
        if accept:
            count += 1
            yield [m.span(i) for i in groups]


def _captures(s: bytes | memoryview, spans: list[tuple[int, int]]) -> list[bytes]:
    """The captured strings of a match ("" for a group that took no part), or the whole match if none."""
    if len(spans) == 1:
        start, stop = spans[0]
        return [bytes(s[start:stop])]
    return [bytes(s[a:b]) if a >= 0 else b"" for a, b in spans[1:]]


def _is_name_char(char: str) -> bool:
    return char == "_" or unicodedata.category(char)[0] == "L" or unicodedata.category(char) == "Nd"


def _template_name(template: bytes, at: int) -> tuple[bytes, int] | None:
    """The group name after a `$` at `at` (`name` or `{name}`) and where the rest starts; None if malformed."""
    brace = template[at : at + 1] == b"{"
    i = at + 1 if brace else at
    start = i
    while i < len(template):
        width = _rune_width(template, i)
        try:
            char = template[i : i + width].decode("utf-8")
        except UnicodeDecodeError:
            break
        if not _is_name_char(char):
            break
        i += width
    if i == start:
        return None
    name = template[start:i]
    if brace:
        if template[i : i + 1] != b"}":
            return None
        i += 1
    return name, i


def _group_number(name: bytes) -> int:
    """A numeric group name's number; -1 for names (and for leading zeros or huge numbers, as Go)."""
    if not name.isdigit() or len(name) > 8 or (len(name) > 1 and name[:1] == b"0"):
        return -1
    return int(name)


Template = list[bytes | int]
"""A replacement template read once: literal text, and the numbers of the groups to insert."""


def parse_template(template: bytes, names: dict[bytes, int], groups: int) -> Template:
    """Read Go's Regexp.Expand syntax (`$1`, `${1}`, `$name`, `${name}`, `$$`) once for all matches; a reference
    to a group that does not exist inserts nothing and is left out."""
    parts: Template = []
    literal = bytearray()
    i = 0
    while True:
        dollar = template.find(b"$", i)
        if dollar < 0:
            literal += template[i:]
            break
        literal += template[i:dollar]
        i = dollar + 1
        if template[i : i + 1] == b"$":
            literal += b"$"
            i += 1
            continue
        parsed = _template_name(template, i)
        if parsed is None:
            literal += b"$"
            continue
        name, i = parsed
        number = _group_number(name)
        if number < 0:
            number = names.get(name, -1)
        if 0 <= number <= groups:
            if literal:
                parts.append(bytes(literal))
                literal.clear()
            parts.append(number)
    if literal:
        parts.append(bytes(literal))
    return parts


def _quote(s: bytes) -> bytes:
    """Go's regexp.QuoteMeta: a backslash before each of `\\.+*?()|[]{}^$`."""
    return _QUOTED_BYTE.sub(rb"\\\g<0>", s)


def _start_index(init: int, length: int) -> int:
    """A Lua string position (1-based, negative from the end) as a 0-based offset within the subject."""
    if init > 0:
        init -= 1
    elif init < 0:
        init = length + init
    return min(max(init, 0), length)


def find(s: object = None, pattern: object = None, init: object = None, plain: object = None, *_: object) -> Any:
    """re.find: start, end and captures of the first match at or after init, or nil."""
    subject = check_string(s, 1, "find")
    pat = check_string(pattern, 2, "find")
    if not subject and not pat:
        return (1, 0)
    offset = _start_index(_integer(init, 1, 3, "find"), len(subject))
    if plain is not None and plain is not False:
        found = subject.find(pat, offset)
        return None if found < 0 else (found + 1, found + len(pat))
    rx = compile_pattern(pat)
    # A view, not a copy: the pattern sees the subject from init on (`^` matches there).
    rest = memoryview(subject)[offset:]
    m = rx.search(rest)
    if m is None:
        return None
    captures = [m.span(i) for i in range(1, rx.groups + 1)]
    if captures and captures[0][0] < 0:
        # gluare's rule (its own tests pin it): a first capture that took no part means no match.
        return None
    start, stop = m.span()
    return (offset + start + 1, offset + stop, *(bytes(rest[a:b]) if a >= 0 else b"" for a, b in captures))


def match(s: object = None, pattern: object = None, init: object = None, *_: object) -> Any:
    """re.match: the captures (or the whole match) of the first match at or after init, or nil."""
    subject = check_string(s, 1, "match")
    pat = check_string(pattern, 2, "match")
    offset = _start_index(_integer(init, 1, 3, "match"), len(subject))
    rx = compile_pattern(pat)
    rest = memoryview(subject)[offset:]
    m = rx.search(rest)
    if m is None:
        return None
    return tuple(_captures(rest, [m.span(i) for i in range(rx.groups + 1)]))


def packed_spans(rx: Any, subject: bytes, limit: int, charge: Callable[[int], None]) -> bytes:
    """The spans of the successive matches (see _MATCHES), 4 little-endian bytes a number, charged as found."""
    if len(subject) >= 2**32:
        raise ValueError("the subject is too long for a pattern search")
    numbers = array.array("I")
    per_match = _MATCH_BYTES + 2 * (rx.groups + 1) * _SPAN_BYTES
    for found in iter_matches(rx, subject, limit):
        charge(per_match)
        for start, stop in found:
            numbers.extend((start + 1, stop) if start >= 0 else (1, 0))
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers.tobytes()


def _gmatch_prepare(charge: Callable[[int], None], s: object, pattern: object) -> tuple[object, ...]:
    """The Python half of re.gmatch: (1, error) on bad arguments, else (0, spans, groups, subject); the
    subject comes back only when the script passed a number (Lua then cuts from the text it stands for)."""
    try:
        subject = check_string(s, 1, "gmatch")
        rx = compile_pattern(check_string(pattern, 2, "gmatch"))
    except (LuaArgumentError, ValueError) as exc:
        return (1, str(exc))
    return (0, packed_spans(rx, subject, -1, charge), rx.groups, None if isinstance(s, bytes) else subject)


def _gsub_prepare(
    charge: Callable[[int], None], s: object, pattern: object, repl: object, n: object
) -> tuple[object, ...]:
    """The Python half of re.gsub: (0, result, count) for a string replacement, (1, error) on bad arguments,
    (2, spans, groups, subject) for a table or function replacement, done in Lua (the subject as gmatch's).

    What it builds is charged as it grows: the result, or the spans handed to Lua.
    """
    try:
        subject = check_string(s, 1, "gsub")
        pat = check_string(pattern, 2, "gsub")
        kind = lua_type_name(repl)
        if kind not in ("string", "number", "table", "function"):
            raise LuaArgumentError(3, "gsub", f"string/table/function expected, got {kind}")
        limit = _integer(n, -1, 4, "gsub")
        rx = compile_pattern(pat)
    except (LuaArgumentError, ValueError) as exc:
        return (1, str(exc))
    if limit == 0:
        return (0, subject, 0)
    if kind in ("table", "function"):
        packed = packed_spans(rx, subject, limit, charge)
        return (2, packed, rx.groups, None if isinstance(s, bytes) else subject)
    template = parse_template(check_string(repl, 3, "gsub"), dict(rx.groupindex), rx.groups)
    out = bytearray()
    last = count = 0
    for spans in iter_matches(rx, subject, limit):
        start, stop = spans[0]
        grown = len(out)
        out += subject[last:start]
        for part in template:
            if isinstance(part, bytes):
                out += part
            else:
                begin, end = spans[part]
                if begin >= 0:
                    out += subject[begin:end]
        # The text added, and the work of the match and of its template's parts, even those adding nothing.
        charge(len(out) - grown + _MATCH_BYTES + _SPAN_BYTES * len(template))
        last = stop
        count += 1
    out += subject[last:]
    # The copy returned is counted by the call's accounting.
    return (0, bytes(out), count)


def quote(s: object = None, *_: object) -> bytes:
    """re.quote: the string with Go's regexp metacharacters escaped."""
    return _quote(check_string(s, 1, "quote"))


class ReModule:
    """Builds the `re` table for one execution."""

    name = "re"
    inline_safe = True
    """Pure computation in linear time, its output charged as it grows: scripts using it may run on the event
    loop (past the small budget there, they move to a worker)."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{find, match, gmatch, gsub, quote}`."""
        charge = ctx.charge

        def gmatch_prepare(s: object = None, pattern: object = None, *_: object) -> Any:
            return _gmatch_prepare(charge, s, pattern)

        def gsub_prepare(
            s: object = None, pattern: object = None, repl: object = None, n: object = None, *_: object
        ) -> Any:
            return _gsub_prepare(charge, s, pattern, repl, n)

        gmatch, gsub = lua_chunk(lua, "re", _MATCHES)(ctx.to_lua(gmatch_prepare), ctx.to_lua(gsub_prepare))
        return {"find": find, "match": match, "gmatch": gmatch, "gsub": gsub, "quote": quote}


module = ReModule()
