"""The `etcd` Lua module against a real etcd, through the daemon's executor and end to end."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from msgscript.errors import ScriptTimeout
from msgscript.etcd_client import EtcdClient
from msgscript.executors.base import Executor
from msgscript.executors.lua import LuaExecutor
from msgscript.lua.modules import builtin_modules
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message, run_lua
from tests.servers import EtcdServer, free_port

T = 5.0


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


@pytest.fixture
async def ex(etcd_server: EtcdServer) -> AsyncIterator[Executor]:
    async with lua_executor(plugins=False, etcd_endpoints=(etcd_server.url,), lua_threads=1) as executor:
        yield executor


async def lua(executor: Executor, body: str, payload: bytes = b"", timeout_s: float = 10.0) -> bytes | None:
    """Run body inside OnMessage after `local etcd = require("etcd")` (the body starts on line 3)."""
    return await on_message(executor, f'local etcd = require("etcd")\n{body}', payload, timeout_s=timeout_s)


async def value_of(etcd: EtcdClient, key: str) -> bytes | None:
    kv = await etcd.get(key, timeout_s=T)
    return None if kv is None else kv.value


# The three tests of the Go module, in the same words.


async def test_put(ex: Executor, etcd: EtcdClient) -> None:
    assert await lua(ex, 'return tostring(etcd.put("msgscript/test/put", "foobar"))') == b"nil"
    assert await value_of(etcd, "msgscript/test/put") == b"foobar"


async def test_get(ex: Executor, etcd: EtcdClient) -> None:
    await etcd.put("msgscript/test/get", "foobar", timeout_s=T)
    body = """local kvs, err = etcd.get("msgscript/test/get", false)
    assert(err == nil and type(kvs) == "table" and #kvs == 1)
    return kvs[1]:getValue()"""
    assert await lua(ex, body) == b"foobar"


async def test_delete(ex: Executor, etcd: EtcdClient) -> None:
    await etcd.put("msgscript/test/delete", "foobar", timeout_s=T)
    assert await lua(ex, 'return tostring(etcd.delete("msgscript/test/delete"))') == b"nil"
    assert await value_of(etcd, "msgscript/test/delete") is None


# get


async def test_get_with_prefix_returns_kvs_in_key_order(ex: Executor, etcd: EtcdClient) -> None:
    for key in ("msgscript/test/b", "msgscript/test/a/2", "msgscript/test/a", "msgscript/tests", "other"):
        await etcd.put(key, key.upper(), timeout_s=T)
    body = """local kvs, err = etcd.get("msgscript/test/", true)
    local out = {tostring(err), #kvs}
    for i, kv in ipairs(kvs) do out[#out + 1] = kv:getKey() .. "=" .. kv:getValue() end
    return table.concat(out, " ")"""
    assert await lua(ex, body) == (
        b"nil 3 msgscript/test/a=MSGSCRIPT/TEST/A msgscript/test/a/2=MSGSCRIPT/TEST/A/2"
        b" msgscript/test/b=MSGSCRIPT/TEST/B"
    )


async def test_get_without_prefix_is_the_exact_key(ex: Executor, etcd: EtcdClient) -> None:
    await etcd.put("msgscript/test/a", "exact", timeout_s=T)
    await etcd.put("msgscript/test/ab", "longer", timeout_s=T)
    body = 'local kvs = etcd.get("msgscript/test/a", false) return #kvs .. kvs[1]:getKey() .. "=" .. kvs[1]:getValue()'
    assert await lua(ex, body) == b"1msgscript/test/a=exact"


async def test_get_keeps_binary_values(ex: Executor, etcd: EtcdClient) -> None:
    data = b"\x00\xff\xfe not utf-8"
    await etcd.put(b"msgscript/test/bin", data, timeout_s=T)
    assert await lua(ex, 'return etcd.get("msgscript/test/bin", false)[1]:getValue()') == data


@pytest.mark.parametrize("prefix", ["true", "false"])
async def test_get_of_nothing_returns_nil_nil(ex: Executor, prefix: str) -> None:
    body = f"""local n = select("#", etcd.get("msgscript/none", {prefix}))
    local kvs, err = etcd.get("msgscript/none", {prefix})
    return n .. tostring(kvs) .. tostring(err)"""
    assert await lua(ex, body) == b"2nilnil"


@pytest.mark.parametrize(
    ("call", "got"),
    [('etcd.get("k")', "no value"), ('etcd.get("k", nil)', "nil"), ('etcd.get("k", "true")', "string")],
)
async def test_get_requires_a_boolean_prefix(ex: Executor, call: str, got: str) -> None:
    body = f"local ok, err = pcall(function() local r = {call} return r end) return err"
    assert await lua(ex, body) == f"<string>:3: bad argument #2 to 'get' (boolean expected, got {got})".encode()


async def test_get_requires_a_key(ex: Executor) -> None:
    body = "local ok, err = pcall(function() local r = etcd.get(nil, true) return r end) return err"
    assert await lua(ex, body) == b"<string>:3: bad argument #1 to 'get' (string expected, got nil)"


# put


async def test_put_coerces_numbers_like_gopher_lua(ex: Executor, etcd: EtcdClient) -> None:
    body = 'etcd.put("msgscript/test/int", 42) etcd.put(7, 1.5) return "done"'
    assert await lua(ex, body) == b"done"
    assert await value_of(etcd, "msgscript/test/int") == b"42"
    assert await value_of(etcd, "7") == b"1.5"


async def test_put_overwrites(ex: Executor, etcd: EtcdClient) -> None:
    await etcd.put("msgscript/test/put", "old", timeout_s=T)
    assert await lua(ex, 'return tostring(etcd.put("msgscript/test/put", payload))', b"new") == b"nil"
    assert await value_of(etcd, "msgscript/test/put") == b"new"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('etcd.put("k")', "bad argument #2 to 'put' (string expected, got no value)"),
        ('etcd.put("k", {})', "bad argument #2 to 'put' (string expected, got table)"),
        ("etcd.put(true, 'v')", "bad argument #1 to 'put' (string expected, got boolean)"),
    ],
)
async def test_put_argument_errors(ex: Executor, call: str, message: str) -> None:
    body = f"local ok, err = pcall(function() local r = {call} return r end) return err"
    assert await lua(ex, body) == f"<string>:3: {message}".encode()


# delete


async def test_delete_of_a_missing_key_returns_nil(ex: Executor) -> None:
    body = 'local n = select("#", etcd.delete("msgscript/none")) return n .. tostring(etcd.delete("msgscript/none"))'
    assert await lua(ex, body) == b"1nil"


async def test_delete_requires_a_key(ex: Executor) -> None:
    body = "local ok, err = pcall(function() local r = etcd.delete() return r end) return err"
    assert await lua(ex, body) == b"<string>:3: bad argument #1 to 'delete' (string expected, got no value)"


# Errors from etcd and from an unreachable etcd


async def test_etcd_errors_follow_the_go_return_conventions(ex: Executor) -> None:
    body = """local put_err = etcd.put("", "x")
    local kvs, get_err = etcd.get("", false)
    local key, del_err = etcd.delete("")
    return put_err .. "|" .. tostring(kvs) .. "|" .. get_err .. "|[" .. key .. "]|" .. del_err"""
    text = "etcdserver: key is not provided"
    assert await lua(ex, body) == f"{text}|nil|{text}|[]|{text}".encode()


async def test_etcd_down_gives_error_values() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    body = """local put_err = etcd.put("k", "v")
    local kvs, get_err = etcd.get("k", true)
    local key, del_err = etcd.delete("k")
    return put_err .. "|" .. tostring(kvs) .. "|" .. get_err .. "|" .. key .. "|" .. del_err"""
    async with lua_executor(plugins=False, etcd_endpoints=(endpoint,)) as executor:
        result = await lua(executor, body)
    assert result is not None
    put_err, kvs, get_err, key, del_err = result.decode().split("|")
    unreachable = f"etcd at {endpoint} is unreachable: "
    assert put_err.startswith(unreachable) and get_err.startswith(unreachable) and del_err.startswith(unreachable)
    assert (kvs, key) == ("nil", "k")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A port that completes TCP handshakes and never answers (the socket listens and never accepts)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


async def test_a_silent_etcd_cannot_outlast_the_script_deadline(silent_endpoint: str) -> None:
    # A script that swallows the error still ends by its deadline.
    body = """while true do etcd.get("k", true) end"""
    async with lua_executor(plugins=False, etcd_endpoints=(silent_endpoint,)) as executor:
        started = time.monotonic()
        with pytest.raises(ScriptTimeout):
            await lua(executor, body, timeout_s=0.5)
        assert time.monotonic() - started < 5


async def test_without_the_etcd_service() -> None:
    body = """local put_err = etcd.put("k", "v")
    local _, get_err = etcd.get("k", true)
    local key, del_err = etcd.delete("k")
    return put_err .. "|" .. get_err .. "|" .. key .. "|" .. del_err"""
    async with LuaExecutor(
        modules=builtin_modules(), nats=None, env={}, max_memory_bytes=16 << 20, threads=1
    ) as executor:
        assert await lua(executor, body) == b"etcd is not configured|etcd is not configured|k|etcd is not configured"


# The EtcdKV global


async def test_require_defines_the_EtcdKV_global(ex: Executor) -> None:
    content = """local before = tostring(EtcdKV)
    local etcd = require("etcd")
    function OnMessage()
      local kv = EtcdKV.new("a", 5)
      return before .. " " .. type(EtcdKV) .. " " .. type(kv) .. " " .. kv:getKey() .. "=" .. kv:getValue()
        .. " " .. tostring(getmetatable(kv) == EtcdKV)
    end"""
    assert (await run_lua(ex, content)).payload == b"nil table userdata a=5 true"


async def test_kvs_from_get_share_the_EtcdKV_metatable(ex: Executor, etcd: EtcdClient) -> None:
    await etcd.put("msgscript/test/kv", "v", timeout_s=T)
    body = """function EtcdKV.__index.describe(kv) return kv:getKey() .. " -> " .. kv:getValue() end
    return etcd.get("msgscript/test/kv", false)[1]:describe()"""
    assert await lua(ex, body) == b"msgscript/test/kv -> v"


async def test_EtcdKV_does_not_outlive_the_execution(ex: Executor) -> None:
    assert await lua(ex, 'EtcdKV.__index.extra = function() return "x" end return EtcdKV.new("k", "v"):extra()') == b"x"
    assert await on_message(ex, "return tostring(EtcdKV)") == b"nil"
    assert await lua(ex, "return tostring(EtcdKV.__index.extra)") == b"nil"


async def test_require_inside_a_coroutine_defines_the_global(ex: Executor) -> None:
    body = """local co = coroutine.create(function() local etcd = require("etcd") return etcd end)
    local ok, mod = coroutine.resume(co)
    return tostring(ok) .. " " .. type(mod.put) .. " " .. EtcdKV.new("k", "v"):getValue()"""
    assert await on_message(ex, body) == b"true function v"


GC_CHILD = '''
import asyncio
from tests.lua_harness import lua_executor, on_message

BODY = """
local etcd = require("etcd")
local mt = getmetatable(EtcdKV.new("k", "v"))
-- Lua runs a userdata's __gc with the instruction hook off: this finalizer would never end.
mt.__gc = function() while true do end end
for i = 1, 1000 do EtcdKV.new("k", "v") end
collectgarbage()
collectgarbage()
EtcdKV.__index = {getKey = function() return "replaced" end}
return tostring(mt == EtcdKV) .. " " .. EtcdKV.new("a", "b"):getKey()
"""

async def main():
    async with lua_executor(plugins=False, lua_threads=1) as executor:
        print((await on_message(executor, BODY, timeout_s=5)).decode())
        print((await on_message(executor, 'return require("etcd") and EtcdKV.new("a", "b"):getValue()')).decode())

asyncio.run(main())
'''


async def test_a_script_cannot_give_kvs_a_finalizer() -> None:
    # In a child process: were the finalizer to run, it would spin forever where nothing can stop it.
    root = Path(__file__).resolve().parent.parent
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GC_CHILD, cwd=root, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("a KV finalizer set by the script ran")
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["true replaced", "b"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('EtcdKV.new("k")', "bad argument #2 to 'new' (string expected, got no value)"),
        ("EtcdKV.new(nil, 'v')", "bad argument #1 to 'new' (string expected, got nil)"),
        ('EtcdKV.new("k", "v").getKey()', "bad argument #1 to 'getKey' (EtcdKV expected, got no value)"),
        ("EtcdKV.__index.getValue({})", "bad argument #1 to 'getValue' (EtcdKV expected, got table)"),
    ],
)
async def test_EtcdKV_argument_errors(ex: Executor, call: str, message: str) -> None:
    body = f"local ok, err = pcall(function() local r = {call} return r end) return err"
    assert await lua(ex, body) == f"<string>:3: {message}".encode()


# End to end: a daemon over NATS with the bundled plugins, as deployed.

ETCD_SCRIPT = """--* subject: funcs.etcd
--* name: etcd
local etcd = require("etcd")

function OnMessage(subject, payload)
  local err = etcd.put("msgscript/test/" .. payload, "seen by " .. subject)
  if err ~= nil then return "put failed: " .. err end
  local kvs, get_err = etcd.get("msgscript/test/", true)
  if get_err ~= nil then return "get failed: " .. get_err end
  local out = {}
  for _, kv in ipairs(kvs) do out[#out + 1] = kv:getKey() .. "=" .. kv:getValue() end
  return table.concat(out, ",")
end
"""


async def request_payload(nc: nats.NATS, data: bytes) -> bytes | None:
    msg = await nc.request("funcs.etcd", data, timeout=10)
    reply = Reply.from_json(msg.data)
    assert reply.results is not None and len(reply.results) == 1
    return reply.results[0].payload


async def test_daemon_runs_an_etcd_script_over_nats(
    make_daemon: DaemonFactory, nc: nats.NATS, etcd_server: EtcdServer, etcd: EtcdClient, tmp_path: Path
) -> None:
    scripts = tmp_path / "etcd-scripts"
    scripts.mkdir()
    (scripts / "etcd.lua").write_text(ETCD_SCRIPT)
    await etcd.put("msgscript/test/0", "preset", timeout_s=T)
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR, etcd_endpoints=(etcd_server.url,)):
        assert await request_payload(nc, b"1") == b"msgscript/test/0=preset,msgscript/test/1=seen by funcs.etcd"
    assert await value_of(etcd, "msgscript/test/1") == b"seen by funcs.etcd"


async def test_daemon_without_etcd_starts_and_reports_the_outage(
    make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    scripts = tmp_path / "etcd-scripts"
    scripts.mkdir()
    (scripts / "etcd.lua").write_text(ETCD_SCRIPT)
    endpoint = f"127.0.0.1:{free_port()}"
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR, etcd_endpoints=(endpoint,)):
        payload = await request_payload(nc, b"1")
        assert payload is not None and payload.startswith(f"put failed: etcd at {endpoint} is unreachable: ".encode())
        # Still serving.
        assert await request_payload(nc, b"2") == payload
