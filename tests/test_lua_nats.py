"""The `nats` Lua module against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from msgscript.errors import ScriptTimeout
from msgscript.executors.base import RunContext
from msgscript.executors.lua import LuaExecutor
from msgscript.lua.modules import builtin_modules
from msgscript.message import Message
from msgscript.script import Script


def executor(nc: NatsClient | None) -> LuaExecutor:
    return LuaExecutor(modules=builtin_modules(), nats=nc, env={}, max_memory_bytes=16 * 1024 * 1024, threads=4)


async def lua(ex: LuaExecutor, body: str, payload: bytes = b"", timeout_s: float = 5.0) -> bytes | None:
    """Run `body` as OnMessage's body with `nats` required; returns the payload."""
    script = Script(
        subject="t", name="t", content=f'local nats = require("nats")\nfunction OnMessage(s, p)\n{body}\nend'
    )
    ctx = RunContext(deadline=time.monotonic() + timeout_s, timeout_s=timeout_s)
    return (await ex.run(script, Message(subject="t", payload=payload), ctx)).payload


async def test_publish_reaches_a_subscriber(nc: NatsClient) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        await received.put(msg.data)

    await nc.subscribe("funcs.sink", cb=collect)
    await nc.flush()
    data = b"John \x00\xff\xfe not utf-8"
    async with executor(nc) as ex:
        body = 'local ok, err = nats.publish("funcs.sink", p) return tostring(ok) .. tostring(err)'
        assert await lua(ex, body, data) == b"truenil"
    assert await asyncio.wait_for(received.get(), 5) == data


async def test_publish_coerces_numbers(nc: NatsClient) -> None:
    sub = await nc.subscribe("funcs.numbers")
    await nc.flush()
    async with executor(nc) as ex:
        assert await lua(ex, 'return tostring(nats.publish("funcs.numbers", 42.5))') == b"true"
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"42.5"


async def test_publish_without_nats() -> None:
    async with executor(None) as ex:
        body = 'local ok, err = nats.publish("funcs.sink", "x") return tostring(ok) .. "|" .. err'
        assert await lua(ex, body) == b"false|Not connected to NATS"


async def test_publish_failure_is_reported(nc: NatsClient) -> None:
    async with executor(nc) as ex:
        body = 'local ok, err = nats.publish("", "x") return tostring(ok) .. "|" .. err'
        result = await lua(ex, body)
    assert result is not None and result.startswith(b"false|Failed to publish message: ")


async def test_publish_rejects_missing_arguments(nc: NatsClient) -> None:
    async with executor(nc) as ex:
        body = "local ok, err = pcall(function() local r = nats.publish() return r end) return err"
        result = await lua(ex, body)
    assert result == b"<string>:3: bad argument #1 to 'publish' (string expected, got nil)"


async def test_request_gets_the_reply(nc: NatsClient) -> None:
    async def upper(msg: Any) -> None:
        await msg.respond(msg.data.upper())

    await nc.subscribe("svc.upper", cb=upper)
    await nc.flush()
    async with executor(nc) as ex:
        body = 'local reply, err = nats.request("svc.upper", p, 2) return reply .. "|" .. tostring(err)'
        assert await lua(ex, body, b"hello") == b"HELLO|nil"


async def test_request_timeout_returns_an_error(nc: NatsClient) -> None:
    await nc.subscribe("svc.silent")
    await nc.flush()
    async with executor(nc) as ex:
        started = time.monotonic()
        body = 'local reply, err = nats.request("svc.silent", "x", 0.2) return tostring(reply) .. "|" .. err'
        assert await lua(ex, body) == b"nil|nats: timeout"
        assert time.monotonic() - started < 2


async def test_request_without_responders_returns_an_error(nc: NatsClient) -> None:
    async with executor(nc) as ex:
        body = 'local reply, err = nats.request("svc.nobody", "x", 1) return tostring(reply) .. "|" .. err'
        result = await lua(ex, body)
    assert result is not None and result.startswith(b"nil|nats: no responders")


async def test_request_without_nats() -> None:
    async with executor(None) as ex:
        body = 'local reply, err = nats.request("svc.upper", "x") return tostring(reply) .. "|" .. err'
        assert await lua(ex, body) == b"nil|Not connected to NATS"


async def test_request_does_not_outlast_the_script_deadline(nc: NatsClient) -> None:
    await nc.subscribe("svc.silent")
    await nc.flush()
    async with executor(nc) as ex:
        started = time.monotonic()
        with pytest.raises(ScriptTimeout):
            await lua(ex, 'local reply, err = nats.request("svc.silent", "x", 30) return err', timeout_s=0.5)
        assert time.monotonic() - started < 2


async def test_script_calls_a_script_through_nats(nc: NatsClient) -> None:
    async with executor(nc) as ex:

        async def inner(msg: Any) -> None:
            result = await lua(ex, 'return "inner saw " .. p', msg.data)
            await msg.respond(result or b"")

        await nc.subscribe("funcs.inner", cb=inner)
        await nc.flush()
        assert await lua(ex, 'return (nats.request("funcs.inner", p))', b"John") == b"inner saw John"
