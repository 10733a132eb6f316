-- The Lua half of the msgscript sandbox (Lua 5.1), run once per runtime with the Python callbacks.
-- It only uses locals captured at start, so nothing a script does to its environment reaches it.
-- Returns the driver (one execution), the reset (after an escaped error) and the guard factory.
local py_check, py_arm, py_disarm, py_load, py_workdir, py_write, py_shell = ...
local module_names, inline_modules, hook_count, TIMEOUT, ESCALATE, max_memory, max_open_files = select(8, ...)

local type, next, select, tostring, tonumber = type, next, select, tostring, tonumber
local error, pcall, xpcall = error, pcall, xpcall
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local getfenv, setfenv, unpack, loadstring, load, loadfile = getfenv, setfenv, unpack, loadstring, load, loadfile
local collectgarbage = collectgarbage
local string, os, io, coroutine, debug, package = string, os, io, coroutine, debug, package
local byte, gsub, gmatch, find, sub = string.byte, string.gsub, string.gmatch, string.find, string.sub
local concat, floor, ceil = table.concat, math.floor, math.ceil
local sethook, traceback, getinfo = debug.sethook, debug.traceback, debug.getinfo
local dgetfenv, dgetmetatable = debug.getfenv, debug.getmetatable
local co_create, co_resume = coroutine.create, coroutine.resume
local io_open, io_lines, io_input, io_output = io.open, io.lines, io.input, io.output
local io_close, io_type, io_tmpfile = io.close, io.type, io.tmpfile
local os_remove, os_rename, os_setlocale, os_tmpname = os.remove, os.rename, os.setlocale, os.tmpname
local STDIN, STDOUT = io.stdin, io.stdout
local REAL = getfenv(0)
local STRMT = getmetatable("")
local MEMERR = "not enough memory"
local BINARY = "attempt to load a binary chunk (mode is 't')"

-- Metatables every execution of this runtime shares, and that hold C metamethods (__gc runs with the hook
-- off): scripts may use them, not see or change them. Files are userdata of io's metatable, Python objects
-- of lupa's; the string metatable is restored after each execution instead (see cleanup).
dgetmetatable(STDOUT).__metatable = false
dgetmetatable(py_check).__metatable = false

-- State of the execution in progress (one at a time per runtime).
local active, expired = false, false
-- An inline execution runs on the daemon's event loop: it must stay short and may not block or touch
-- anything outside Lua. At the first attempt to, it is abandoned (escalated) and run again on a worker.
local inline, escalated = false, false
local cur_env, cur_chunk = nil, nil
local DETACHED = {}
local threads, nthreads = {}, 0
local io_touched = false
-- Files the execution opened and temporary names it asked for: closed and removed when it ends.
local files, nfiles, temps, ntemps = {}, 0, {}, 0
-- Set while the hook runs. Lua calls an error handler with the hook off when the error comes from the
-- hook, so a script's handler must never run then: it could loop forever.
local in_hook = false

-- The deadline (and cancellation) live on the Python side: py_check answers 1 when the execution must
-- end, 2 when an inline execution must move to a worker.
local function hook()
  if not active then return end
  in_hook = true
  if expired then error(TIMEOUT, 0) end
  if escalated then error(ESCALATE, 0) end
  local state = py_check()
  if state == 1 then
    expired = true
    error(TIMEOUT, 0)
  elseif state == 2 and inline then
    escalated = true
    error(ESCALATE, 0)
  end
  in_hook = false
end

local function escalate()
  if inline then
    escalated = true
    error(ESCALATE, 0)
  end
end
sethook(hook, "", hook_count)

-- Once the deadline passed, nothing may swallow the timeout error. An inline execution runs under a small
-- memory cap: running out of it means "move to a worker", never an error the script could see.
local function after_pcall(ok, ...)
  in_hook = false
  if expired then error(TIMEOUT, 0) end
  if escalated then error(ESCALATE, 0) end
  if inline and not ok and (...) == MEMERR then
    escalated = true
    error(ESCALATE, 0)
  end
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

-- Every handle a script opens is remembered (at most max_open_files at a time) and closed when the
-- execution ends, so a script that forgets to close, or opens in a loop, cannot exhaust the process.
local TOO_MANY = "Too many open files"

local function room_for_file()
  if nfiles < max_open_files then return true end
  local kept = 0
  for i = 1, nfiles do
    local f = files[i]
    files[i] = nil
    if io_type(f) == "file" then
      kept = kept + 1
      files[kept] = f
    end
  end
  nfiles = kept
  return nfiles < max_open_files
end

local function keep_file(f, ...)
  if f ~= nil then
    nfiles = nfiles + 1
    files[nfiles] = f
  end
  return f, ...
end

local function open_file(path, mode)
  escalate()
  if not room_for_file() then return nil, tostring(path) .. ": " .. TOO_MANY, 24 end
  return keep_file(io_open(resolve(path), mode))
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
-- os.tmpname creates the file; it is removed when the execution ends.
SAFE_OS.tmpname = function()
  escalate()
  local name = os_tmpname()
  ntemps = ntemps + 1
  temps[ntemps] = name
  return name
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
SAFE_IO.open = open_file
SAFE_IO.tmpfile = function()
  escalate()
  if not room_for_file() then return nil, TOO_MANY, 24 end
  return keep_file(io_tmpfile())
end
-- Lua 5.1's io.lines closes its file at the end of the loop; so does this one, and the execution's end
-- closes it if the loop stops early.
SAFE_IO.lines = function(path)
  escalate()
  if path == nil then return io_lines() end
  local f, err = open_file(path, "r")
  if f == nil then error("bad argument #1 to 'lines' (" .. err .. ")", 2) end
  local next_line = f:lines()
  return function()
    local line = next_line()
    if line == nil then f:close() end
    return line
  end
end
local function default_file(set, name, file, mode)
  if file == nil then return set() end
  io_touched = true
  if type(file) == "string" then
    local f, err = open_file(file, mode)
    if f == nil then error("bad argument #1 to '" .. name .. "' (" .. err .. ")", 3) end
    file = f
  end
  return set(file)
end
SAFE_IO.input = function(file) return default_file(io_input, "input", file, "r") end
SAFE_IO.output = function(file) return default_file(io_output, "output", file, "w") end

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

-- Scripts get what they need of debug: tracebacks, and getinfo without the function values of frames that
-- are not their own (the sandbox's driver, wrappers and raw built-ins such as xpcall). Everything else in
-- it reaches into other code's state and is refused.
local function script_function(f)
  return type(f) == "function" and not internal(f)
end

local SAFE_DEBUG = {}
for name in next, debug do
  SAFE_DEBUG[name] = function() error("debug." .. name .. " is not allowed", 2) end
end
SAFE_DEBUG.traceback = traceback
SAFE_DEBUG.getinfo = function(what, ...)
  local info
  if type(what) == "number" then
    -- One level more: this wrapper is a frame of its own.
    info = getinfo(what >= 0 and what + 1 or what, ...)
  else
    info = getinfo(what, ...)
    -- Asked about a function value: the caller has it already.
    if type(what) == "function" then return info end
  end
  if type(info) == "table" and info.func ~= nil and not script_function(info.func) then info.func = nil end
  return info
end

-- A single C call cannot be interrupted by the hook. On a worker that only delays the end of a runaway
-- execution (the event loop stops waiting for it at its deadline), but an inline execution runs on the event
-- loop itself: it moves to a worker before a pattern call whose backtracking could take long, before
-- building a big string, and before sorting a big table. Its small memory cap bounds the rest (copies).
local INLINE_MATCH_STEPS, INLINE_REP_BYTES, INLINE_SORT_ITEMS = 1000000, 1024 * 1024, 10000
local backtracking_items, ncached = {}, 0

-- How many pattern items may backtrack: quantifiers, balanced matches and back references.
local function count_backtracking(p)
  local q = backtracking_items[p]
  if q == nil then
    q = 0
    for i = 1, #p do
      local c = byte(p, i)
      if c == 42 or c == 43 or c == 45 or c == 63 then
        q = q + 1
      elseif c == 37 then
        local d = byte(p, i + 1)
        if d == 98 or (d ~= nil and d >= 49 and d <= 57) then q = q + 1 end
      end
    end
    if ncached >= 256 then backtracking_items, ncached = {}, 0 end
    backtracking_items[p], ncached = q, ncached + 1
  end
  return q
end

-- A generous bound on the matcher's steps: every start position, times the ways q backtracking items can
-- split the subject, times the pattern's length.
local function check_pattern(s, p, plain)
  if type(s) ~= "string" or type(p) ~= "string" then return end
  local n, steps = #s, #s * (#p + 1)
  if not plain then
    for k = 1, count_backtracking(p) do
      if steps > INLINE_MATCH_STEPS then break end
      steps = steps * n / k
    end
  end
  if steps > INLINE_MATCH_STEPS then escalate() end
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
  -- Lua 5.1 converts the count to a C int: 2^31 gives "" and 2^32 + 1 one copy; and it copies the pieces one
  -- by one, so a huge count of empty strings is a long loop. A result above the memory cap fails at once.
  SAFE_STRING.rep = function(s, n)
    local ts = type(s)
    if type(n) == "number" and n >= 1 and (ts == "string" or ts == "number") then
      local size = #tostring(s)
      if size == 0 then return "" end
      if n >= 2147483648 or size * n > max_memory then error(MEMERR, 0) end
      if inline and size * n > INLINE_REP_BYTES then escalate() end
    end
    return rep(s, n)
  end
end

local SAFE_TABLE = copy(table)
do
  local insert, sort = table.insert, table.sort
  -- Lua 5.1 moves every element between the position and the end, one by one, with the position converted
  -- to a C int: a position far below 1, or one that overflows, means billions of moves in one C call. Like
  -- gopher-lua, a position outside 1..#t+1 is a plain assignment.
  SAFE_TABLE.insert = function(t, ...)
    if select("#", ...) == 2 and type(t) == "table" then
      local pos, value = ...
      pos = tonumber(pos)
      if pos ~= nil and not (pos >= 1 and pos < 2147483648) then
        rawset(t, pos < 0 and ceil(pos) or floor(pos), value)
        return
      end
    end
    return insert(t, ...)
  end
  SAFE_TABLE.sort = function(t, ...)
    if inline and type(t) == "table" and #t > INLINE_SORT_ITEMS then escalate() end
    return sort(t, ...)
  end
end

local SAFE = {
  string = SAFE_STRING, table = SAFE_TABLE, math = math, os = SAFE_OS, io = SAFE_IO,
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
  "assert", "error", "gcinfo", "getmetatable", "ipairs", "next", "pairs", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "_VERSION",
} do
  BASE_REAL[name] = REAL[name]
end

BASE_REAL.pcall = function(f, ...) return after_pcall(pcall(f, ...)) end
-- The script's handler never sees the deadline's error: Lua would run it with the hook off.
BASE_REAL.xpcall = function(f, h)
  return after_pcall(xpcall(f, function(e)
    if in_hook or expired or escalated then return e end
    return h(e)
  end))
end

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

-- Chunks loaded at run time get the execution's environment, not the runtime's globals. Only source is
-- loaded: Lua 5.1 does not verify bytecode, and a crafted binary chunk reads and writes process memory.
local function bind(f, ...)
  if f ~= nil then setfenv(f, cur_env) end
  return f, ...
end

local function is_binary(s)
  return byte(s, 1) == 27
end

BASE_REAL.loadstring = function(s, name)
  if type(s) == "string" and is_binary(s) then return nil, BINARY end
  return bind(loadstring(s, name))
end

BASE_REAL.load = function(f, name)
  if type(f) ~= "function" then return bind(load(f, name)) end
  -- The reader ends the chunk at a binary first piece (an error raised here would reach the script's
  -- handler with a traceback), and load then answers the refusal.
  local first, refused = true, false
  local fn, err = load(function()
    if refused then return nil end
    local piece = f()
    if first and piece ~= nil and piece ~= "" then
      first = false
      refused = type(piece) == "string" and is_binary(piece)
      if refused then return nil end
    end
    return piece
  end, name)
  if refused then return nil, BINARY end
  return bind(fn, err)
end

-- loadfile's own reading, without its binary path: a first line starting with '#' is skipped (commented
-- out here, so line numbers stay), then the rest must be source.
local function load_source_file(real, chunkname)
  local fh, err = io_open(real, "rb")
  if fh == nil then return nil, "cannot open " .. err end
  local source = fh:read("*a")
  fh:close()
  if source == nil then return nil, "cannot read " .. chunkname end
  if byte(source, 1) == 35 then source = "--" .. source end
  if is_binary(source) or find(source, "^%-%-[^\n]*\n\27") then return nil, BINARY end
  return loadstring(source, "@" .. chunkname)
end

local function loadfile_(path)
  escalate()
  -- Without a path Lua reads the daemon's standard input.
  if path == nil then return nil, "loadfile without a file name is not allowed" end
  if type(path) ~= "string" then
    error("bad argument #1 to 'loadfile' (string expected, got " .. type(path) .. ")", 3)
  end
  local real = resolve(path)
  return bind(load_source_file(real, real))
end
BASE_REAL.loadfile = function(path) return loadfile_(path) end
BASE_REAL.dofile = function(path)
  local f, err = loadfile_(path)
  if f == nil then error(err, 2) end
  return f()
end

local function search_path(name, path)
  if type(path) ~= "string" then error("'package.path' must be a string", 3) end
  escalate()
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
      local f, err = load_source_file(real, real)
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
  -- Closing files, removing temporary files and resetting io may allocate, and must not fail for want of memory:
  -- the cap comes off first. Nothing else here allocates (nor does what the driver does after it), so without
  -- them the cap stays on until Python takes it off when the driver returns, which spares a call to Python.
  if nfiles > 0 or ntemps > 0 or nthreads > 0 or io_touched then py_disarm() end
  active, inline, in_hook = false, false, false
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
  if nfiles > 0 then
    for i = 1, nfiles do
      local f = files[i]
      files[i] = nil
      if io_type(f) == "file" then pcall(f.close, f) end
    end
    nfiles = 0
  end
  if ntemps > 0 then
    for i = 1, ntemps do
      os_remove(temps[i])
      temps[i] = nil
    end
    ntemps = 0
  end
end

local function handler(msg)
  if expired then return TIMEOUT end
  if escalated then return ESCALATE end
  -- The hook's own error: nothing more may run with the hook off.
  if in_hook then return msg end
  if type(msg) ~= "string" then msg = tostring(msg) end
  -- A position inside the sandbox's own wrappers says nothing to the script's author.
  msg = gsub(msg, "^msgscript:%d+: ", "")
  local tb = gsub(traceback(msg, 2), "\n\tmsgscript:[^\n]*", "")
  local n
  repeat tb, n = gsub(tb, "\n\t%[C%]: [^\n]*$", "") until n == 0
  return tb
end

local cur_fn, cur_a, cur_b, cur_c

-- The locals are named so that tracebacks say "in function 'OnMessage'" (or 'method').
local function invoke_message()
  local OnMessage = cur_fn
  local r
  -- A durable message's metadata is a third argument; other messages call with two, as always.
  if cur_c ~= nil then r = OnMessage(cur_a, cur_b, cur_c) else r = OnMessage(cur_a, cur_b) end
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

-- The status of an execution that failed: a timeout, a move to a worker (an inline execution out of its
-- small memory cap included), or the error.
local function failure(code, was_inline, err)
  if expired then return 4 end
  -- find, not sub: it makes no string, and the cap may still be on.
  if escalated or (was_inline and type(err) == "string" and find(err, MEMERR, 1, true) == 1) then return 5 end
  return code, err
end

local function finish_call(was_inline, ok, ...)
  cur_fn, cur_a, cur_b, cur_c = nil, nil, nil, nil
  cleanup()
  if ok then return 0, ... end
  return failure(3, was_inline, (...))
end

local function run(chunk, html, fname, a, b, c, run_inline, armed)
  -- Only Python calls the driver; a script reaching it again would run without its deadline.
  if active then error("msgscript: the Lua driver is already running", 0) end
  expired, escalated, in_hook, inline = false, false, false, run_inline
  local env = setmetatable({}, {__index = BASE})
  cur_env, cur_chunk = env, chunk
  setfenv(chunk, env)
  active = true
  -- Unless Python put it on before (small arguments), the memory cap goes on only now: lupa cannot survive a
  -- failed allocation while it pushes arguments.
  if not armed then py_arm() end
  local ok, err = xpcall(chunk, handler)
  if not ok then
    cleanup()
    return failure(1, run_inline, err)
  end
  local fn = rawget(env, fname)
  if fn == nil and fname ~= "" then
    ok, fn = pcall(index, env, fname)
    -- A built-in is no entry point: the HTTP method comes from the client (an envelope names any),
    -- and must not call dofile or require with arguments of the client's choosing.
    if not ok or fn == rawget(BASE_REAL, fname) then fn = nil end
  end
  if expired or escalated or fn == nil then
    cleanup()
    if expired then return 4 end
    if escalated then return 5 end
    return 2
  end
  cur_fn, cur_a, cur_b, cur_c = fn, a, b, c
  return finish_call(run_inline, xpcall(html and invoke_html or invoke_message, handler))
end

local function reset()
  cur_fn, cur_a, cur_b, cur_c = nil, nil, nil, nil
  cleanup()
end

return run, reset, guard
