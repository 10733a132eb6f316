-- The Lua half of the msgscript sandbox (Lua 5.1), run once per runtime with the Python callbacks.
-- It only uses locals captured at start, so nothing a script does to its environment reaches it.
-- Returns the driver (one execution), the reset (after an escaped error) and the guard factory.
local monotonic, py_arm, py_disarm, py_load, py_workdir, py_write, py_shell = ...
local module_names, inline_modules, hook_count, TIMEOUT, ESCALATE = select(8, ...)

local type, next, select, tostring, tonumber = type, next, select, tostring, tonumber
local error, pcall, xpcall = error, pcall, xpcall
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local getfenv, setfenv, unpack, loadstring, load, loadfile = getfenv, setfenv, unpack, loadstring, load, loadfile
local collectgarbage = collectgarbage
local string, os, io, coroutine, debug, package = string, os, io, coroutine, debug, package
local byte, gsub, gmatch, find, sub = string.byte, string.gsub, string.gmatch, string.find, string.sub
local concat = table.concat
local sethook, traceback, getinfo = debug.sethook, debug.traceback, debug.getinfo
local dgetfenv, dsetfenv = debug.getfenv, debug.setfenv
local dgetmetatable, dsetmetatable = debug.getmetatable, debug.setmetatable
local dgetupvalue, dsetupvalue = debug.getupvalue, debug.setupvalue
local co_create, co_resume = coroutine.create, coroutine.resume
local io_open, io_lines, io_input, io_output = io.open, io.lines, io.input, io.output
local io_close, io_type = io.close, io.type
local os_remove, os_rename, os_setlocale = os.remove, os.rename, os.setlocale
local STDIN, STDOUT = io.stdin, io.stdout
local REAL = getfenv(0)
local STRMT = getmetatable("")

-- State of the execution in progress (one at a time per runtime).
local active, expired, deadline = false, false, 0
-- An inline execution runs on the daemon's event loop: it must stay short and may not block or touch
-- anything outside Lua. At the first attempt to, it is abandoned (escalated) and run again on a worker.
local inline, escalated, budget = false, false, 0
local cur_env, cur_chunk = nil, nil
local DETACHED = {}
local threads, nthreads = {}, 0
local io_touched = false

local function hook()
  if not active then return end
  if expired then error(TIMEOUT, 0) end
  if escalated then error(ESCALATE, 0) end
  local now = monotonic()
  if now > deadline then
    expired = true
    error(TIMEOUT, 0)
  end
  if inline and now > budget then
    escalated = true
    error(ESCALATE, 0)
  end
end

local function escalate()
  if inline then
    escalated = true
    error(ESCALATE, 0)
  end
end
sethook(hook, "", hook_count)

-- Once the deadline passed, nothing may swallow the timeout error.
local function after_pcall(ok, ...)
  if expired then error(TIMEOUT, 0) end
  if escalated then error(ESCALATE, 0) end
  return ok, ...
end

local function errtext(e)
  if type(e) == "string" then return e end
  return tostring(e)
end

-- Python functions run with the memory cap lifted, since lupa cannot survive an allocation failure
-- while it pushes their results; their failures come back as (false, message).
local function finish(ok, good, ...)
  if not ok then good = errtext(good) end
  local state = py_arm()
  if state == 1 then
    expired = true
    error(TIMEOUT, 0)
  elseif state == 2 then
    escalate()
  end
  if ok and good then return ... end
  -- Level 3: finish is tail-called by the guard, and Lua 5.1 counts the lost frame.
  if ok then error((...), 3) end
  error(good, 3)
end

local function guard(fn)
  return function(...)
    py_disarm()
    return finish(pcall(fn, ...))
  end
end

local load_module, get_workdir, write, shell = guard(py_load), guard(py_workdir), guard(py_write), guard(py_shell)

-- Asked every time: lfs.chdir may have moved the execution's current directory.
local function workdir()
  escalate()
  return get_workdir()
end

local function resolve(path)
  if type(path) == "string" and byte(path, 1) ~= 47 then
    return workdir() .. "/" .. path
  end
  return path
end

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

local function internal(f)
  return type(f) == "function" and (dgetfenv(f) == REAL or getinfo(f, "S").what == "C")
end

local function visible_env(e)
  if e == REAL then return cur_env end
  return e
end

local function track(co)
  sethook(co, hook, "", hook_count)
  nthreads = nthreads + 1
  threads[nthreads] = co
  return co
end

local function after_wrap(ok, ...)
  if expired then error(TIMEOUT, 0) end
  if escalated then error(ESCALATE, 0) end
  if not ok then error((...), 0) end
  return ...
end

local SAFE_CO = copy(coroutine)
SAFE_CO.create = function(f) return track(co_create(f)) end
SAFE_CO.resume = function(co, ...) return after_pcall(co_resume(co, ...)) end
SAFE_CO.wrap = function(f)
  local co = track(co_create(f))
  return function(...) return after_wrap(co_resume(co, ...)) end
end

local SAFE_OS = copy(os)
SAFE_OS.exit = function() error("os.exit is not allowed", 2) end
SAFE_OS.remove = function(path)
  escalate()
  return os_remove(resolve(path))
end
SAFE_OS.rename = function(from, to)
  escalate()
  return os_rename(resolve(from), resolve(to))
end
local os_tmpname = os.tmpname
SAFE_OS.tmpname = function()
  escalate()
  return os_tmpname()
end
-- Commands run in the scratch directory and are killed at the deadline (Python's subprocess).
SAFE_OS.execute = function(cmd)
  escalate()
  if cmd == nil then return 1 end
  if type(cmd) ~= "string" then
    error("bad argument #1 to 'execute' (string expected, got " .. type(cmd) .. ")", 2)
  end
  return (shell(cmd, nil, false))
end
-- The C locale is process-wide: scripts may read it, not change it.
SAFE_OS.setlocale = function(locale, category)
  if locale == nil then return os_setlocale(nil, category) end
  return nil
end

local SAFE_IO = copy(io)
SAFE_IO.open = function(path, mode) return io_open(resolve(path), mode) end
SAFE_IO.lines = function(path)
  if path == nil then return io_lines() end
  return io_lines(resolve(path))
end
SAFE_IO.input = function(file)
  if file == nil then return io_input() end
  io_touched = true
  return io_input(resolve(file))
end
SAFE_IO.output = function(file)
  if file == nil then return io_output() end
  io_touched = true
  return io_output(resolve(file))
end

-- io.popen handles: this Lua build has no popen, so "r" runs the command to completion and reads
-- its output from memory, and "w" collects what is written and feeds it to the command on close.
local PIPE = {}
local PIPE_MT = {__index = PIPE, __metatable = false, __tostring = function() return "file (pipe)" end}

local function is_pipe(f) return type(f) == "table" and dgetmetatable(f) == PIPE_MT end

local function pipe_check(p, mode)
  if not is_pipe(p) then error("bad argument #1 (pipe expected)", 3) end
  if p.closed then error("attempt to use a closed file", 3) end
  if p.mode ~= mode then return false end
  return true
end

local function pipe_read(p, fmt)
  local buf, pos = p.buf, p.pos
  if type(fmt) == "number" then
    if pos > #buf then return nil end
    local s = sub(buf, pos, pos + fmt - 1)
    p.pos = pos + #s
    return s
  end
  fmt = gsub(tostring(fmt), "^%*", "")
  local f = sub(fmt, 1, 1)
  if f == "a" then
    p.pos = #buf + 1
    return sub(buf, pos)
  elseif f == "l" or f == "L" then
    if pos > #buf then return nil end
    local e = find(buf, "\n", pos, true)
    if e == nil then
      p.pos = #buf + 1
      return sub(buf, pos)
    end
    p.pos = e + 1
    return sub(buf, pos, f == "L" and e or e - 1)
  elseif f == "n" then
    local s, e, num = find(buf, "^%s*([%+%-]?[%w%.]*[%+%-]?%d*)", pos)
    local n = s and tonumber(num)
    if n == nil then return nil end
    p.pos = e + 1
    return n
  end
  error("bad argument #1 to 'read' (invalid format)", 3)
end

function PIPE.read(p, ...)
  if not pipe_check(p, "r") then return nil, "Bad file descriptor", 9 end
  local n = select("#", ...)
  if n == 0 then return pipe_read(p, "l") end
  local results = {}
  for i = 1, n do
    local r = pipe_read(p, (select(i, ...)))
    results[i] = r
    if r == nil then return unpack(results, 1, i) end
  end
  return unpack(results, 1, n)
end

function PIPE.lines(p)
  pipe_check(p, p.mode)
  return function() return pipe_read(p, "l") end
end

function PIPE.write(p, ...)
  if not pipe_check(p, "w") then return nil, "Bad file descriptor", 9 end
  local out = p.out
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local t = type(v)
    if t ~= "string" and t ~= "number" then
      error("bad argument #" .. i .. " to 'write' (string expected, got " .. t .. ")", 2)
    end
    out[#out + 1] = tostring(v)
  end
  return p
end

function PIPE.close(p)
  pipe_check(p, p.mode)
  p.closed = true
  if p.mode == "w" then shell(p.cmd, concat(p.out), false) end
  return true
end

function PIPE.flush(p) pipe_check(p, p.mode) return true end
function PIPE.setvbuf(p) pipe_check(p, p.mode) return true end
function PIPE.seek(p) pipe_check(p, p.mode) return nil, "Illegal seek", 29 end

SAFE_IO.popen = function(cmd, mode)
  if type(cmd) ~= "string" then
    error("bad argument #1 to 'popen' (string expected, got " .. type(cmd) .. ")", 2)
  end
  mode = mode or "r"
  local p = {cmd = cmd, mode = sub(mode, 1, 1), buf = "", pos = 1, closed = false, out = {}}
  if p.mode == "r" then
    local _, output = shell(cmd, nil, true)
    p.buf = output
  elseif p.mode ~= "w" then
    error("bad argument #2 to 'popen' (invalid mode '" .. mode .. "')", 2)
  end
  return setmetatable(p, PIPE_MT)
end
SAFE_IO.close = function(f)
  if is_pipe(f) then return f:close() end
  if f == nil then return io_close() end
  return io_close(f)
end
SAFE_IO.type = function(f)
  if is_pipe(f) then return f.closed and "closed file" or "file" end
  return io_type(f)
end

local function check_fenv_target(f)
  if f == 0 or type(f) == "thread" then error("changing a thread environment is not allowed", 3) end
  if internal(f) then error("cannot change the environment of a built-in function", 3) end
end

local SAFE_DEBUG = copy(debug)
SAFE_DEBUG.sethook = function() error("debug.sethook is not allowed", 2) end
SAFE_DEBUG.getregistry = nil
SAFE_DEBUG.getfenv = function(o) return visible_env(dgetfenv(o)) end
SAFE_DEBUG.setfenv = function(o, t)
  check_fenv_target(o)
  return dsetfenv(o, t)
end
SAFE_DEBUG.getmetatable = function(o)
  local mt = dgetmetatable(o)
  if type(mt) == "table" and rawget(mt, "__metatable") ~= nil then return getmetatable(o) end
  return mt
end
SAFE_DEBUG.setmetatable = function(o, mt)
  if type(o) ~= "table" then error("debug.setmetatable is only allowed on tables", 2) end
  if getmetatable(o) ~= dgetmetatable(o) then error("cannot change a protected metatable", 2) end
  return dsetmetatable(o, mt)
end
SAFE_DEBUG.getupvalue = function(f, i)
  if internal(f) then return nil end
  return dgetupvalue(f, i)
end
SAFE_DEBUG.setupvalue = function(f, i, v)
  if internal(f) then return nil end
  return dsetupvalue(f, i, v)
end

-- A single C call cannot be interrupted by the hook, so an inline execution moves to a worker before
-- pattern matching on long subjects or with many quantifiers (backtracking), or building huge strings.
local INLINE_SUBJECT_BYTES, INLINE_QUANTIFIERS, INLINE_REP_BYTES = 4096, 4, 1024 * 1024
local heavy_patterns, nheavy = {}, 0

local function quantifiers(p)
  local verdict = heavy_patterns[p]
  if verdict == nil then
    local n = 0
    for i = 1, #p do
      local c = byte(p, i)
      if c == 42 or c == 43 or c == 45 or c == 63 then n = n + 1 end
    end
    verdict = n > INLINE_QUANTIFIERS
    if nheavy >= 256 then heavy_patterns, nheavy = {}, 0 end
    heavy_patterns[p], nheavy = verdict, nheavy + 1
  end
  return verdict
end

local function check_pattern(s, p, plain)
  if type(s) == "string" and #s > INLINE_SUBJECT_BYTES then escalate() end
  if not plain and type(p) == "string" and quantifiers(p) then escalate() end
end

local SAFE_STRING = copy(string)
do
  local find, match, gmatch, gsub, rep = string.find, string.match, string.gmatch, string.gsub, string.rep
  SAFE_STRING.find = function(s, p, init, plain)
    if inline then check_pattern(s, p, plain) end
    return find(s, p, init, plain)
  end
  SAFE_STRING.match = function(s, p, init)
    if inline then check_pattern(s, p) end
    return match(s, p, init)
  end
  SAFE_STRING.gmatch = function(s, p)
    if inline then check_pattern(s, p) end
    return gmatch(s, p)
  end
  SAFE_STRING.gsub = function(s, p, repl, n)
    if inline then check_pattern(s, p) end
    return gsub(s, p, repl, n)
  end
  SAFE_STRING.rep = function(s, n)
    if inline and type(n) == "number" and (type(s) == "string" or type(s) == "number")
        and #tostring(s) * n > INLINE_REP_BYTES then
      escalate()
    end
    return rep(s, n)
  end
end

local SAFE = {
  string = SAFE_STRING, table = table, math = math, os = SAFE_OS, io = SAFE_IO,
  coroutine = SAFE_CO, debug = SAFE_DEBUG,
}

local LOADED_MT = {
  __metatable = false,
  __index = function(_, k)
    local env = cur_env
    if env ~= nil and (SAFE[k] ~= nil or k == "_G") then return env[k] end
  end,
}

local function new_package()
  return {
    loaded = setmetatable({}, LOADED_MT), preload = {},
    path = package.path, cpath = "", config = package.config,
  }
end

-- Globals every execution sees. Scripts reach them through BASE, an always-empty proxy.
local BASE_REAL = {}
for _, name in next, {
  "assert", "error", "gcinfo", "getmetatable", "ipairs", "newproxy", "next", "pairs", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "_VERSION",
} do
  BASE_REAL[name] = REAL[name]
end

BASE_REAL.pcall = function(f, ...) return after_pcall(pcall(f, ...)) end
BASE_REAL.xpcall = function(f, h) return after_pcall(xpcall(f, h)) end

BASE_REAL.collectgarbage = function(opt, arg)
  if opt == "stop" or opt == "setpause" or opt == "setstepmul" then return 0 end
  return collectgarbage(opt, arg)
end

BASE_REAL.print = function(...)
  escalate()
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  write(concat(parts, "\t", 1, n) .. "\n")
end

BASE_REAL.getfenv = function(f)
  if f == nil then f = 1 end
  if type(f) == "number" then
    if f == 0 then return cur_env end
    f = f + 1
  end
  return visible_env(getfenv(f))
end

BASE_REAL.setfenv = function(f, t)
  if type(f) == "number" then
    if f == 0 then check_fenv_target(0) end
    f = f + 1
    local info = getinfo(f, "f")
    if info == nil then error("bad argument #1 to 'setfenv' (invalid level)", 2) end
    check_fenv_target(info.func)
  else
    check_fenv_target(f)
  end
  return setfenv(f, t)
end

-- Chunks loaded at run time get the execution's environment, not the runtime's globals.
local function bind(f, ...)
  if f ~= nil then setfenv(f, cur_env) end
  return f, ...
end
BASE_REAL.loadstring = function(s, name) return bind(loadstring(s, name)) end
BASE_REAL.load = function(f, name) return bind(load(f, name)) end
local function loadfile_(path) return bind(loadfile(resolve(path))) end
BASE_REAL.loadfile = loadfile_
BASE_REAL.dofile = function(path)
  local f, err = loadfile_(path)
  if f == nil then error(err, 2) end
  return f()
end

local function search_path(name, path)
  if type(path) ~= "string" then error("'package.path' must be a string", 3) end
  local file = gsub(gsub(name, "%.", "/"), "%%", "%%%%")
  local tried = {}
  for template in gmatch(path, "[^;]+") do
    local filename = gsub(template, "%?", file)
    local real = filename
    if byte(filename, 1) ~= 47 then
      -- Only an existing scratch directory is searched: a miss must not create one.
      local wd = get_workdir(false)
      real = wd and (wd .. "/" .. filename)
    end
    local fh = real and io_open(real, "r")
    if fh then
      fh:close()
      local f, err = loadfile(real)
      if f == nil then
        error("error loading module '" .. name .. "' from file '" .. filename .. "':\n\t" .. err, 3)
      end
      return setfenv(f, cur_env)
    end
    tried[#tried + 1] = "\n\tno file '" .. filename .. "'"
  end
  return nil, concat(tried)
end

BASE_REAL.require = function(name)
  if type(name) == "number" then name = tostring(name) end
  if type(name) ~= "string" then
    error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
  end
  local pkg = cur_env.package
  local loaded = pkg.loaded
  local value = loaded[name]
  if value ~= nil then return value end
  local loader = pkg.preload[name]
  if loader == nil and module_names[name] then
    if not inline_modules[name] then escalate() end
    local globals
    value, globals = load_module(name)
    if globals ~= nil then
      for k, v in next, globals do cur_env[k] = v end
    end
    if value == nil then value = true end
    loaded[name] = value
    return value
  end
  if loader == nil then
    local tried
    loader, tried = search_path(name, pkg.path)
    if loader == nil then
      error("module '" .. name .. "' not found:\n\tno field package.preload['" .. name .. "']" .. tried, 2)
    end
  end
  value = loader(name)
  if value ~= nil then loaded[name] = value end
  if loaded[name] == nil then loaded[name] = true end
  return loaded[name]
end

-- Standard library tables are copied into the environment on first use, so a script may extend or
-- replace them (web.lua adds string:split) without the next execution seeing it.
setmetatable(BASE_REAL, {
  __index = function(_, k)
    local env = cur_env
    if env == nil then return nil end
    local template = SAFE[k]
    if template ~= nil then
      -- Every io function touches files or the daemon's standard streams.
      if k == "io" then escalate() end
      local c = copy(template)
      rawset(env, k, c)
      if k == "string" then STRMT.__index = c end
      return c
    end
    if k == "_G" then
      rawset(env, k, env)
      return env
    end
    if k == "package" then
      local p = new_package()
      rawset(env, k, p)
      return p
    end
    return nil
  end,
})

local BASE = setmetatable({}, {
  __metatable = false,
  __index = BASE_REAL,
  __newindex = function(_, k, v)
    if cur_env ~= nil then rawset(cur_env, k, v) end
  end,
})

-- Method calls on strings go through this until the execution copies `string`.
local STRING_RO = setmetatable({}, {
  __metatable = false,
  __index = SAFE_STRING,
  __newindex = function(_, k, v)
    if cur_env ~= nil then cur_env.string[k] = v end
  end,
})
STRMT.__index = STRING_RO

local function clear(t)
  for k in next, t do t[k] = nil end
end

local function cleanup()
  active, inline = false, false
  cur_env = nil
  -- The cached chunk must not keep the finished execution's globals alive.
  if cur_chunk ~= nil then
    setfenv(cur_chunk, DETACHED)
    cur_chunk = nil
  end
  for k in next, STRMT do
    if k ~= "__index" then STRMT[k] = nil end
  end
  STRMT.__index = STRING_RO
  if next(STRING_RO) ~= nil then clear(STRING_RO) end
  if next(BASE) ~= nil then clear(BASE) end
  if nthreads > 0 then
    for i = 1, nthreads do
      sethook(threads[i])
      threads[i] = nil
    end
    nthreads = 0
  end
  if io_touched then
    io_touched = false
    io_input(STDIN)
    io_output(STDOUT)
  end
end

local function handler(msg)
  if expired then return TIMEOUT end
  if escalated then return ESCALATE end
  if type(msg) ~= "string" then msg = tostring(msg) end
  -- A position inside the sandbox's own wrappers says nothing to the script's author.
  msg = gsub(msg, "^msgscript:%d+: ", "")
  local tb = gsub(traceback(msg, 2), "\n\tmsgscript:[^\n]*", "")
  local n
  repeat tb, n = gsub(tb, "\n\t%[C%]: [^\n]*$", "") until n == 0
  return tb
end

local cur_fn, cur_a, cur_b

-- The locals are named so that tracebacks say "in function 'OnMessage'" (or 'method').
local function invoke_message()
  local OnMessage = cur_fn
  local r = OnMessage(cur_a, cur_b)
  if type(r) == "string" then return r end
  return nil
end

local function cell(v)
  local t = type(v)
  if t == "string" or t == "number" then return v end
  return ""
end

local function invoke_html()
  local method = cur_fn
  local body, code, headers = method(cur_a, cur_b)
  local tb = type(body)
  if tb ~= "string" and tb ~= "number" then body = nil end
  if type(code) == "string" then
    code = tonumber(code)
  elseif type(code) ~= "number" then
    code = nil
  end
  if type(headers) ~= "table" then return body, code end
  local flat, n = {}, 0
  for k, v in next, headers do
    flat[n + 1], flat[n + 2] = cell(k), cell(v)
    n = n + 2
  end
  return body, code, unpack(flat, 1, n)
end

local function index(t, k) return t[k] end

local function finish_call(ok, ...)
  cur_fn, cur_a, cur_b = nil, nil, nil
  cleanup()
  if ok then return 0, ... end
  if expired then return 4 end
  if escalated then return 5 end
  return 3, (...)
end

local function run(chunk, html, fname, a, b, dl, inline_until)
  deadline, expired, escalated = dl, false, false
  inline, budget = inline_until > 0, inline_until
  local env = setmetatable({}, {__index = BASE})
  cur_env, cur_chunk = env, chunk
  setfenv(chunk, env)
  active = true
  local ok, err = xpcall(chunk, handler)
  if not ok then
    cleanup()
    if expired then return 4 end
    if escalated then return 5 end
    return 1, err
  end
  local fn = rawget(env, fname)
  if fn == nil and fname ~= "" then
    ok, fn = pcall(index, env, fname)
    if not ok then fn = nil end
  end
  if expired or escalated or fn == nil then
    cleanup()
    if expired then return 4 end
    if escalated then return 5 end
    return 2
  end
  cur_fn, cur_a, cur_b = fn, a, b
  return finish_call(xpcall(html and invoke_html or invoke_message, handler))
end

local function reset()
  cur_fn, cur_a, cur_b = nil, nil, nil
  cleanup()
end

return run, reset, guard
