"""The `json` Lua module: gopher-json's encoding rules and error returns, through the real executor."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from msgscript.executors.base import RunContext
from msgscript.executors.lua import LuaExecutor
from msgscript.lua.modules import builtin_modules
from msgscript.lua.modules.json import json_number
from msgscript.message import Message, go_string
from msgscript.script import Script


@pytest.fixture
async def executor() -> AsyncIterator[LuaExecutor]:
    async with LuaExecutor(
        modules=builtin_modules(), nats=None, env={}, max_memory_bytes=16 * 1024 * 1024, threads=2
    ) as ex:
        yield ex


async def lua(ex: LuaExecutor, body: str, payload: bytes = b"") -> bytes | None:
    """Run `body` as OnMessage's body with `json` required; returns the payload."""
    script = Script(
        subject="t", name="t", content=f'local json = require("json")\nfunction OnMessage(s, p)\n{body}\nend'
    )
    ctx = RunContext(deadline=time.monotonic() + 5, timeout_s=5)
    return (await ex.run(script, Message(subject="t", payload=payload), ctx)).payload


async def encode(ex: LuaExecutor, expression: str) -> bytes | None:
    """json.encode(expression) as `ok:<json>` or `err:<message>`."""
    body = f"""
        local text, err = json.encode({expression})
        if text == nil then return "err:" .. err end
        return "ok:" .. text
    """
    return await lua(ex, body)


async def test_go_reference_fixture(executor: LuaExecutor) -> None:
    assert await lua(executor, 'return json.encode({}) .. "|" .. json.encode({b=1, a="x"})') == b'[]|{"a":"x","b":1}'


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("nil", b"null"),
        ("true", b"true"),
        ("false", b"false"),
        ("1", b"1"),
        ("-3", b"-3"),
        ("1.5", b"1.5"),
        ("0.1", b"0.1"),
        ("1e21", b"1e+21"),
        ("1e20", b"100000000000000000000"),
        ("1e-7", b"1e-7"),
        ("2^53 + 2", b"9007199254740994"),
        ("'plain'", b'"plain"'),
        ("'<a href=\"x\">&</a>'", b'"\\u003ca href=\\"x\\"\\u003e\\u0026\\u003c/a\\u003e"'),
        ("'tab\\tnewline\\n'", b'"tab\\tnewline\\n"'),
        ("'caf\\195\\169'", '"café"'.encode()),
        ("'bad \\255 byte'", b'"bad \\ufffd byte"'),
        ("{1, 2, 3}", b"[1,2,3]"),
        ("{'a', {true, false}, {}}", b'["a",[true,false],[]]'),
        ("{z = {y = 1}, a = {1}}", b'{"a":[1],"z":{"y":1}}'),
        ("{[1] = 'x', [2] = 'y'}", b'["x","y"]'),
    ],
)
async def test_encode(executor: LuaExecutor, expression: str, expected: bytes) -> None:
    assert await encode(executor, expression) == b"ok:" + expected


async def test_array_built_out_of_order_is_still_an_array(executor: LuaExecutor) -> None:
    body = "local t = {} t[3] = 'c' t[2] = 'b' t[1] = 'a' return json.encode(t)"
    assert await lua(executor, body) == b'["a","b","c"]'


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("{[1] = 1, [3] = 3}", "cannot encode sparse array"),
        ("{[1.5] = 1}", "cannot encode sparse array"),
        ("{1, 2, a = 3}", "cannot encode mixed or invalid key types"),
        ("{[true] = 1}", "cannot encode mixed or invalid key types"),
        ("{f = print}", "cannot encode function to JSON"),
        ("print", "cannot encode function to JSON"),
        ("{coroutine.create(print)}", "cannot encode thread to JSON"),
        ("0/0", "json: unsupported value: NaN"),
        ("{1/0}", "json: unsupported value: +Inf"),
    ],
)
async def test_encode_errors(executor: LuaExecutor, setup: str, error: str) -> None:
    assert await encode(executor, setup) == f"err:{error}".encode()


async def test_encode_cycle_is_an_error(executor: LuaExecutor) -> None:
    body = """
        local t = {name = "loop"}
        t.self = t
        local text, err = json.encode(t)
        return tostring(text) .. "|" .. err
    """
    assert await lua(executor, body) == b"nil|cannot encode recursively nested tables to JSON"


async def test_decode_object(executor: LuaExecutor) -> None:
    body = """
        local v = json.decode(p)
        return v.name .. "|" .. #v.list .. "|" .. v.list[1] .. "|" .. tostring(v.gone) .. "|" .. v.n * 2
            .. "|" .. tostring(v.yes) .. "|" .. v.nested.deep[2]
    """
    doc = b'{"name":"Ada","list":[10,20],"gone":null,"n":2.5,"yes":true,"nested":{"deep":["a","b"]}}'
    assert await lua(executor, body, doc) == b"Ada|2|10|nil|5|true|b"


async def test_decode_null_array_items_leave_holes(executor: LuaExecutor) -> None:
    body = "local v = json.decode(p) return tostring(v[1]) .. tostring(v[2]) .. tostring(v[3])"
    assert await lua(executor, body, b'[1, null, "x"]') == b"1nilx"


@pytest.mark.parametrize(("doc", "expected"), [(b"null", b"nil"), (b"42", b"42"), (b'"s"', b"s"), (b"[]", b"0")])
async def test_decode_scalars(executor: LuaExecutor, doc: bytes, expected: bytes) -> None:
    body = "local v, err = json.decode(p) if type(v) == 'table' then return tostring(#v) end return tostring(v)"
    assert await lua(executor, body, doc) == expected


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (b"{", "unexpected end of JSON input"),
        (b"", "unexpected end of JSON input"),
        (b"xyz", "invalid character 'x' looking for beginning of value"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b"[1] x", "invalid character 'x' after top-level value"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
    ],
)
async def test_decode_errors(executor: LuaExecutor, doc: bytes, error: str) -> None:
    body = "local v, err = json.decode(p) return tostring(v) .. '|' .. tostring(err)"
    assert await lua(executor, body, doc) == f"nil|{error}".encode()


async def test_decode_rejects_non_strings(executor: LuaExecutor) -> None:
    body = "local v, err = json.decode({}) return tostring(v) .. '|' .. err"
    assert await lua(executor, body) == b"nil|bad argument #1 to 'decode' (string expected, got table)"


async def test_round_trip(executor: LuaExecutor) -> None:
    doc = {"greeting": "Hello, <b>Ada</b>!", "list": [1, 2.5, "x", [True, False]], "empty": {}}
    body = "return json.encode(json.decode(p))"
    out = await lua(executor, body, json.dumps(doc).encode())
    assert out is not None
    # An empty object decodes to an empty table, which encodes as [] (gopher-json does the same).
    assert json.loads(out) == {**doc, "empty": []}


async def test_encoded_table_is_not_modified(executor: LuaExecutor) -> None:
    body = "local t = {b = 1, a = {1, 2}} json.encode(t) return tostring(#t.a) .. tostring(t.b) .. json.encode(t)"
    assert await lua(executor, body) == b'21{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (-0.0, "-0"), (12.0, "12"), (1e21, "1e+21"), (1.5e-7, "1.5e-7"), (123456789.125, "123456789.125")],
)
def test_json_number(value: float, text: str) -> None:
    assert json_number(value) == text


# Memory: the encoder and decoder charge what they build (tests/test_module_memory.py holds the RSS checks).


async def test_long_strings_are_escaped_in_pieces_like_one_string(executor: LuaExecutor) -> None:
    # Escaped 64 KiB at a time: a character or an invalid byte must come out the same wherever a piece ends.
    text = "a\u00e9\U0001f600<\u2028".encode() + b"\xff\xe2\x82"
    payload = text * 30000
    assert (
        await lua(executor, "return json.encode({payload = p})", payload)
        == b'{"payload":' + (go_string(payload).encode()) + b"}"
    )


async def test_values_past_the_inline_budget_still_encode_and_decode(executor: LuaExecutor) -> None:
    # Past the small Python budget of an execution on the event loop, it moves to a worker, where it succeeds.
    body = """
        local s = ("x"):rep(1024 * 1024)
        local text = json.encode({s, {a = s}})
        local back = json.decode(text)
        return tostring(back[2].a == s) .. #text
    """
    assert await lua(executor, body) == b"true" + str(2 * (1024 * 1024 + 2) + 9).encode()


async def test_encoding_past_the_memory_cap_is_an_error(executor: LuaExecutor) -> None:
    body = """
        local s = ("x"):rep(2 * 1024 * 1024)
        local t = {} for i = 1, 64 do t[i] = s end
        local ok, err = pcall(json.encode, t)
        return tostring(ok) .. " " .. err .. " " .. json.encode({s:sub(1, 3)})
    """
    assert await lua(executor, body) == b'false not enough memory ["xxx"]'
