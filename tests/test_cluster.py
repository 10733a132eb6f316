"""Several daemons on one NATS and one etcd: each message runs once, locks exclude, scripts appear everywhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NatsClient

from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.script import parse_script
from tests.processes import Daemon, Proc, command_env, start_daemon
from tests.servers import EtcdServer, NatsServer, free_port

INSTANCES = 3
REQUESTS = 300
IN_FLIGHT = 20
VISIBLE_WITHIN_S = 1.0

COUNT_SCRIPT = """--* subject: cluster.count
--* name: count
local nats = require("nats")
function OnMessage(subject, payload)
  nats.publish("cluster.executions", payload .. "@" .. os.getenv("INSTANCE"))
  return payload
end
"""

LOCKED_SCRIPT = """--* subject: cluster.locked
--* name: locked
--* lock: true
local nats = require("nats")
function OnMessage(subject, payload)
  -- Requests, not publishes: each event has reached the test before the script goes on.
  assert(nats.request("cluster.events", "start " .. payload, 5))
  os.execute("sleep 0.1")
  assert(nats.request("cluster.events", "end " .. payload, 5))
  return payload
end
"""

HOT_SCRIPT = """--* subject: cluster.hot
--* name: hot
function OnMessage(subject, payload)
  return "hot " .. payload
end
"""


class Instance:
    """One daemon process of the cluster."""

    def __init__(self, daemon: Daemon, http_port: int) -> None:
        self.daemon = daemon
        self.http_port = http_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


async def start_instance(number: int, nats_server: NatsServer, etcd_server: EtcdServer) -> Instance:
    port = free_port()
    command = ("-backend", "etcd", "-etcdurl", etcd_server.url, "-natsurl", nats_server.url)
    options = ("-port", str(port), "-http-host", "127.0.0.1", "-grace-period", "2s")
    daemon = await start_daemon(*command, *options, env=command_env(INSTANCE=str(number)), ready=None)
    await daemon.wait_for_log("Starting HTTP server")

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await wait_until(listening, 10)
    return Instance(daemon, port)


@pytest.fixture
async def cluster(nats_server: NatsServer, etcd_server: EtcdServer) -> AsyncIterator[list[Instance]]:
    instances = list(await asyncio.gather(*(start_instance(i, nats_server, etcd_server) for i in range(INSTANCES))))
    try:
        yield instances
    finally:
        for instance in instances:
            if instance.daemon.proc.returncode is None:
                await instance.daemon.stop()


async def put_scripts(etcd_server: EtcdServer, *sources: str) -> None:
    async with open_store(Settings(backend="etcd", etcd_endpoints=(etcd_server.url,))) as store:
        for source in sources:
            await store.put_script(parse_script(source))


def reply_payload(data: bytes) -> bytes:
    """The first result's payload of a Reply, failing the test on an error."""
    reply = json.loads(data)
    result = reply["script_result"][0]
    assert result["error"] == "", reply
    return base64.b64decode(result["payload"])


async def wait_until(predicate: Any, timeout_s: float) -> None:
    """Poll `predicate` (a function returning a bool or an awaitable of one) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout_s}s")
        await asyncio.sleep(0.02)


async def collect(nc: NatsClient, subject: str) -> tuple[list[bytes], Any]:
    """Subscribe to `subject`; returns the list its messages are appended to, and the subscription."""
    received: list[bytes] = []

    async def append(msg: Any) -> None:
        received.append(msg.data)

    return received, await nc.subscribe(subject, cb=append)


async def answers(nc: NatsClient, subject: str) -> bool:
    with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
        await nc.request(subject, b"ping", timeout=0.5)
        return True
    return False


async def bounded(jobs: list[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)


async def counting(nc: NatsClient, etcd_server: EtcdServer) -> tuple[list[bytes], Any]:
    """Serve COUNT_SCRIPT on the cluster; returns the executions it reports from now on, and their subscription."""
    executions, sub = await collect(nc, "cluster.executions")
    await put_scripts(etcd_server, COUNT_SCRIPT)
    await wait_until(lambda: answers(nc, "cluster.count"), 5)
    await nc.flush()
    executions.clear()
    return executions, sub


async def test_each_message_runs_once_across_the_cluster(
    cluster: list[Instance], etcd_server: EtcdServer, nc: NatsClient
) -> None:
    executions, sub = await counting(nc, etcd_server)

    ids = [f"m{i}".encode() for i in range(REQUESTS)]
    replies = await bounded([nc.request("cluster.count", i, timeout=10) for i in ids], IN_FLIGHT)
    assert [reply_payload(r.data) for r in replies] == ids

    await wait_until(lambda: len(executions) >= REQUESTS, 5)
    await asyncio.sleep(0.2)  # a duplicate would arrive now
    await sub.unsubscribe()
    ran = [e.split(b"@") for e in executions]
    assert sorted(i for i, _ in ran) == sorted(ids)  # every message once: none lost, none twice
    assert {n for _, n in ran} == {str(i).encode() for i in range(INSTANCES)}  # all instances worked


async def test_the_others_carry_on_when_an_instance_dies(
    cluster: list[Instance], etcd_server: EtcdServer, nc: NatsClient
) -> None:
    executions, sub = await counting(nc, etcd_server)

    done = 0

    async def request(payload: bytes) -> bytes:
        nonlocal done
        try:
            reply = await nc.request("cluster.count", payload, timeout=3)
        finally:
            done += 1
        if done == REQUESTS // 3:
            # The instance dies whole: its supervisor and its worker together (as a container or a unit does).
            supervisor = cluster[0].daemon.proc.pid
            for pid in (supervisor, *Proc(supervisor).children()):
                os.kill(pid, signal.SIGKILL)
        return reply_payload(reply.data)

    ids = [f"k{i}".encode() for i in range(REQUESTS)]
    outcomes = await bounded([request(i) for i in ids], IN_FLIGHT)
    answered = [o for o in outcomes if isinstance(o, bytes)]
    lost = [o for o in outcomes if not isinstance(o, bytes)]
    # Core NATS is at-most-once: only what was in flight on the dead instance may go unanswered.
    assert all(isinstance(o, nats.errors.TimeoutError) for o in lost), lost
    assert len(lost) <= IN_FLIGHT
    assert len(set(answered)) == len(answered)

    await asyncio.sleep(0.3)
    await sub.unsubscribe()
    executed = [e.split(b"@")[0] for e in executions]
    assert len(set(executed)) == len(executed)  # nothing ran twice
    assert set(answered) <= set(executed)
    # After the kill the survivors took everything.
    late = [e for e in executions if int(e.split(b"@")[0][1:]) > REQUESTS // 3 + IN_FLIGHT]
    assert late and all(not e.endswith(b"@0") for e in late)


async def test_locked_scripts_never_overlap_across_instances(
    cluster: list[Instance], etcd_server: EtcdServer, nc: NatsClient
) -> None:
    events: list[str] = []

    async def record(msg: Any) -> None:
        events.append(msg.data.decode())
        await msg.respond(b"ok")

    await nc.subscribe("cluster.events", cb=record)
    await put_scripts(etcd_server, LOCKED_SCRIPT)
    await wait_until(lambda: answers(nc, "cluster.locked"), 10)
    events.clear()

    ids = [f"l{i}".encode() for i in range(12)]
    replies = await asyncio.gather(*(nc.request("cluster.locked", i, timeout=20) for i in ids))
    assert sorted(reply_payload(r.data) for r in replies) == sorted(ids)
    # Strictly start/end pairs of the same message, one after the other.
    assert len(events) == 2 * len(ids)
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start.startswith("start ") and end == "end " + start.removeprefix("start ")


async def test_scripts_added_with_msgscriptcli_appear_on_every_instance(
    cluster: list[Instance], etcd_server: EtcdServer, nc: NatsClient, tmp_path: Path
) -> None:
    script = tmp_path / "hot.lua"
    script.write_text(HOT_SCRIPT)
    cli = str(Path(sys.executable).parent / "msgscriptcli")

    async def msgscriptcli(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            cli, "-e", etcd_server.url, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()

    async def served_everywhere(expected_status: int) -> bool:
        async with aiohttp.ClientSession() as http:
            for instance in cluster:
                async with http.post(f"{instance.url}/cluster.hot", data=b"x") as response:
                    if response.status != expected_status:
                        return False
        return True

    assert await served_everywhere(404)
    await msgscriptcli("add", str(script))
    await wait_until(lambda: served_everywhere(200), VISIBLE_WITHIN_S)
    assert reply_payload((await nc.request("cluster.hot", b"x", timeout=5)).data) == b"hot x"

    await msgscriptcli("rm", "-s", "cluster.hot", "-n", "hot")
    await wait_until(lambda: served_everywhere(404), VISIBLE_WITHIN_S)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("cluster.hot", b"x", timeout=5)


@pytest.fixture(autouse=True)
def _no_inherited_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCD_ENDPOINTS", raising=False)
    assert "ETCD_ENDPOINTS" not in os.environ
