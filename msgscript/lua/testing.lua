-- The Lua half of the `test` module of `msgscriptcli test` (msgscript/lua/testing.py): the assertions, and
-- the wrappers of test.invoke and test.http. It runs once per runtime, in the runtime's own globals, and
-- returns the function that builds the module's table for one execution.
local TEST_SOURCE, TIMEOUT -- set by the builder (the chunk name of test files, the deadline's error text)
local error, type, tostring, next, pcall, rawequal, unpack = error, type, tostring, next, pcall, rawequal, unpack
local getinfo = debug.getinfo
local format, find, gsub, sub, byte = string.format, string.find, string.gsub, string.sub, string.byte
local concat, sort = table.concat, table.sort

local MAX_TEXT = 2000
local MAX_ITEMS = 20
local MAX_DEPTH = 3

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s)
  local more = ""
  if #s > MAX_TEXT then
    more = format("...(%d more bytes)", #s - MAX_TEXT)
    s = sub(s, 1, MAX_TEXT)
  end
  s = gsub(s, '[%c"\\]', function(c) return ESCAPES[c] or format("\\%03d", byte(c)) end)
  return '"' .. s .. '"' .. more
end

local show

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function show_table(t, depth, seen)
  if seen[t] or depth >= MAX_DEPTH then return "{...}" end
  seen[t] = true
  local parts, n = {}, #t
  for i = 1, n do parts[i] = show(t[i], depth + 1, seen) end
  local keys = {}
  for k in next, t do
    if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
  end
  sort(keys, key_order)
  for _, k in next, keys do
    local name = type(k) == "string" and find(k, "^[%a_][%w_]*$") and k or "[" .. show(k, depth + 1, seen) .. "]"
    parts[#parts + 1] = name .. " = " .. show(t[k], depth + 1, seen)
  end
  seen[t] = nil
  if #parts > MAX_ITEMS then
    local kept = {}
    for i = 1, MAX_ITEMS do kept[i] = parts[i] end
    kept[MAX_ITEMS + 1] = format("...(%d more)", #parts - MAX_ITEMS)
    parts = kept
  end
  return "{" .. concat(parts, ", ") .. "}"
end

-- A value as a test's author would write it: strings quoted and escaped, tables with their contents.
show = function(v, depth, seen)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "table" then return show_table(v, depth or 0, seen or {}) end
  return tostring(v)
end

-- Tables are equal when they hold equal values under the same keys (metatables are not compared).
local function equal(a, b, seen)
  if rawequal(a, b) then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in next, a do
    local w = b[k]
    if w == nil or not equal(v, w, seen) then return false end
  end
  for k in next, b do
    if a[k] == nil then return false end
  end
  return true
end

-- Raise `text` at the line of the test file that led here: the first frame above the assertion that
-- belongs to the file (not to a module or the sandbox).
local function fail(text, note)
  if note ~= nil then text = tostring(note) .. ": " .. text end
  local level = 3 -- 1 is this function, 2 the assertion, 3 its caller
  local info = getinfo(level, "S")
  while info ~= nil and info.source ~= TEST_SOURCE do
    level = level + 1
    info = getinfo(level, "S")
  end
  error(text, info ~= nil and level or 3)
end

local function check_string(value, position, name)
  if type(value) == "number" then return tostring(value) end
  if type(value) ~= "string" then
    error(format("bad argument #%d to '%s' (string expected, got %s)", position, name, type(value)), 3)
  end
  return value
end

local M = {}

function M.assert_equal(actual, expected, note)
  if not equal(actual, expected) then fail("expected " .. show(expected) .. ", got " .. show(actual), note) end
end

function M.assert_not_equal(actual, unexpected, note)
  if equal(actual, unexpected) then fail("expected a value other than " .. show(unexpected), note) end
end

function M.assert_true(value, note)
  if not value then fail("expected a true value (not nil or false), got " .. show(value), note) end
end

function M.assert_false(value, note)
  if value then fail("expected nil or false, got " .. show(value), note) end
end

function M.assert_nil(value, note)
  if value ~= nil then fail("expected nil, got " .. show(value), note) end
end

function M.assert_not_nil(value, note)
  if value == nil then fail("expected a value, got nil", note) end
end

function M.assert_match(text, pattern, note)
  pattern = check_string(pattern, 2, "assert_match")
  if type(text) ~= "string" then
    fail("expected a string matching " .. show(pattern) .. ", got " .. show(text), note)
  elseif not find(text, pattern) then
    fail(show(text) .. " does not match the pattern " .. show(pattern), note)
  end
end

function M.assert_contains(container, item, note)
  if type(container) == "string" then
    item = check_string(item, 2, "assert_contains")
    if not find(container, item, 1, true) then fail(show(container) .. " does not contain " .. show(item), note) end
    return
  end
  if type(container) ~= "table" then
    fail("expected a string or a table to look into, got " .. show(container), note)
    return
  end
  for _, v in next, container do
    if equal(v, item) then return end
  end
  fail(show(container) .. " does not contain " .. show(item), note)
end

-- Calls fn; passes when it raises an error (whose text matches `pattern`, when given) and returns that text.
function M.assert_error(fn, pattern, note)
  if pattern ~= nil then pattern = check_string(pattern, 2, "assert_error") end
  local ok, err = pcall(fn)
  -- The deadline's error must not be taken for the one expected.
  if not ok and err == TIMEOUT then error(err, 0) end
  if ok then
    fail("expected an error, but the function returned", note)
    return
  end
  local text = type(err) == "string" and err or tostring(err)
  if pattern ~= nil and not find(text, pattern) then
    fail("the error " .. show(text) .. " does not match the pattern " .. show(pattern), note)
  end
  return text
end

function M.fail(message)
  fail(message == nil and "failed" or tostring(message))
end

return function(py_invoke, py_http, url, test_source, timeout)
  TEST_SOURCE, TIMEOUT = test_source, timeout
  local module = { url = url }
  for name, f in next, M do module[name] = f end

  function module.invoke(subject, payload, method, url_)
    subject = check_string(subject, 1, "invoke")
    payload = payload == nil and "" or check_string(payload, 2, "invoke")
    method = method == nil and "" or check_string(method, 3, "invoke")
    url_ = url_ == nil and "" or check_string(url_, 4, "invoke")
    return py_invoke(subject, payload, method, url_)
  end

  function module.http(method, path, body, headers)
    method = check_string(method, 1, "http")
    path = check_string(path, 2, "http")
    body = body == nil and "" or check_string(body, 3, "http")
    local flat = {}
    if headers ~= nil then
      if type(headers) ~= "table" then
        error("bad argument #4 to 'http' (table expected, got " .. type(headers) .. ")", 2)
      end
      for k, v in next, headers do
        if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
          error("bad argument #4 to 'http' (header names and values must be strings)", 2)
        end
        flat[#flat + 1] = k
        flat[#flat + 1] = tostring(v)
      end
    end
    return py_http(method, path, body, unpack(flat))
  end

  return module
end
