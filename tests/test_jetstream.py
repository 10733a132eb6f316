"""Durable scripts on JetStream (msgscript.jetstream): at-least-once runs, retries with backoff, dead letters,
replies, the HTTP way in and `nats.jspublish`, against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api

from msgscript import jetstream
from msgscript.app import running
from msgscript.errors import ScriptParseError
from msgscript.jetstream import consumer_name, covered, retry_delay_s
from msgscript.script import DEFAULT_BACKOFF_S, DEFAULT_RETRIES, parse_script
from tests.conftest import fixture_settings
from tests.servers import NatsServer, free_port, run_nats_server

T = 10.0

# Each run tells the test what it saw: subject, payload and the metadata table, on `seen.<name>`.
RECORD = """
local nats = require("nats")
local json = require("json")
local function record(name, subject, payload, meta)
    nats.publish("seen." .. name, json.encode({subject = subject, payload = payload, meta = meta}))
end
"""
SINK = (
    """--* subject: durable.sink
--* name: sink
--* durable: true
"""
    + RECORD
    + """
function OnMessage(subject, payload, meta)
    record("sink", subject, payload, meta)
    return "stored " .. payload
end
"""
)
FLAKY = (
    """--* subject: durable.flaky
--* name: flaky
--* durable: true
--* backoff: 200ms,400ms
"""
    + RECORD
    + """
function OnMessage(subject, payload, meta)
    record("flaky", subject, payload, meta)
    if meta.delivery <= 2 then error("not yet") end
    return "done"
end
"""
)
BROKEN = (
    """--* subject: durable.broken.*
--* name: broken
--* durable: true
--* retries: 1
--* backoff: 100ms
"""
    + RECORD
    + """
function OnMessage(subject, payload, meta)
    record("broken", subject, payload, meta)
    error("always\\nbroken")
end
"""
)
EMIT = """--* subject: funcs.emit
--* name: emit
local nats = require("nats")
function OnMessage(subject, payload)
    local seq, err = nats.jspublish("durable.sink", payload, "emit-" .. payload)
    if err then error(err) end
    return tostring(seq)
end
"""
HELLO = """--* subject: funcs.hello
--* name: hello
function OnMessage(subject, payload) return "hello " .. payload end
"""


@pytest.fixture
async def js_server() -> AsyncIterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="msgscript-js-") as store:
        async with run_nats_server("-js", "-sd", store) as server:
            yield server


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    directory = tmp_path / "scripts"
    directory.mkdir()
    for name, text in {"sink": SINK, "flaky": FLAKY, "broken": BROKEN, "emit": EMIT, "hello": HELLO}.items():
        (directory / f"{name}.lua").write_text(text)
    (tmp_path / "libs").mkdir()
    return directory


@contextlib.asynccontextmanager
async def durable_daemon(server: NatsServer, scripts: Path, **overrides: Any) -> AsyncIterator[None]:
    settings = fixture_settings(server.url, scripts, scripts.parent / "libs", **overrides)
    async with running(settings):
        yield


@pytest.fixture
async def nc(js_server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(js_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()


class Inbox:
    """The messages of a subscription, kept."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def keep(self, msg: Msg) -> None:
        self.msgs.append(msg)


class Seen:
    """What the scripts reported on `seen.*`, in arrival order."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        report = json.loads(msg.data)
        report["script"] = msg.subject.removeprefix("seen.")
        self.runs.append(report)
        self.changed.set()

    def of(self, script: str) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["script"] == script]

    async def wait_for(self, script: str, count: int, timeout_s: float = T) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while len(self.of(script)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(script)


@pytest.fixture
async def seen(nc: nats.NATS) -> AsyncIterator[Seen]:
    record = Seen()
    sub = await nc.subscribe("seen.*", cb=record.on_msg)
    yield record
    await sub.unsubscribe()


async def consumer_settled(nc: nats.NATS, script_subject: str, name: str) -> api.ConsumerInfo:
    """The script's consumer once nothing is pending or waiting for an acknowledgement."""
    js = nc.jetstream()
    durable = consumer_name(parse_script(f"--* subject: {script_subject}\n--* name: {name}\n"))
    async with asyncio.timeout(T):
        while True:
            info = await js.consumer_info("MSGSCRIPT", durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return info
            await asyncio.sleep(0.05)


async def test_each_message_runs_once_with_its_metadata_and_is_acknowledged(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    async with durable_daemon(js_server, scripts):
        js = nc.jetstream()
        first = await js.publish("durable.sink", b"one", headers={"Nats-Msg-Id": "order-1"})
        second = await js.publish("durable.sink", b"two")
        # The same id again inside the duplicate window: stored once, run once.
        again = await js.publish("durable.sink", b"one", headers={"Nats-Msg-Id": "order-1"})
        assert again.duplicate and again.seq == first.seq
        runs = await seen.wait_for("sink", 2)
        await consumer_settled(nc, "durable.sink", "sink")
    # Deliveries run concurrently: their reports may come in either order.
    assert sorted(((r["payload"], r["meta"]) for r in runs), key=lambda run: run[1]["sequence"]) == [
        ("one", {"id": "order-1", "sequence": first.seq, "delivery": 1, "stream": "MSGSCRIPT"}),
        ("two", {"id": str(second.seq), "sequence": second.seq, "delivery": 1, "stream": "MSGSCRIPT"}),
    ]
    assert len(seen.of("sink")) == 2


async def test_a_durable_subject_has_no_core_subscription(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    async with durable_daemon(js_server, scripts):
        # A core request on the subject is stored by the stream, which answers with its PubAck.
        answer = await nc.request("durable.sink", b"core", timeout=T)
        assert json.loads(answer.data)["stream"] == "MSGSCRIPT"
        runs = await seen.wait_for("sink", 1)
        assert runs[0]["payload"] == "core"
        # Core subjects are not captured: the hello script answers as always.
        hello = await nc.request("funcs.hello", b"you", timeout=T)
        assert b"aGVsbG8geW91" in hello.data
        await consumer_settled(nc, "durable.sink", "sink")
    assert len(seen.of("sink")) == 1


async def test_a_failure_is_retried_with_the_backoff_then_acknowledged(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    dead = Inbox()
    dlq = await nc.subscribe("msgscript.dlq.>", cb=dead.keep)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def stamp(msg: Msg) -> None:
        arrivals.append(loop.time())

    stamps = await nc.subscribe("seen.flaky", cb=stamp)
    async with durable_daemon(js_server, scripts):
        await nc.jetstream().publish("durable.flaky", b"x", headers={"Msgscript-Reply-To": "flaky.reply"})
        runs = await seen.wait_for("flaky", 3)
        await consumer_settled(nc, "durable.flaky", "flaky")
    await stamps.unsubscribe()
    await dlq.unsubscribe()
    assert [run["meta"]["delivery"] for run in runs] == [1, 2, 3]
    # The delays are at least the configured ones (the server may add a little).
    assert arrivals[1] - arrivals[0] >= 0.2 * 0.9
    assert arrivals[2] - arrivals[1] >= 0.4 * 0.9
    assert dead.msgs == []


async def test_the_last_failure_is_a_dead_letter_and_the_message_ends(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    dead, replies = Inbox(), Inbox()
    dlq = await nc.subscribe("msgscript.dlq.>", cb=dead.keep)
    reply_sub = await nc.subscribe("broken.reply", cb=replies.keep)
    async with durable_daemon(js_server, scripts):
        ack = await nc.jetstream().publish(
            "durable.broken.a", b"payload", headers={"X-Trace": "abc", "Msgscript-Reply-To": "broken.reply"}
        )
        runs = await seen.wait_for("broken", 2)
        async with asyncio.timeout(T):
            while not dead.msgs or not replies.msgs:
                await asyncio.sleep(0.05)
        await consumer_settled(nc, "durable.broken.*", "broken")
        # Terminated: no third delivery comes, however long one waits for the backoff.
        await asyncio.sleep(0.5)
    await dlq.unsubscribe()
    await reply_sub.unsubscribe()
    assert [run["meta"]["delivery"] for run in runs] == [1, 2]
    assert len(seen.of("broken")) == 2
    assert len(dead.msgs) == 1
    letter = dead.msgs[0]
    assert letter.subject == "msgscript.dlq.durable.broken.a"
    assert letter.data == b"payload"
    assert letter.headers is not None
    assert letter.headers["X-Trace"] == "abc"
    assert letter.headers["Msgscript-Script"] == "broken"
    assert letter.headers["Msgscript-Deliveries"] == "2"
    assert letter.headers["Msgscript-Sequence"] == str(ack.seq)
    assert "always broken" in letter.headers["Msgscript-Error"]
    # The dead letter is kept in the daemon's stream.
    stored = await nc.jetstream().get_last_msg("MSGSCRIPT", "msgscript.dlq.durable.broken.a")
    assert stored.data == b"payload"
    # The reply, once the message ended, is the script's error.
    assert "always" in json.loads(replies.msgs[0].data)["script_result"][0]["error"]


async def test_http_publishes_into_the_stream_once_per_idempotency_key(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    port = free_port()
    async with durable_daemon(js_server, scripts, http_port=port), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/durable.sink"
        answers = []
        for _ in range(2):
            async with http.post(url, data=b"hook", headers={"Idempotency-Key": "hook-1"}) as resp:
                assert resp.status == 202
                answers.append(await resp.json())
        runs = await seen.wait_for("sink", 1)
        await consumer_settled(nc, "durable.sink", "sink")
    assert answers[0]["stream"] == "MSGSCRIPT" and answers[0]["duplicate"] is False
    assert answers[1] == {**answers[0], "duplicate": True}
    assert runs[0]["meta"]["id"] == "hook-1"
    assert len(seen.of("sink")) == 1


async def test_a_script_publishes_durable_events(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen
) -> None:
    async with durable_daemon(js_server, scripts):
        replies = [await nc.request("funcs.emit", b"e1", timeout=T) for _ in range(2)]
        runs = await seen.wait_for("sink", 1)
        await consumer_settled(nc, "durable.sink", "sink")
    sequences = [json.loads(r.data)["script_result"][0]["payload"] for r in replies]
    # Twice the same id: one stored message, whose sequence both calls return.
    assert sequences[0] == sequences[1]
    assert runs[0]["meta"]["id"] == "emit-e1"
    assert len(seen.of("sink")) == 1


async def test_instances_share_the_consumer(js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen) -> None:
    count = 40
    async with durable_daemon(js_server, scripts), durable_daemon(js_server, scripts):
        js = nc.jetstream()
        for i in range(count):
            await js.publish("durable.sink", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})
        await seen.wait_for("sink", count)
        await consumer_settled(nc, "durable.sink", "sink")
    assert sorted(int(run["payload"]) for run in seen.of("sink")) == list(range(count))


async def test_a_user_stream_is_consumed_and_left_alone(
    js_server: NatsServer, tmp_path: Path, nc: nats.NATS, seen: Seen
) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    directory = tmp_path / "own"
    directory.mkdir()
    (tmp_path / "libs").mkdir(exist_ok=True)
    text = SINK.replace("durable.sink", "orders.new").replace(
        "--* durable: true", "--* stream: ORDERS\n--* durable: true"
    )
    (directory / "orders.lua").write_text(text)
    async with durable_daemon(js_server, directory):
        await js.publish("orders.new", b"o1")
        runs = await seen.wait_for("sink", 1)
    assert runs[0]["meta"]["stream"] == "ORDERS"
    assert (await js.stream_info("ORDERS")).config.subjects == ["orders.>"]
    # The daemon's own stream exists all the same, for the dead letters.
    assert (await js.stream_info("MSGSCRIPT")).config.subjects == ["msgscript.dlq.>"]


def test_durable_headers() -> None:
    plain = parse_script("--* subject: a\n")
    assert (plain.durable, plain.stream, plain.retries, plain.backoff_s) == (
        False,
        "",
        DEFAULT_RETRIES,
        DEFAULT_BACKOFF_S,
    )
    script = parse_script("--* subject: a\n--* durable: true\n--* retries: 0\n--* backoff: 1s, 1m30s\n")
    assert (script.durable, script.retries, script.backoff_s) == (True, 0, (1.0, 90.0))
    # Our headers stay in the content, so that they survive a round trip through etcd.
    assert "--* durable: true" in script.content
    assert not parse_script("--* subject: a\n--* html: true\n--* durable: true\n").durable
    for bad in ("retries: -1", "retries: two", "backoff: soon", "backoff: 1s,,2s", "stream: A.B", "stream: a b"):
        with pytest.raises(ScriptParseError):
            parse_script(f"--* subject: a\n--* {bad}\n")


def test_retry_delays_repeat_the_last_backoff() -> None:
    script = parse_script("--* subject: a\n--* backoff: 1s,5s\n")
    assert [retry_delay_s(script, n) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]


def test_stream_subjects_never_overlap() -> None:
    assert covered("a.b", ["a.*", "a.b"])
    assert covered("a.b.c", ["a.>"])
    assert not covered("a.*", ["a.*"])
    assert not covered("b.c", ["a.>"])


SLOW = (
    """--* subject: durable.slow
--* name: slow
--* durable: true
"""
    + RECORD
    + """
function OnMessage(subject, payload, meta)
    record("slow", subject, payload, meta)
    nats.request("held.slow", "", 3)  -- the test never answers: 3 s, past the shortened ack wait
    return "slow done"
end
"""
)


async def test_a_long_run_is_kept_in_progress_and_not_redelivered(
    js_server: NatsServer, scripts: Path, nc: nats.NATS, seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream, "ACK_WAIT_S", 1.0)
    monkeypatch.setattr(jetstream, "PROGRESS_EVERY_S", 0.4)
    (scripts / "slow.lua").write_text(SLOW)
    held = await nc.subscribe("held.slow", cb=Inbox().keep)
    async with durable_daemon(js_server, scripts):
        await nc.jetstream().publish("durable.slow", b"s")
        await seen.wait_for("slow", 1)
        await consumer_settled(nc, "durable.slow", "slow")
    await held.unsubscribe()
    assert len(seen.of("slow")) == 1
