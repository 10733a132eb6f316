"""The supervisor: a worker that dies is started again, and the daemon's parts go away together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest

from tests.processes import Daemon, Proc, followed_daemon, run_msgscript
from tests.servers import NatsServer, free_port, run_etcd
from tests.test_isolation import HELLO, settled


@pytest.fixture
async def daemon(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Daemon, int]]:
    (tmp_path / "hello.lua").write_text(HELLO)
    port = free_port()
    args = ("-script", str(tmp_path), "-natsurl", nats_server.url, "-port", str(port), "-http-host", "127.0.0.1")
    async with followed_daemon(*args) as daemon:
        yield daemon, port


def worker_pids(daemon: Daemon) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker pid=(\d+) ready", daemon.log)]


async def hello_over_both(nats_url: str, port: int) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        msg = await nc.request("funcs.hello", b"again", timeout=5)
        assert b"UHJvY2Vzc2Vk" in msg.data
    finally:
        await nc.close()
    async with aiohttp.ClientSession() as http, http.post(f"http://127.0.0.1:{port}/funcs.hello", data=b"x") as resp:
        assert resp.status == 200


async def test_a_worker_that_dies_is_started_again(daemon: tuple[Daemon, int], nats_server: NatsServer) -> None:
    proc, port = daemon
    assert await settled(lambda: len(worker_pids(proc)) == 1)
    first = worker_pids(proc)[0]
    os.kill(first, signal.SIGKILL)
    assert await settled(lambda: len(worker_pids(proc)) == 2, within_s=5)
    assert f"worker pid={first} exited unexpectedly (signal 9); starting another in 1s" in proc.log
    # The new worker serves NATS and the same HTTP port (the supervisor holds the listening socket).
    await hello_over_both(nats_server.url, port)
    assert Proc(proc.proc.pid).children() == [worker_pids(proc)[1]]


async def test_restarts_back_off(daemon: tuple[Daemon, int]) -> None:
    proc, _ = daemon
    assert await settled(lambda: len(worker_pids(proc)) == 1)
    started = time.monotonic()
    for count in (2, 3):
        os.kill(worker_pids(proc)[-1], signal.SIGKILL)
        assert await settled(lambda count=count: len(worker_pids(proc)) == count, within_s=6)
    # One second before the first restart, two before the second.
    assert time.monotonic() - started >= 3
    assert "starting another in 2s" in proc.log


async def test_killing_the_supervisor_takes_the_worker_along(daemon: tuple[Daemon, int]) -> None:
    proc, _ = daemon
    assert await settled(lambda: len(worker_pids(proc)) == 1)
    worker = Proc(worker_pids(proc)[0])
    proc.proc.kill()
    await proc.proc.wait()
    assert await settled(lambda: not worker.alive(), within_s=3)


async def test_sigterm_stops_everything_with_status_zero(daemon: tuple[Daemon, int]) -> None:
    proc, _ = daemon
    assert await settled(lambda: len(worker_pids(proc)) == 1)
    worker = Proc(worker_pids(proc)[0])
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.proc.wait(), 15) == 0
    assert not worker.alive()
    assert f"worker pid={worker.pid} exited (status 0)" in proc.log


async def test_a_worker_that_cannot_start_is_not_started_again(nats_server: NatsServer, tmp_path: Path) -> None:
    code, _, err = await run_msgscript("-backend", "nosuch", "-natsurl", nats_server.url, "-port", str(free_port()))
    assert code == 1
    assert "failed to initialize the script store: Unknown backend: nosuch" in err
    assert "starting another" not in err and err.count("started worker") == 1


async def test_a_restarted_worker_that_cannot_start_logs_why_and_is_tried_again(nats_server: NatsServer) -> None:
    etcd_running = contextlib.AsyncExitStack()
    etcd = await etcd_running.enter_async_context(run_etcd())
    try:
        args = ("-backend", "etcd", "-etcdurl", etcd.url, "-natsurl", nats_server.url, "-port", str(free_port()))
        async with followed_daemon(*args) as daemon:
            assert await settled(lambda: len(worker_pids(daemon)) == 1)
            await etcd_running.aclose()
            os.kill(worker_pids(daemon)[0], signal.SIGKILL)
            assert await settled(lambda: "exited unexpectedly (status 1); starting another" in daemon.log, within_s=20)
            # The killed worker was restarted after 1 s; one that never became ready does not reset the backoff.
            assert "exited unexpectedly (status 1); starting another in 2s" in daemon.log, daemon.log
    finally:
        await etcd_running.aclose()
    # The supervisor logs the reason the worker gave, as the worker's own fatal line would have read.
    failure = f"failed to initialize the script store: etcd at {etcd.endpoint} is unreachable: "
    lines = [line for line in daemon.log.splitlines() if failure in line]
    assert lines and all("level=fatal" in line for line in lines), daemon.log
    assert "Traceback" not in daemon.log


async def test_the_port_is_checked_before_any_worker_starts(nats_server: NatsServer, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run_msgscript(
            "-script", str(tmp_path), "-natsurl", nats_server.url, "-port", str(port), "-http-host", "127.0.0.1"
        )
    assert code == 1
    assert f"failed to start the HTTP server on 127.0.0.1:{port}" in err
    assert "started worker" not in err
