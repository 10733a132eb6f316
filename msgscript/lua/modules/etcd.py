"""The `etcd` Lua module: read and write keys through the daemon's shared etcd client.

Return conventions of the Go msgscript: `etcd.put(key, value)` returns nil, or an error string;
`etcd.get(key, prefix)` (prefix is a required boolean) returns an array of KV objects in key order and
nil, or nil and nil when nothing matches, or nil and an error; `etcd.delete(key)` returns nil, or the key
and an error. KV objects are userdata with `kv:getKey()` and `kv:getValue()`. Requiring the module also
defines the global `EtcdKV`, what `getmetatable(kv)` returns, whose `EtcdKV.new(key, value)` builds one.

Unlike Go, which dials a new client (never closed) on every `require`, every call goes to the daemon's
one client (`ctx.services.etcd`, endpoints from -etcdurl/ETCD_ENDPOINTS) and waits at most until the
script's deadline.
"""

from __future__ import annotations

from typing import Any

from msgscript.errors import EtcdError
from msgscript.etcd_client import EtcdClient, KeyValue
from msgscript.lua.args import argument, check_bool, check_string
from msgscript.lua.contract import ModuleContext, lua_chunk
from msgscript.lua.runtime import error_text

NOT_CONFIGURED = "etcd is not configured"

# The KV objects are userdata (newproxy), their key and value kept in a weak table: like Go's, they have
# no fields of their own. Their real metatable stays hidden: Lua runs a userdata's __gc with the instruction
# hook off, so a script able to set one could loop forever where nothing stops it. What scripts see as their
# metatable (`getmetatable(kv)`, through the __metatable field) is EtcdKV, a plain table: its `new` and its
# `__index` methods work as before, and methods a script adds to `EtcdKV.__index` apply to every KV; other
# metamethods set on it have no effect. A new pair of tables is made for every execution, so that what a
# script adds to EtcdKV does not outlive it.
_KV_SOURCE = b"""
local newproxy, getmetatable, setmetatable = newproxy, getmetatable, setmetatable
local type, select, tostring, error, rawget = type, select, tostring, error, rawget

local function arg_kind(i, n, ...)
  if i > n then return "no value" end
  return type((select(i, ...)))
end

local function check_string(fname, i, n, ...)
  local v = select(i, ...)
  local t = arg_kind(i, n, ...)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  error("bad argument #" .. i .. " to '" .. fname .. "' (string expected, got " .. t .. ")", 3)
end

return function()
  local data = setmetatable({}, {__mode = "k"})
  local EtcdKV, methods = {}, {}
  EtcdKV.__index = methods
  local proto = newproxy(true)
  local hidden = getmetatable(proto)
  hidden.__metatable = EtcdKV
  -- Looked up at each access, so that a script may add methods or replace EtcdKV.__index.
  hidden.__index = function(kv, key)
    local index = rawget(EtcdKV, "__index")
    if type(index) == "function" then return index(kv, key) end
    if type(index) == "table" then return index[key] end
    return nil
  end

  local function field(fname, index, n, ...)
    local pair = n > 0 and data[(...)]
    if not pair then
      error("bad argument #1 to '" .. fname .. "' (EtcdKV expected, got " .. arg_kind(1, n, ...) .. ")", 3)
    end
    return pair[index]
  end

  local function make(key, value)
    local kv = newproxy(proto)
    data[kv] = {key, value}
    return kv
  end

  function methods.getKey(...) return (field("getKey", 1, select("#", ...), ...)) end
  function methods.getValue(...) return (field("getValue", 2, select("#", ...), ...)) end

  EtcdKV.new = function(...)
    local n = select("#", ...)
    local key = check_string("new", 1, n, ...)
    local value = check_string("new", 2, n, ...)
    return make(key, value)
  end

  -- flat = {key1, value1, key2, value2, ...}, count pairs.
  local function wrap(flat, count)
    local kvs = {}
    for i = 1, count do kvs[i] = make(flat[2 * i - 1], flat[2 * i]) end
    return kvs
  end

  return EtcdKV, wrap
end
"""
_KV_BYTES = 128
"""Charged per KV a get returns (its Lua userdata and strings), besides its key and value."""


class EtcdModule:
    """Builds the `etcd` table (and the `EtcdKV` global) for one execution."""

    name = "etcd"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{put = ..., get = ..., delete = ...}` bound to the shared client."""
        client: EtcdClient | None = None if ctx.services is None else ctx.services.etcd
        kv_metatable, wrap = lua_chunk(lua, "etcd", _KV_SOURCE)()
        ctx.set_global("EtcdKV", kv_metatable)

        def put(*args: object) -> object:
            key = check_string(argument(args, 1), 1, "put")
            value = check_string(argument(args, 2), 2, "put")
            if client is None:
                return NOT_CONFIGURED
            try:
                ctx.call(client.put(key, value, timeout_s=ctx.remaining_s()))
            except (EtcdError, TimeoutError) as exc:
                return error_text(exc)
            return None

        def get(*args: object) -> tuple[object, object]:
            key = check_string(argument(args, 1), 1, "get")
            prefix = check_bool(argument(args, 2), 2, "get")
            if client is None:
                return (None, NOT_CONFIGURED)
            kvs: list[KeyValue]
            try:
                if prefix:
                    kvs = ctx.call(client.get_prefix(key, timeout_s=ctx.remaining_s()))
                else:
                    found = ctx.call(client.get(key, timeout_s=ctx.remaining_s()))
                    kvs = [] if found is None else [found]
            except (EtcdError, TimeoutError) as exc:
                return (None, error_text(exc))
            if not kvs:
                return (None, None)
            # The Lua strings and KV objects are made with the memory cap lifted: charged first.
            ctx.charge(sum(2 * (len(kv.key) + len(kv.value)) + _KV_BYTES for kv in kvs))
            flat = lua.table_from([part for kv in kvs for part in (kv.key, kv.value)])
            return (wrap(flat, len(kvs)), None)

        def delete(*args: object) -> object:
            key = check_string(argument(args, 1), 1, "delete")
            if client is None:
                return (args[-1], NOT_CONFIGURED)
            try:
                ctx.call(client.delete(key, timeout_s=ctx.remaining_s()))
            except (EtcdError, TimeoutError) as exc:
                # Go returns the top two stack slots: the last argument, then the error.
                return (args[-1], error_text(exc))
            return None

        return {"put": put, "get": get, "delete": delete}


module = EtcdModule()
