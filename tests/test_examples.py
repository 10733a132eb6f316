"""Every script in examples/ runs through a daemon started on the examples directory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from msgscript.app import running
from msgscript.config import Settings
from msgscript.message import Reply
from tests.servers import NatsServer

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def examples_daemon(nats_server: NatsServer) -> AsyncIterator[None]:
    settings = Settings(
        nats_url=nats_server.url, script_dir=str(ROOT / "examples"), library_dir=str(ROOT / "libraries")
    )
    async with running(settings):
        yield


async def call(nc: nats.NATS, subject: str, data: bytes) -> tuple[bytes | None, str]:
    reply = Reply.from_json((await nc.request(subject, data, timeout=10)).data)
    (result,) = reply.results or ()
    return result.payload, result.error


async def test_every_example_is_covered() -> None:
    tested = {"hello", "fail", "io", "nats_publish", "greet_json", "deadline", "with_library"}
    assert {p.stem for p in (ROOT / "examples").glob("*.lua")} == tested


async def test_hello(examples_daemon: None, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.hello", b"John") == (b"Processed subject: funcs.hello with payload: John", "")


async def test_fail(examples_daemon: None, nc: nats.NATS) -> None:
    payload, error = await call(nc, "funcs.fail", b"")
    assert payload is None
    assert error.startswith("failed to call OnMessage function: ")


async def test_io_writes_into_a_scratch_directory(examples_daemon: None, nc: nats.NATS) -> None:
    before = set(Path.cwd().iterdir())
    assert await call(nc, "funcs.localio", b"data") == (b"written to file lua_test.out", "")
    assert set(Path.cwd().iterdir()) == before
    assert not (Path.cwd() / "lua_test.out").exists()


async def test_nats_publish(examples_daemon: None, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.pushover")
    assert await call(nc, "funcs.nats_publish", b"") == (None, "")
    assert (await sink.next_msg(timeout=5)).data == b'{"message":"boo-YAH","title":"booyah"}'


async def test_greet_json(examples_daemon: None, nc: nats.NATS) -> None:
    payload, error = await call(nc, "funcs.greet", b'{"name": "Ada"}')
    assert error == ""
    assert json.loads(payload or b"") == {"greeting": "Hello, Ada!", "length": 3}
    payload, _ = await call(nc, "funcs.greet", b"not json")
    assert "payload is not JSON" in json.loads(payload or b"")["error"]


async def test_deadline(examples_daemon: None, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.deadline", b"quick") == (b"finished in time", "")
    assert await call(nc, "funcs.deadline", b"loop") == (None, "script timed out after 1s")


async def test_with_library(examples_daemon: None, nc: nats.NATS) -> None:
    assert await call(nc, "funcs.library", b"Grace") == (b"Hello, Grace!", "")
