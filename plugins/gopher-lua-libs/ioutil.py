"""The `ioutil` Lua module: whole-file reads and writes, and copies between readers and writers.

`ioutil.read_file(path)` returns the contents or `nil, err` (a file past the script's memory cap is a
`not enough memory` error; a pipe is read until the script's deadline); `ioutil.write_file(path, data)`
creates or truncates the file (mode 0644) and returns nothing, or `err`. Relative paths start at the
execution's directory. `ioutil.copy(dst, src)` copies until `src:read(n)` returns nil, `ioutil.copyn(dst, src, n)`
copies n bytes (`"EOF"` if src ends first); both return nothing, or the error of a failed read or write.
As in gopher-lua-libs, a reader is any value with a `read` method and a writer any value with a `write`
method: files from io.open, tcp connections, and tables of the script's own. A read returning an empty
string ends the copy like nil does (Go's copy would call it again forever).
"""

from __future__ import annotations

import os
from typing import Any

from msgscript.lua.api import ModuleContext, lua_chunk

from ._shared_io import check_string, open_for_reading, path_error, read_all, resolve

FILE_MODE = 0o644

# Written in Lua so that the script's reader and writer methods are called as Lua calls them, bounded by
# the script's deadline like any other Lua code.
_COPY = b"""
local type, pcall, select, error, tostring, sub, floor = type, pcall, select, error, tostring, string.sub, math.floor
local CHUNK_BYTES = 32 * 1024

local function lookup(obj, name)
  local kind = type(obj)
  if kind ~= "table" and kind ~= "userdata" then return nil end
  local ok, fn = pcall(function() return obj[name] end)
  if ok and type(fn) == "function" then return fn end
  return nil
end

local function endpoints(fname, ...)
  local n = select("#", ...)
  local dst, src = ...
  if n < 1 then error("bad argument #1 to '" .. fname .. "' (value expected)", 3) end
  local write = lookup(dst, "write")
  if write == nil then error("bad argument #1 to '" .. fname .. "' (expected writer)", 3) end
  if n < 2 then error("bad argument #2 to '" .. fname .. "' (value expected)", 3) end
  local read = lookup(src, "read")
  if read == nil then error("bad argument #2 to '" .. fname .. "' (expected reader)", 3) end
  return dst, write, src, read
end

local function pump(dst, write, src, read, limit)
  local written = 0
  while limit == nil or written < limit do
    local want = CHUNK_BYTES
    if limit ~= nil and limit - written < want then want = limit - written end
    local ok, data = pcall(read, src, want)
    if not ok then return tostring(data) end
    if type(data) == "number" then data = tostring(data) elseif type(data) ~= "string" then data = nil end
    if data == nil or data == "" then break end
    if #data > want then data = sub(data, 1, want) end
    local wrote, err = pcall(write, dst, data)
    if not wrote then return tostring(err) end
    written = written + #data
  end
  if limit ~= nil and written < limit then return "EOF" end
  return nil
end

local function copy(...)
  local dst, write, src, read = endpoints("copy", ...)
  return pump(dst, write, src, read, nil)
end

local function copyn(...)
  local dst, write, src, read = endpoints("copyn", ...)
  local n = select(3, ...)
  if type(n) ~= "number" then
    local got = n == nil and "nil" or type(n)
    error("bad argument #3 to 'copyn' (number expected, got " .. got .. ")", 2)
  end
  if n >= 0 then n = floor(n) end
  return pump(dst, write, src, read, n)
end

return {copy = copy, copyn = copyn}
"""


class IoutilModule:
    """Builds the `ioutil` table for one execution."""

    name = "ioutil"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{read_file, write_file, copy, copyn}`."""

        def read_file(path: object = None, *_: object) -> object:
            name = check_string(path, 1, "read_file")
            try:
                fd = open_for_reading(resolve(ctx, name))
            except OSError as exc:
                return (None, path_error("open", name, exc))
            try:
                return read_all(ctx, fd)
            except OSError as exc:
                return (None, path_error("read", name, exc))
            finally:
                os.close(fd)

        def write_file(path: object = None, data: object = None, *_: object) -> object:
            name = check_string(path, 1, "write_file")
            content = check_string(data, 2, "write_file")
            try:
                # Non-blocking: opening a named pipe must not wait for a reader (it fails without one).
                fd = os.open(resolve(ctx, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, FILE_MODE)
            except OSError as exc:
                return path_error("open", name, exc)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(content)
            except OSError as exc:
                return path_error("write", name, exc)
            return None

        copier = lua_chunk(lua, "gopher_ioutil_copy", _COPY)
        return {
            "read_file": read_file,
            "write_file": write_file,
            "copy": copier[b"copy"],
            "copyn": copier[b"copyn"],
        }


module = IoutilModule()
