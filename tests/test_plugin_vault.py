"""The vault plugin against a real HTTP server implementing the KV version 2 endpoints it uses."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from aiohttp import web

from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message
from tests.servers import free_port, missing, serve_app

TOKEN = "s.test-token"
MOUNT = "secrets"


@dataclass
class KvServer:
    """An in-memory KV v2 engine mounted at MOUNT, answering only requests that carry TOKEN."""

    url: str = ""
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    bodies: list[object] = field(default_factory=list)
    delay_s: float = 0.0
    """How long each request waits before it is answered (cut short when the server stops)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        token = request.headers.get("X-Vault-Token")
        self.requests.append((request.method, tail, request.query_string, token))
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.delay_s)
        if token != TOKEN:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        mount, _, rest = tail.partition("/")
        kind, _, key = rest.partition("/")
        if mount != MOUNT or kind not in ("data", "metadata"):
            return web.json_response({"errors": [f'no handler for route "{tail}". route entry not found.']}, status=404)
        key = key.strip("/")
        if kind == "data" and request.method in ("PUT", "POST"):
            body = await request.json()
            self.bodies.append(body)
            data = body["data"]
            if not all(isinstance(v, str) for v in data.values()):
                return web.json_response({"errors": ["values must be strings in this test server"]}, status=400)
            self.secrets[key] = data
            return web.json_response({"data": {"version": 1, "destroyed": False}})
        if kind == "data" and request.method == "GET":
            if key not in self.secrets:
                return web.json_response({"errors": []}, status=404)
            return web.json_response({"data": {"data": self.secrets[key], "metadata": {"version": 1}}})
        if kind == "metadata" and request.method == "DELETE":
            self.secrets.pop(key, None)
            return web.Response(status=204)
        if kind == "metadata" and (request.method == "LIST" or request.query.get("list") == "true"):
            prefix = f"{key}/" if key else ""
            children = {
                name[len(prefix) :].split("/", 1)[0] + ("/" if "/" in name[len(prefix) :] else "")
                for name in self.secrets
                if name.startswith(prefix)
            }
            if not children:
                return web.json_response({"errors": []}, status=404)
            return web.json_response({"data": {"keys": sorted(children)}})
        return web.json_response({"errors": ["unsupported operation"]}, status=405)


@contextlib.asynccontextmanager
async def serve_kv(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[KvServer]:
    server = KvServer()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", server.handle)
    async with serve_app(app, ssl_context) as url:
        server.url = url
        try:
            yield server
        finally:
            server.stopping.set()


@pytest.fixture
async def kv() -> AsyncIterator[KvServer]:
    async with serve_kv() as server:
        yield server


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with lua_executor(env={}) as executor:
        yield executor


def connect(server: KvServer, token: str = TOKEN) -> str:
    """Lua that creates client `v` for the server, failing the script if it cannot."""
    return f'local vault = require("vault")\nlocal v = assert(vault.new("{server.url}", "{token}"))'


# The flow of the Go plugin's own test script: a GET page that goes through every call.
FLOW_SCRIPT = """--* name: vaulttest
--* subject: app.vaulttest
--* html: true

local vault = require("vault")

function GET(_, _)
    local client, err = vault.new("", "", true)
    if err ~= nil then return "conn: " .. err end
    err = client:write("/foo", { foo = "bar" }, "secrets")
    if err ~= nil then return "write: " .. err end
    local data
    data, err = client:read("/foo", "secrets")
    if err ~= nil then return "read: " .. err end
    if data.foo ~= "bar" then return "wrong data returned" end
    local keys
    keys, err = client:list("/", "secrets")
    if err ~= nil then return "list: " .. err end
    if #keys ~= 1 then return "list returned wrong number of keys, expected 1 got " .. #keys end
    err = client:delete("/foo", "secrets")
    if err ~= nil then return "delete: " .. err end
    return "passed!"
end
"""


async def test_the_go_test_flow_through_a_daemon(
    make_daemon: DaemonFactory, nc: nats.NATS, kv: KvServer, tmp_path: Path
) -> None:
    scripts = tmp_path / "vault_scripts"
    scripts.mkdir()
    (scripts / "test.lua").write_text(FLOW_SCRIPT)
    env = {"VAULT_ADDR": kv.url, "VAULT_TOKEN": TOKEN}
    envelope = b'{"method":"GET","payload":"","subject":"app.vaulttest","url":"/"}'
    async with make_daemon(plugin_dir=PLUGIN_DIR, script_dir=str(scripts), env=env):
        reply = Reply.from_json((await nc.request("app.vaulttest", envelope, timeout=10)).data)
    (result,) = reply.results or ()
    assert (result.error, result.http_code, result.is_html, result.payload) == ("", 200, True, b"passed!")
    assert kv.requests == [
        ("PUT", "secrets/data/foo", "", TOKEN),
        ("GET", "secrets/data/foo", "", TOKEN),
        ("GET", "secrets/metadata/", "list=true", TOKEN),
        ("DELETE", "secrets/metadata/foo", "", TOKEN),
    ]
    assert kv.bodies == [{"data": {"foo": "bar"}}]
    assert kv.secrets == {}


async def test_write_stores_every_value_as_a_string(ex: Executor, kv: KvServer) -> None:
    body = f"""{connect(kv)}
        local err = v:write("/app/db", {{user = "me", port = 5432, ratio = 1.5, on = true}}, "{MOUNT}")
        local data, err2 = v:read("/app/db", "{MOUNT}")
        return tostring(err) .. "|" .. tostring(err2) .. "|" .. data.user .. data.port .. data.ratio .. data.on
            .. type(data.port)
    """
    assert await on_message(ex, body) == b"nil|nil|me54321.5truestring"
    assert kv.bodies == [{"data": {"user": "me", "port": "5432", "ratio": "1.5", "on": "true"}}]


async def test_read_of_a_missing_secret(ex: Executor, kv: KvServer) -> None:
    body = f"""{connect(kv)}
        local data, err = v:read("/nope", "{MOUNT}")
        local data2, err2 = v:read("/x", "no-such-mount")
        return tostring(data) .. "|" .. err .. "|" .. tostring(data2) .. "|" .. err2
    """
    assert await on_message(ex, body) == b"nil|path /nope not found|nil|path /x not found"


async def test_list_gives_the_keys_under_a_path(ex: Executor, kv: KvServer) -> None:
    kv.secrets.update({"a": {}, "dir/b": {}, "dir/c": {}, "dir/sub/d": {}})
    body = f"""{connect(kv)}
        local top = v:list("/", "{MOUNT}")
        local dir, err = v:list("/dir", "{MOUNT}")
        local empty, err2 = v:list("/nothing", "{MOUNT}")
        return table.concat(top, ",") .. "|" .. table.concat(dir, ",") .. "|" .. tostring(err) .. "|"
            .. type(empty) .. #empty .. "|" .. tostring(err2)
    """
    assert await on_message(ex, body) == b"a,dir/|b,c,sub/|nil|table0|nil"
    assert kv.requests[1][1:3] == ("secrets/metadata/dir", "list=true")


async def test_delete_removes_the_secret(ex: Executor, kv: KvServer) -> None:
    kv.secrets["gone"] = {"k": "v"}
    body = f"""{connect(kv)}
        local err = v:delete("/gone", "{MOUNT}")
        local data, err2 = v:read("/gone", "{MOUNT}")
        return tostring(err) .. "|" .. err2
    """
    assert await on_message(ex, body) == b"nil|path /gone not found"
    assert ("DELETE", "secrets/metadata/gone", "", TOKEN) in kv.requests


async def test_every_call_reports_an_error_status(ex: Executor, kv: KvServer) -> None:
    body = f"""{connect(kv, token="wrong")}
        local werr = v:write("/foo", {{a = "b"}}, "{MOUNT}")
        local data, rerr = v:read("/foo", "{MOUNT}")
        local derr = v:delete("/foo", "{MOUNT}")
        local keys, lerr = v:list("/", "{MOUNT}")
        return table.concat({{werr, tostring(data), rerr, derr, tostring(keys), lerr}}, "#")
    """
    result = await on_message(ex, body)
    assert result is not None
    werr, data, rerr, derr, keys, lerr = result.decode().split("#")
    denied = "Code: 403. Errors:\n\n* permission denied"
    assert (
        werr == f"failed to write to /foo: Error making API request.\n\nURL: PUT {kv.url}/v1/secrets/data/foo\n{denied}"
    )
    assert (
        rerr
        == f"failed to read path /foo: Error making API request.\n\nURL: GET {kv.url}/v1/secrets/data/foo\n{denied}"
    )
    assert derr == (
        f"failed to delete /foo: Error making API request.\n\nURL: DELETE {kv.url}/v1/secrets/metadata/foo\n{denied}"
    )
    assert lerr == (
        f"failed to list /: Error making API request.\n\nURL: GET {kv.url}/v1/secrets/metadata/?list=true\n{denied}"
    )
    assert (data, keys) == ("nil", "nil")
    assert {token for *_, token in kv.requests} == {"wrong"}


async def test_unreachable_server(ex: Executor) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    body = f"""
        local vault = require("vault")
        local v = vault.new("{url}", "t")
        local werr = v:write("/foo", {{a = "b"}}, "kv")
        local _, rerr = v:read("/foo", "kv")
        return werr .. "#" .. rerr
    """
    result = await on_message(ex, body)
    assert result is not None
    werr, rerr = result.decode().split("#")
    assert werr.startswith(f'failed to write to /foo: Put "{url}/v1/kv/data/foo": Cannot connect to host')
    assert rerr.startswith(f'failed to read path /foo: Get "{url}/v1/kv/data/foo": Cannot connect to host')


async def test_new_reads_the_environment_when_asked(kv: KvServer) -> None:
    kv.secrets["k"] = {"v": "from env"}
    body = f"""
        local vault = require("vault")
        local from_env = assert(vault.new("http://127.0.0.1:1", "wrong", true))
        local data = from_env:read("/k", "{MOUNT}")
        local _, err = assert(vault.new("http://127.0.0.1:1", "wrong", false)):read("/k", "{MOUNT}")
        return data.v .. "|" .. err
    """
    async with lua_executor(env={"VAULT_ADDR": kv.url, "VAULT_TOKEN": TOKEN}) as executor:
        result = await on_message(executor, body)
    assert result is not None
    assert result.startswith(b'from env|failed to read path /k: Get "http://127.0.0.1:1/v1/secrets/data/k"')


async def test_new_from_env_falls_back_to_its_arguments(ex: Executor, kv: KvServer) -> None:
    kv.secrets["k"] = {"v": "args"}
    body = f"""
        local v = assert(require("vault").new("{kv.url}", "{TOKEN}", true))
        return v:read("/k", "{MOUNT}").v
    """
    assert await on_message(ex, body) == b"args"


async def test_requiring_vault_defines_the_vaultkv_global(ex: Executor, kv: KvServer) -> None:
    kv.secrets["g"] = {"v": "global"}
    body = f"""
        local before = type(VaultKV)
        require("vault")
        local v, err = VaultKV.new("{kv.url}", "{TOKEN}")
        return before .. "|" .. tostring(err) .. "|" .. v:read("/g", "{MOUNT}").v
    """
    assert await on_message(ex, body) == b"nil|nil|global"
    # Globals never outlive their execution.
    assert await on_message(ex, "return type(VaultKV)") == b"nil"


async def test_new_rejects_an_invalid_address(ex: Executor) -> None:
    body = """
        local vault = require("vault")
        local v, err = vault.new("not a url", "t")
        local v2, err2 = vault.new("ftp://host", "t")
        return tostring(v) .. "|" .. err .. "|" .. tostring(v2) .. "|" .. err2
    """
    assert await on_message(ex, body) == (
        b"nil|failed to create new vault client: invalid address 'not a url': want http(s)://host[:port]"
        b"|nil|failed to create new vault client: invalid address 'ftp://host': want http(s)://host[:port]"
    )


async def test_empty_address_means_the_local_default(ex: Executor) -> None:
    body = """
        local v = assert(require("vault").new("", "t"))
        return v:write("/foo", {a = "b"}, "kv")
    """
    result = await on_message(ex, body)
    assert result is not None
    assert result.startswith(b"failed to write to /foo: ")
    assert b"https://127.0.0.1:8200/v1/kv/data/foo" in result


async def test_argument_errors(ex: Executor, kv: KvServer) -> None:
    body = f"""{connect(kv)}
        local _, e1 = pcall(function() local r = vault.new() return r end)
        local _, e2 = pcall(function() local r = vault.new("", "", "yes") return r end)
        local _, e3 = pcall(function() local r = v:write("/p", "not a table", "m") return r end)
        local _, e4 = pcall(function() local r = v:read("/p") return r end)
        local _, e5 = pcall(function() local r = v.list("/p", "m") return r end)
        return table.concat({{e1, e2, e3, e4, e5}}, "|")
    """
    assert await on_message(ex, body) == (
        b"<string>:4: bad argument #1 to 'new' (string expected, got nil)|"
        b"<string>:5: bad argument #3 to 'new' (boolean expected, got string)|"
        b"<string>:6: bad argument #3 to 'write' (table expected, got string)|"
        b"<string>:7: bad argument #3 to 'read' (string expected, got nil)|"
        b"<string>:8: bad argument #1 to 'list' (client expected, got string)"
    )


async def self_signed_context(directory: Path) -> ssl.SSLContext:
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl (to make a self-signed certificate)")
        raise AssertionError("unreachable")
    key, cert = directory / "key.pem", directory / "cert.pem"
    proc = await asyncio.create_subprocess_exec(
        openssl,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=msgscript-test"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await proc.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_https_server_certificate_is_not_verified(ex: Executor, tmp_path: Path) -> None:
    async with serve_kv(await self_signed_context(tmp_path)) as server:
        body = f"""{connect(server)}
            local err = v:write("/tls", {{a = "b"}}, "{MOUNT}")
            local data, err2 = v:read("/tls", "{MOUNT}")
            return tostring(err) .. "|" .. tostring(err2) .. "|" .. data.a
        """
        assert server.url.startswith("https://")
        assert await on_message(ex, body) == b"nil|nil|b"


async def test_a_request_is_cut_at_the_script_deadline(ex: Executor, kv: KvServer) -> None:
    kv.delay_s = 30
    body = f"""{connect(kv)}
        v:read("/slow", "{MOUNT}")
        return "not reached"
    """
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="script timed out after 1s"):
        await on_message(ex, body, timeout_s=1.0)
    assert time.monotonic() - started < 15


async def test_a_server_answer_that_is_not_json(ex: Executor) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", status=502)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broken)
    async with serve_app(app) as url:
        body = f"""
            local v = require("vault").new("{url}", "t")
            local _, err = v:read("/x", "kv")
            return err
        """
        assert (
            await on_message(ex, body)
            == (
                f"failed to read path /x: Error making API request.\n\nURL: GET {url}/v1/kv/data/x\n"
                "Code: 502. Raw Message:\n\n<html>proxy error</html>"
            ).encode()
        )


async def test_secrets_past_the_memory_cap_fail(kv: KvServer) -> None:
    # The response body and its decoding, and what a write sends, count against the script's memory cap.
    kv.secrets["big"] = {"blob": "s" * (6 * 1024 * 1024)}
    kv.secrets["small"] = {"blob": "s" * 1024}
    body = f"""{connect(kv)}
        local read_ok, read_err = pcall(v.read, v, "/big", "{MOUNT}")
        local big = ("w"):rep(2 * 1024 * 1024)
        local write_ok, write_err = pcall(v.write, v, "/w", {{a = big, b = big, c = big}}, "{MOUNT}")
        local small = assert(v:read("/small", "{MOUNT}"))
        local out = {{tostring(read_ok), read_err, tostring(write_ok), write_err, #small.blob}}
        return table.concat(out, "|")
    """
    async with lua_executor(env={}, max_memory_bytes=8 * 1024 * 1024) as executor:
        assert await on_message(executor, body) == b"false|not enough memory|false|not enough memory|1024"
    assert "w" not in kv.secrets
