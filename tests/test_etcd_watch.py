"""Watches against a real etcd: changes in order, replay from a revision, compaction, a broken or silent
stream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import aetcd
import pytest

from msgscript.errors import EtcdUnavailable
from msgscript.etcd_client import EtcdClient
from msgscript.etcd_watch import Watch, WatchCompacted
from tests.servers import EtcdServer, free_port, run_etcd

T = 5.0


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


async def test_watch_delivers_puts_and_deletes_in_order(etcd: EtcdClient) -> None:
    async with await etcd.watch("w/", prefix=True, timeout_s=T) as watch:
        assert isinstance(watch, Watch)
        put = await etcd.put("w/a", "1", timeout_s=T)
        await etcd.put("elsewhere", "x", timeout_s=T)
        deleted = await etcd.delete("w/a", timeout_s=T)
        events = []
        while len(events) < 2:
            batch = await asyncio.wait_for(watch.next(), T)
            events.extend(batch.events)
    assert [(e.deleted, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
        (False, b"w/a", b"1", put),
        (True, b"w/a", b"", deleted),
    ]


async def test_watch_replays_from_a_start_revision(etcd: EtcdClient) -> None:
    first = await etcd.put("w/a", "1", timeout_s=T)
    second = await etcd.put("w/a", "2", timeout_s=T)
    async with await etcd.watch("w/a", start_revision=first + 1, timeout_s=T) as watch:
        batch = await asyncio.wait_for(watch.next(), T)
    assert [(e.kv.value, e.kv.mod_revision) for e in batch.events] == [(b"2", second)]
    assert batch.revision == second


async def test_watch_from_a_compacted_revision_raises(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    for value in "123":
        latest = await etcd.put("w/a", value, timeout_s=T)
    port = int(etcd_server.endpoint.rsplit(":", 1)[1])
    async with aetcd.Client(host="127.0.0.1", port=port) as plain:
        await plain.compact(latest)
    with pytest.raises(WatchCompacted) as info:
        async with await etcd.watch("w/", prefix=True, start_revision=2, timeout_s=T) as watch:
            await asyncio.wait_for(watch.next(), T)
    assert info.value.compact_revision == latest
    assert str(info.value) == f"etcd has compacted its history up to revision {latest}"


async def test_watch_ends_with_unavailable_when_etcd_stops() -> None:
    port = free_port()
    async with EtcdClient([f"127.0.0.1:{port}"]) as client:
        async with run_etcd(client_port=port):
            watch = await client.watch("w/", prefix=True, timeout_s=T)
        async with watch:
            with pytest.raises(EtcdUnavailable, match=f"etcd at 127.0.0.1:{port} is unreachable: "):
                await asyncio.wait_for(watch.next(), T)


async def test_watch_on_an_unreachable_etcd_fails_in_time() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    async with EtcdClient([endpoint]) as client:
        with pytest.raises(EtcdUnavailable, match=f"etcd at {endpoint} is unreachable: "):
            await client.watch("w/", prefix=True, timeout_s=2)


async def test_a_quiet_watch_stays_open(etcd: EtcdClient) -> None:
    # Asked every 0.2 s whether the stream is alive, etcd answers and the watch carries on.
    async with await etcd.watch("w/", prefix=True, timeout_s=T, idle_s=0.2) as watch:
        waiting = asyncio.create_task(watch.next())
        await asyncio.sleep(1.2)
        assert not waiting.done()
        revision = await etcd.put("w/late", "x", timeout_s=T)
        batch = await asyncio.wait_for(waiting, T)
    assert batch.revision == revision


async def test_a_watch_notices_a_silent_etcd(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    async with await etcd.watch("w/", prefix=True, timeout_s=0.5, idle_s=0.5) as watch:
        etcd_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="the watch stream got no answer within 500ms"):
                await asyncio.wait_for(watch.next(), T)
            assert time.monotonic() - started < 3
        finally:
            etcd_server.process.send_signal(signal.SIGCONT)
