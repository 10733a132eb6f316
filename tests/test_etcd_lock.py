"""The cluster lock on a real etcd: the upstream key layout, exclusion, waiting, expiry, and `--* lock: true`."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from msgscript.errors import LockError
from msgscript.etcd_client import EtcdClient, KeyValue
from msgscript.etcd_lock import EtcdLock
from msgscript.locks import NoLock, lock_key
from msgscript.message import Reply
from msgscript.script import parse_script
from tests.conftest import DaemonFactory
from tests.servers import EtcdServer, free_port

T = 5.0
ROOT = Path(__file__).parent.parent


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


async def lock_keys(etcd: EtcdClient, key: str) -> list[KeyValue]:
    return await etcd.get_prefix(f"{key}/", timeout_s=T)


async def test_lock_key_is_the_upstream_prefix() -> None:
    assert lock_key("hello") == "hello_lock"
    assert lock_key("") == "_lock"
    async with NoLock().hold("x_lock", 0) as acquired:
        assert acquired is True


async def test_held_lock_is_a_leased_key_named_after_its_lease(etcd: EtcdClient) -> None:
    async with EtcdLock(etcd).hold("job_lock", T) as acquired:
        assert acquired is True
        (kv,) = await lock_keys(etcd, "job_lock")
        assert kv.key == f"job_lock/{kv.lease:x}".encode()
        assert kv.lease != 0 and kv.value == b""
        # The lease is kept alive past its 3 s TTL while held.
        await asyncio.sleep(4)
        assert await lock_keys(etcd, "job_lock") == [kv]
    assert await lock_keys(etcd, "job_lock") == []
    assert await etcd.keep_alive(kv.lease, timeout_s=T) == 0  # released means revoked


async def test_two_holders_exclude_each_other(etcd: EtcdClient) -> None:
    lock = EtcdLock(etcd)
    async with lock.hold("job_lock", T) as first:
        assert first is True
        started = time.monotonic()
        async with lock.hold("job_lock", 0.5) as second:
            assert second is False
        assert time.monotonic() - started >= 0.5
        # Another name is another lock; the timed-out waiter left nothing behind.
        async with lock.hold("other_lock", T) as other:
            assert other is True
        assert len(await lock_keys(etcd, "job_lock")) == 1
    async with lock.hold("job_lock", T) as again:
        assert again is True


async def test_waiter_proceeds_when_the_holder_releases(etcd: EtcdClient) -> None:
    lock = EtcdLock(etcd)
    events: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with lock.hold("job_lock", T) as acquired:
            assert acquired
            events.append("first in")
            holding.set()
            await release.wait()
            events.append("first out")

    async def waiter(name: str) -> None:
        async with lock.hold("job_lock", 10) as acquired:
            assert acquired
            events.append(f"{name} in")
            await asyncio.sleep(0.05)
            events.append(f"{name} out")

    first = asyncio.create_task(holder())
    await holding.wait()
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0.2)
    third = asyncio.create_task(waiter("third"))
    await asyncio.sleep(0.3)
    assert events == ["first in"]
    assert len(await lock_keys(etcd, "job_lock")) == 3
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second, third), T)
    # Served one at a time, in arrival order.
    assert events == ["first in", "first out", "second in", "second out", "third in", "third out"]


async def test_a_released_lock_is_released_on_errors_too(etcd: EtcdClient) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with EtcdLock(etcd).hold("job_lock", T):
            raise RuntimeError("boom")
    assert await lock_keys(etcd, "job_lock") == []


async def test_revoking_the_holders_lease_lets_the_waiter_in(
    etcd: EtcdClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgscript.etcd_lock")
    lock = EtcdLock(etcd)
    async with lock.hold("job_lock", T) as first:
        assert first
        (kv,) = await lock_keys(etcd, "job_lock")
        waiter = asyncio.create_task(_acquire_and_leave(lock, "job_lock", 10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert await etcd.revoke_lease(kv.lease, timeout_s=T)
        assert await asyncio.wait_for(waiter, T) is True
        await asyncio.sleep(1.5)  # the keeper notices at its next renewal
    assert "lock job_lock lost: its lease expired or was revoked" in caplog.text


async def _acquire_and_leave(lock: EtcdLock, key: str, timeout_s: float) -> bool:
    async with lock.hold(key, timeout_s) as acquired:
        return acquired


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from msgscript.etcd_lock import EtcdLock
    from msgscript.etcd_client import EtcdClient

    async def main() -> None:
        async with EtcdClient([sys.argv[1]]) as etcd:
            async with EtcdLock(etcd).hold("job_lock", 5) as acquired:
                print("held" if acquired else "not held", flush=True)
                await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_dead_holders_lock_expires(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, etcd_server.url, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"held\n"
    finally:
        proc.kill()
        await proc.wait()
    # The dead holder's key stays until its lease (TTL 3 s) expires; then the waiter gets the lock.
    assert len(await lock_keys(etcd, "job_lock")) == 1
    async with EtcdLock(etcd).hold("job_lock", 10) as acquired:
        assert acquired is True


async def test_unreachable_etcd_is_a_lock_error() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    async with EtcdClient([endpoint]) as etcd:
        with pytest.raises(LockError) as info:
            async with EtcdLock(etcd).hold("job_lock", T):
                pass
    assert str(info.value).startswith(f"failed to get lock on key job_lock: etcd at {endpoint} is unreachable: ")


# -- `--* lock: true` in a daemon ------------------------------------------------------------------

LOCKED = """--* subject: funcs.locked
--* name: locked
--* lock: true
--* timeout: {timeout}
function OnMessage(subject, payload) return "ran " .. payload end
"""


async def put_locked_script(etcd: EtcdClient, timeout: str) -> None:
    source = LOCKED.format(timeout=timeout)
    await etcd.put("msgscript/scripts/funcs.locked/locked", parse_script(source).to_json(), timeout_s=T)


async def result_of(nc: nats.NATS, subject: str, data: bytes) -> tuple[bytes | None, str]:
    msg = await nc.request(subject, data, timeout=10)
    reply = Reply.from_json(msg.data)
    assert reply.results is not None and len(reply.results) == 1, reply
    return reply.results[0].payload, reply.results[0].error


async def test_locked_script_waits_for_the_lock(
    make_daemon: DaemonFactory, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await put_locked_script(etcd, "5s")
    async with make_daemon(backend="etcd", etcd_endpoints=(etcd_server.url,)):
        assert await result_of(nc, "funcs.locked", b"free") == (b"ran free", "")
        # Another instance holds the script's lock for a while: the message waits for it, then runs.
        async with EtcdLock(etcd).hold("locked_lock", T) as held:
            assert held
            request = asyncio.create_task(result_of(nc, "funcs.locked", b"waited"))
            await asyncio.sleep(0.5)
            assert not request.done()
            keys = await lock_keys(etcd, "locked_lock")
            assert len(keys) == 2 and all(kv.key == f"locked_lock/{kv.lease:x}".encode() for kv in keys)
        assert await asyncio.wait_for(request, T) == (b"ran waited", "")
        assert await lock_keys(etcd, "locked_lock") == []


async def test_locked_script_times_out_with_one_clear_reply(
    make_daemon: DaemonFactory, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await put_locked_script(etcd, "1s")
    async with make_daemon(backend="etcd", etcd_endpoints=(etcd_server.url,)):
        async with EtcdLock(etcd).hold("locked_lock", T) as held:
            assert held
            assert await result_of(nc, "funcs.locked", b"x") == (None, "failed to get lock: timed out after 1s")
            assert len(await lock_keys(etcd, "locked_lock")) == 1


async def test_file_backend_needs_no_etcd_for_locked_scripts(
    make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    scripts = tmp_path / "locked"
    scripts.mkdir()
    (scripts / "locked.lua").write_text(LOCKED.format(timeout="5s"))
    dead = f"127.0.0.1:{free_port()}"
    async with make_daemon(script_dir=str(scripts), etcd_endpoints=(dead,)):
        assert await result_of(nc, "funcs.locked", b"x") == (b"ran x", "")
