"""The `inspect` Lua module: human-readable text for any Lua value, in the format of inspect.lua 3.1.

The module table is callable: `inspect(value [, options])` and `inspect.inspect(value [, options])`
return the same text. Options: `depth` (nested tables below it print as `{...}`), `newline` (default
"\\n"), `indent` (default two spaces) and `process(item, path)`, which may replace or drop (nil) each
item before printing; its paths end with `inspect.KEY` for keys and `inspect.METATABLE` for metatables.

The format: `{ 1, 2, 3 }` for sequences, one `key = value` line per other key (identifier keys bare,
others in brackets, sorted numbers first, then booleans, strings, tables, functions, userdata and
threads), `<metatable> = ...` last, strings quoted with their control characters escaped, tables met
more than once marked `<1>{...}` and later shown as `<table 1>`, functions as `<function 1>`.

Written in Lua: it walks tables with `next` and `getmetatable` (what Python cannot do without copying),
and the deadline hook covers it like the script's own code.
"""

from __future__ import annotations

from typing import Any

from msgscript.lua.api import ModuleContext, lua_chunk

_SOURCE = rb"""
local type, tostring, next, rawget = type, tostring, next, rawget
local getmetatable, setmetatable, select = getmetatable, setmetatable, select
local byte, find, format = string.byte, string.find, string.format
local gsub, match, rep = string.gsub, string.match, string.rep
local sort, concat = table.sort, table.concat
local floor, huge = math.floor, math.huge

-- Control characters with a letter escape keep it; the others print as their decimal code, padded to
-- three digits when a digit follows (so that the text reads back as the same string).
local LETTER = {[7] = "a", [8] = "b", [9] = "t", [10] = "n", [11] = "v", [12] = "f", [13] = "r"}

local function escape_control(c, digit)
  local code = byte(c)
  if LETTER[code] then return "\\" .. LETTER[code] .. digit end
  if code > 31 then return c .. digit end
  if digit == "" then return "\\" .. code end
  return format("\\%03d", code) .. digit
end

local function quoted(s)
  s = gsub(s, "\\", "\\\\")
  s = gsub(s, "(%c)(%d?)", escape_control)
  if find(s, '"', 1, true) and not find(s, "'", 1, true) then
    return "'" .. s .. "'"
  end
  return '"' .. (gsub(s, '"', '\\"')) .. '"'
end

local function is_identifier(k)
  return type(k) == "string" and match(k, "^[_%a][_%a%d]*$") ~= nil
end

local RANK = {number = 1, boolean = 2, string = 3, table = 4, ["function"] = 5, userdata = 6, thread = 7}

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  if ta == tb and (ta == "string" or ta == "number") then return a < b end
  local ra, rb = RANK[ta], RANK[tb]
  if ra and rb then return ra < rb end
  if ra then return true end
  if rb then return false end
  return ta < tb
end

local function sequence_length(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  return n
end

local function other_keys(t, length)
  local keys, n = {}, 0
  for k in next, t do
    if not (type(k) == "number" and k >= 1 and k <= length and floor(k) == k) then
      n = n + 1
      keys[n] = k
    end
  end
  sort(keys, key_before)
  return keys, n
end

local function count_tables(v, counts)
  if type(v) ~= "table" then return end
  local seen = counts[v]
  if seen then
    counts[v] = seen + 1
    return
  end
  counts[v] = 1
  for k, item in next, v do
    count_tables(k, counts)
    count_tables(item, counts)
  end
  count_tables(getmetatable(v), counts)
end

local function extended(path, ...)
  local copy, n = {}, #path
  for i = 1, n do copy[i] = path[i] end
  for i = 1, select("#", ...) do copy[n + i] = (select(i, ...)) end
  return copy
end

return function()
  local KEY = setmetatable({}, {__tostring = function() return "inspect.KEY" end})
  local METATABLE = setmetatable({}, {__tostring = function() return "inspect.METATABLE" end})

  local function transformed(process, item, path, done)
    if item == nil then return nil end
    if done[item] ~= nil then return done[item] end
    local result = process(item, path)
    if type(result) ~= "table" then return result end
    local copy = {}
    done[item] = copy
    for k, v in next, result do
      local new_key = transformed(process, k, extended(path, k, KEY), done)
      if new_key ~= nil then
        copy[new_key] = transformed(process, v, extended(path, new_key), done)
      end
    end
    local mt = transformed(process, getmetatable(result), extended(path, METATABLE), done)
    if type(mt) == "table" then setmetatable(copy, mt) end
    return copy
  end

  local function render(root, options)
    options = options or {}
    local max_depth = options.depth or huge
    local newline = options.newline or "\n"
    local indent = options.indent or "  "
    if options.process then root = transformed(options.process, root, {}, {}) end

    local counts = {}
    count_tables(root, counts)
    local ids, last_ids = {}, {}
    local out, n = {}, 0

    local function emit(s)
      n = n + 1
      out[n] = s
    end

    local function id_of(v)
      local id = ids[v]
      if id == nil then
        local kind = type(v)
        id = (last_ids[kind] or 0) + 1
        last_ids[kind] = id
        ids[v] = id
      end
      return tostring(id)
    end

    local function new_line(level)
      emit(newline)
      emit(rep(indent, level))
    end

    local value

    local function key(k, level)
      if is_identifier(k) then
        emit(k)
      else
        emit("[")
        value(k, level)
        emit("]")
      end
    end

    local function table_text(t, level)
      if t == KEY or t == METATABLE then return emit(tostring(t)) end
      if ids[t] ~= nil then return emit("<table " .. id_of(t) .. ">") end
      if level >= max_depth then return emit("{...}") end
      if counts[t] > 1 then emit("<" .. id_of(t) .. ">") end
      local length = sequence_length(t)
      local keys, nkeys = other_keys(t, length)
      local mt = getmetatable(t)
      local inner, written = level + 1, 0
      emit("{")
      for i = 1, length do
        if written > 0 then emit(",") end
        emit(" ")
        value(rawget(t, i), inner)
        written = written + 1
      end
      for i = 1, nkeys do
        local k = keys[i]
        if written > 0 then emit(",") end
        new_line(inner)
        key(k, inner)
        emit(" = ")
        value(rawget(t, k), inner)
        written = written + 1
      end
      local has_mt = type(mt) == "table"
      if has_mt then
        if written > 0 then emit(",") end
        new_line(inner)
        emit("<metatable> = ")
        value(mt, inner)
      end
      if nkeys > 0 or has_mt then
        new_line(level)
      elseif length > 0 then
        emit(" ")
      end
      emit("}")
    end

    value = function(v, level)
      local kind = type(v)
      if kind == "string" then
        emit(quoted(v))
      elseif kind == "number" or kind == "boolean" or kind == "nil" then
        emit(tostring(v))
      elseif kind == "table" then
        table_text(v, level)
      else
        emit("<" .. kind .. " " .. id_of(v) .. ">")
      end
    end

    value(root, 0)
    return concat(out)
  end

  local inspect = {inspect = render, KEY = KEY, METATABLE = METATABLE, _VERSION = "inspect.lua 3.1.0"}
  return setmetatable(inspect, {__call = function(_, ...) return render(...) end})
end
"""


class InspectModule:
    """Builds the callable `inspect` table for one execution."""

    name = "inspect"
    inline_safe = True
    """Pure computation in Lua, interrupted by the deadline hook: scripts using it may run on the event loop."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return a fresh callable module table (a script may change it; the next execution gets its own)."""
        return lua_chunk(lua, "gopher-lua-libs.inspect", _SOURCE)()


module = InspectModule()
