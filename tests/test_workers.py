"""`-workers N`: several worker processes under one supervisor, sharing the queue group and the HTTP port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest

from msgscript.cli.server import core_count
from tests.processes import Daemon, Proc, followed_daemon, run_msgscript, run_msgscriptcli
from tests.servers import NatsServer, free_port, run_etcd
from tests.test_isolation import settled

WHICH = """--* subject: funcs.which
--* name: which
function OnMessage(subject, payload)
    return os.getenv("MSGSCRIPT_WORKER")
end
"""
# Says it started (so that the test knows the run is in flight), then works for a while.
SLOW = """--* subject: funcs.slowwhich
--* name: slowwhich
--* timeout: 20s
local nats = require("nats")
function OnMessage(subject, payload)
    nats.publish("workers.started", os.getenv("MSGSCRIPT_WORKER"))
    os.execute("sleep 1")
    return "done by " .. os.getenv("MSGSCRIPT_WORKER")
end
"""
LOCKED = """--* subject: funcs.locked
--* name: locked
--* lock: true
function OnMessage(subject, payload)
    return os.getenv("MSGSCRIPT_WORKER")
end
"""
# Stuck in one C call past its deadline: only a new process gets the thread back.
STUCK = """--* subject: funcs.stuck
--* name: stuck
--* timeout: 1s
function OnMessage(subject, payload)
    for line in io.lines("/dev/zero") do end
    return "x"
end
"""
READY = re.compile(r"worker pid=(\d+) index=(\d+) ready")


def ready_workers(daemon: Daemon) -> dict[int, int]:
    """The pid of the latest ready worker of each index."""
    return {int(index): int(pid) for pid, index in READY.findall(daemon.log)}


def answer_of(body: bytes) -> str:
    """The payload of the one result of a gateway or NATS reply."""
    reply = json.loads(body)
    [result] = reply["script_result"] if isinstance(reply, dict) else reply
    assert result["error"] == "", result
    return base64.b64decode(result["payload"]).decode()


async def http_answers(port: int, subject: str, count: int) -> list[str]:
    """`count` requests, each on a connection of its own (the kernel spreads connections, not requests)."""
    answers = []
    for _ in range(count):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(f"http://127.0.0.1:{port}/{subject}", data=b"x") as resp,
        ):
            assert resp.status == 200
            answers.append(answer_of(await resp.read()))
    return answers


async def nats_answers(url: str, subject: str, count: int) -> list[str]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        replies = await asyncio.gather(*(nc.request(subject, b"x", timeout=10) for _ in range(count)))
    finally:
        await nc.close()
    return [answer_of(reply.data) for reply in replies]


@pytest.fixture
async def two_workers(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Daemon, int]]:
    (tmp_path / "which.lua").write_text(WHICH)
    (tmp_path / "slow.lua").write_text(SLOW)
    (tmp_path / "stuck.lua").write_text(STUCK)
    port = free_port()
    args = ("-script", str(tmp_path), "-natsurl", nats_server.url, "-port", str(port), "-http-host", "127.0.0.1")
    async with followed_daemon(*args, "-workers", "2") as daemon:
        assert await settled(lambda: len(ready_workers(daemon)) == 2, within_s=20), daemon.log
        yield daemon, port


async def test_two_workers_serve_nats_and_http(two_workers: tuple[Daemon, int], nats_server: NatsServer) -> None:
    daemon, port = two_workers
    pids = ready_workers(daemon)
    # Each worker's own lines say which worker wrote them; the supervisor's do not.
    watching = re.findall(r"msg=\"Starting message watch...\"( worker=\d)?", daemon.log)
    assert sorted(watching) == [" worker=0", " worker=1"], daemon.log
    assert re.search(r"worker pid=\d+ index=0 ready\"$", daemon.log, re.MULTILINE), daemon.log
    assert sorted(Proc(daemon.proc.pid).children()) == sorted(pids.values())
    # Both are in the queue group, and both accept on the port.
    assert set(await nats_answers(nats_server.url, "funcs.which", 40)) == {"0", "1"}
    assert set(await http_answers(port, "funcs.which", 40)) == {"0", "1"}
    # A probe or a scrape reaches one worker; the answer says which, and the series are labelled with it.
    seen: set[str] = set()
    for _ in range(40):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200 and await resp.text() == "ready"
                seen.add(resp.headers["Msgscript-Worker"])
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                worker = resp.headers["Msgscript-Worker"]
                text = await resp.text()
        assert f'msgscript_in_flight{{worker="{worker}"}}' in text
        assert f'process_resident_memory_bytes{{worker="{worker}"}}' in text
        assert not re.search(r"^msgscript_\w+ ", text, re.MULTILINE), "a series without the worker label"
    assert seen == {"0", "1"}


async def test_a_killed_worker_is_restarted_while_the_other_serves(
    two_workers: tuple[Daemon, int], nats_server: NatsServer
) -> None:
    daemon, port = two_workers
    killed = ready_workers(daemon)[0]
    os.kill(killed, signal.SIGKILL)
    assert await settled(lambda: f"worker pid={killed} index=0 exited unexpectedly (signal 9)" in daemon.log)
    # Until index 0 is back, every connection and every message goes to index 1.
    if ready_workers(daemon)[0] == killed:
        assert set(await http_answers(port, "funcs.which", 10)) == {"1"}
        assert set(await nats_answers(nats_server.url, "funcs.which", 10)) == {"1"}
    assert await settled(lambda: ready_workers(daemon)[0] != killed, within_s=20), daemon.log
    assert "index=0 exited unexpectedly (signal 9); starting another in 1s" in daemon.log
    assert sorted(Proc(daemon.proc.pid).children()) == sorted(ready_workers(daemon).values())
    assert set(await http_answers(port, "funcs.which", 40)) == {"0", "1"}
    assert set(await nats_answers(nats_server.url, "funcs.which", 40)) == {"0", "1"}


async def test_a_stuck_worker_is_replaced_in_its_own_slot(
    two_workers: tuple[Daemon, int], nats_server: NatsServer
) -> None:
    daemon, port = two_workers
    before = ready_workers(daemon)
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        reply = await nc.request("funcs.stuck", b"x", timeout=10)
    finally:
        await nc.close()
    assert b"script timed out after 1s" in reply.data
    replaced = re.compile(r"worker pid=(\d+) index=(\d+) replaces pid=(\d+), which now drains")
    assert await settled(lambda: replaced.search(daemon.log) is not None, within_s=20), daemon.log
    match = replaced.search(daemon.log)
    assert match is not None
    successor, index, old = int(match[1]), int(match[2]), int(match[3])
    # The successor took the stuck worker's index; the other worker was left alone.
    assert before[index] == old
    assert ready_workers(daemon) == {**before, index: successor}
    # The old worker drains, exits and is reaped.
    children = sorted(ready_workers(daemon).values())
    assert await settled(lambda: sorted(Proc(daemon.proc.pid).children()) == children, within_s=10)
    assert set(await http_answers(port, "funcs.which", 40)) == {"0", "1"}


async def test_sigterm_drains_every_worker_and_exits_zero(
    two_workers: tuple[Daemon, int], nats_server: NatsServer
) -> None:
    daemon, _ = two_workers
    workers = [Proc(pid) for pid in ready_workers(daemon).values()]
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        started = await nc.subscribe("workers.started")
        requests = [asyncio.ensure_future(nc.request("funcs.slowwhich", b"x", timeout=15)) for _ in range(8)]
        # Runs in flight on both workers before the signal.
        running: set[str] = set()
        while running != {"0", "1"}:
            running.add((await started.next_msg(timeout=10)).data.decode())
        daemon.proc.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*requests)
    finally:
        await nc.close()
    assert {answer_of(reply.data) for reply in replies} == {"done by 0", "done by 1"}
    assert await asyncio.wait_for(daemon.proc.wait(), 30) == 0
    assert not any(worker.alive() for worker in workers)
    for worker in workers:
        assert await settled(lambda pid=worker.pid: f"worker pid={pid} index=" in daemon.log)
    assert daemon.log.count("exited (status 0)") == 2, daemon.log


async def test_auto_starts_one_worker_per_core(nats_server: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "which.lua").write_text(WHICH)
    args = ("-script", str(tmp_path), "-natsurl", nats_server.url, "-port", str(free_port()), "-http-host", "127.0.0.1")
    async with followed_daemon(*args, "-workers", "auto") as daemon:
        cores = core_count()
        if cores == 1:
            assert await settled(lambda: "worker pid=" in daemon.log and " ready" in daemon.log, within_s=20)
            assert "index=" not in daemon.log
        else:
            assert await settled(lambda: len(ready_workers(daemon)) == cores, within_s=30), daemon.log
        assert len(Proc(daemon.proc.pid).children()) == cores


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
async def test_invalid_worker_counts_are_usage_errors(value: str) -> None:
    code, _, err = await run_msgscript("-workers", value, "-port", str(free_port()))
    assert code == 2
    assert f"Invalid value for '-workers' / '--workers': {value!r} is not a positive number of workers or auto" in err


async def test_workers_with_the_etcd_backend_and_the_cluster_lock(nats_server: NatsServer, tmp_path: Path) -> None:
    async with run_etcd() as etcd:
        script = tmp_path / "locked.lua"
        script.write_text(LOCKED)
        code, _, err = await run_msgscriptcli("-e", etcd.url, "add", script)
        assert code == 0, err
        port = free_port()
        args = ("-backend", "etcd", "-etcdurl", etcd.url, "-natsurl", nats_server.url, "-port", str(port))
        async with followed_daemon(*args, "-http-host", "127.0.0.1", "-workers", "2") as daemon:
            assert await settled(lambda: len(ready_workers(daemon)) == 2, within_s=20), daemon.log
            # Each worker loaded the store; the lock, per script, is taken by one run at a time across both.
            assert set(await nats_answers(nats_server.url, "funcs.locked", 40)) == {"0", "1"}
            assert set(await http_answers(port, "funcs.locked", 40)) == {"0", "1"}
