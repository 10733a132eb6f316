"""The daemon's etcd client against a real etcd: key operations, ranges, leases, failover, outages (watches are
in test_etcd_watch.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from msgscript.config import Settings
from msgscript.errors import EtcdError, EtcdUnavailable
from msgscript.etcd_client import Endpoint, EtcdClient, open_etcd, parse_endpoint, parse_endpoints, prefix_range
from msgscript.services import open_services
from tests.servers import EtcdServer, free_port, run_etcd

T = 5.0


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """A TCP port that takes connections and never says a word (a hung or firewalled etcd).

    The socket listens but never accepts: the kernel completes the handshakes and nothing answers.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def refused_endpoint() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


async def test_put_then_get(etcd: EtcdClient) -> None:
    revision = await etcd.put("msgscript/test/put", "foobar", timeout_s=T)
    kv = await etcd.get("msgscript/test/put", timeout_s=T)
    assert kv is not None
    assert (kv.key, kv.value, kv.version, kv.lease) == (b"msgscript/test/put", b"foobar", 1, 0)
    assert kv.create_revision == kv.mod_revision == revision


async def test_put_overwrites_and_keeps_bytes(etcd: EtcdClient) -> None:
    data = b"\x00\xff not utf-8"
    await etcd.put(b"k", b"first", timeout_s=T)
    await etcd.put(b"k", data, timeout_s=T)
    kv = await etcd.get(b"k", timeout_s=T)
    assert kv is not None and kv.value == data and kv.version == 2 and kv.mod_revision > kv.create_revision


async def test_get_missing_key_is_none(etcd: EtcdClient) -> None:
    assert await etcd.get("msgscript/missing", timeout_s=T) is None


async def test_get_prefix_returns_keys_in_key_order(etcd: EtcdClient) -> None:
    for key in ("msgscript/b", "msgscript/a/2", "msgscript/a/1", "msgscript/a", "msgscripts", "other"):
        await etcd.put(key, key.upper(), timeout_s=T)
    found = await etcd.get_prefix("msgscript/", timeout_s=T)
    assert [(kv.key, kv.value) for kv in found] == [
        (b"msgscript/a", b"MSGSCRIPT/A"),
        (b"msgscript/a/1", b"MSGSCRIPT/A/1"),
        (b"msgscript/a/2", b"MSGSCRIPT/A/2"),
        (b"msgscript/b", b"MSGSCRIPT/B"),
    ]
    assert await etcd.get_prefix("nothing/", timeout_s=T) == []
    assert len(await etcd.get_prefix("", timeout_s=T)) == 6


async def test_get_prefix_of_high_bytes(etcd: EtcdClient) -> None:
    await etcd.put(b"z\xff\xff", b"1", timeout_s=T)
    await etcd.put(b"z\xff\xff\x01", b"2", timeout_s=T)
    await etcd.put(b"y", b"3", timeout_s=T)
    assert [kv.value for kv in await etcd.get_prefix(b"z\xff\xff", timeout_s=T)] == [b"1", b"2"]
    assert [kv.value for kv in await etcd.get_prefix(b"\xff", timeout_s=T)] == []


def test_prefix_range() -> None:
    assert prefix_range(b"msgscript/") == (b"msgscript/", b"msgscript0")
    assert prefix_range(b"a\xff") == (b"a\xff", b"b")
    assert prefix_range(b"\xff\xff") == (b"\xff\xff", b"\0")
    assert prefix_range(b"") == (b"\0", b"\0")


async def test_delete(etcd: EtcdClient) -> None:
    written = await etcd.put("msgscript/test/delete", "x", timeout_s=T)
    deleted = await etcd.delete("msgscript/test/delete", timeout_s=T)
    assert deleted == written + 1
    assert await etcd.get("msgscript/test/delete", timeout_s=T) is None
    assert await etcd.delete("msgscript/test/delete", timeout_s=T) is None


async def test_delete_prefix(etcd: EtcdClient) -> None:
    for key in ("msgscript/test/1", "msgscript/test/2", "msgscript/tests"):
        await etcd.put(key, "x", timeout_s=T)
    assert await etcd.delete_prefix("msgscript/test/", timeout_s=T) == 2
    assert [kv.key for kv in await etcd.get_prefix("msgscript/", timeout_s=T)] == [b"msgscript/tests"]


async def test_etcd_refusal_keeps_etcds_text(etcd: EtcdClient) -> None:
    with pytest.raises(EtcdError) as info:
        await etcd.put("", "x", timeout_s=T)
    assert not isinstance(info.value, EtcdUnavailable)
    assert str(info.value) == "etcdserver: key is not provided"


async def test_refused_endpoint_is_a_clear_error() -> None:
    endpoint = refused_endpoint()
    async with EtcdClient([endpoint]) as client:
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            await client.get("k", timeout_s=3)
        assert time.monotonic() - started < 3
    assert str(info.value).startswith(f"etcd at {endpoint} is unreachable: ")
    assert "Connection refused" in str(info.value)
    assert info.value.endpoints == (endpoint,)


async def test_silent_endpoint_fails_within_the_timeout() -> None:
    with silent_endpoint() as endpoint:
        async with EtcdClient([endpoint]) as client:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable) as info:
                await client.put("k", "v", timeout_s=0.5)
            assert time.monotonic() - started < 3
    # Either our timeout or gRPC's own handshake timeout ends it, whichever comes first.
    assert str(info.value).startswith(f"etcd at {endpoint} is unreachable: ")


async def test_fails_over_from_a_refused_endpoint(etcd_server: EtcdServer) -> None:
    async with EtcdClient([refused_endpoint(), etcd_server.url]) as client:
        await client.put("msgscript/failover", "ok", timeout_s=T)
        kv = await client.get("msgscript/failover", timeout_s=T)
    assert kv is not None and kv.value == b"ok"


async def test_fails_over_from_a_silent_endpoint(etcd_server: EtcdServer) -> None:
    with silent_endpoint() as silent:
        async with EtcdClient([silent, etcd_server.endpoint], connect_timeout_s=0.3) as client:
            await client.put("msgscript/failover", "ok", timeout_s=T)
            kv = await client.get("msgscript/failover", timeout_s=T)
    assert kv is not None and kv.value == b"ok"


async def test_every_endpoint_down_names_them_all() -> None:
    first, second = refused_endpoint(), refused_endpoint()
    async with EtcdClient([f"{first},{second}"]) as client:
        with pytest.raises(EtcdUnavailable) as info:
            await client.get("k", timeout_s=3)
    assert str(info.value).startswith(f"no etcd endpoint is reachable: {first}: ")
    assert f"; {second}: " in str(info.value)
    assert info.value.endpoints == (first, second)


async def test_reconnects_after_an_etcd_restart() -> None:
    port = free_port()
    async with EtcdClient([f"127.0.0.1:{port}"]) as client:
        async with run_etcd(client_port=port):
            await client.put("k", "before", timeout_s=T)
        with pytest.raises(EtcdUnavailable):
            await client.get("k", timeout_s=T)
        async with run_etcd(client_port=port):
            # gRPC retries the connection on its own (backoff capped at 2 s); a fresh etcd has no data.
            deadline = time.monotonic() + 15
            while True:
                try:
                    await client.put("k", "after", timeout_s=T)
                    break
                except EtcdUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            kv = await client.get("k", timeout_s=T)
    assert kv is not None and kv.value == b"after" and kv.version == 1


async def test_opening_needs_no_etcd() -> None:
    settings = Settings(etcd_endpoints=(refused_endpoint(),))
    async with open_etcd(settings) as client:
        assert client.endpoints == settings.etcd_endpoints
    async with open_services(settings) as services:
        assert isinstance(services.etcd, EtcdClient)
        assert isinstance(services.http, aiohttp.ClientSession)


async def test_invalid_endpoint_fails_on_use_not_on_open() -> None:
    async with EtcdClient(["unix:///run/etcd.sock"]) as client:
        with pytest.raises(EtcdError, match="only http:// and https:// endpoints are supported"):
            await client.get("k", timeout_s=T)


async def test_closed_client_refuses_requests(etcd_server: EtcdServer) -> None:
    client = EtcdClient([etcd_server.url])
    await client.put("k", "v", timeout_s=T)
    await client.close()
    with pytest.raises(EtcdError, match="closed"):
        await client.get("k", timeout_s=T)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:2379", Endpoint("localhost", 2379)),
        ("http://127.0.0.1:12379", Endpoint("127.0.0.1", 12379)),
        ("http://127.0.0.1:12379/", Endpoint("127.0.0.1", 12379)),
        (" etcd ", Endpoint("etcd", 2379)),
        ("[::1]:2380", Endpoint("::1", 2380)),
        ("https://127.0.0.1:12379", Endpoint("127.0.0.1", 12379, secure=True)),
        ("HTTPS://etcd", Endpoint("etcd", 2379, secure=True)),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_endpoint_text() -> None:
    assert str(Endpoint("::1", 2379)) == "[::1]:2379"
    assert str(Endpoint("localhost", 2379)) == "localhost:2379"


@pytest.mark.parametrize("text", ["", "grpc://a:1", "unix:///run/etcd.sock", "a:port", "https://a:1/path"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="etcd endpoint"):
        parse_endpoint(text)


def test_parse_endpoints_splits_commas() -> None:
    assert parse_endpoints(["a:1,b:2", "", "c"]) == (Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 2379))
    with pytest.raises(ValueError, match="no etcd endpoint"):
        parse_endpoints([" , "])


# -- ranges with revisions, leases -----------------------------------------------------------------------


async def test_range_reports_the_revision_and_cluster(etcd: EtcdClient) -> None:
    await etcd.put("msgscript/a", "1", timeout_s=T)
    last = await etcd.put("msgscript/b", "2", timeout_s=T)
    await etcd.put("other", "3", timeout_s=T)
    found = await etcd.range("msgscript/", prefix=True, timeout_s=T)
    assert [kv.key for kv in found.kvs] == [b"msgscript/a", b"msgscript/b"]
    assert found.revision == last + 1 and found.count == 2 and found.cluster_id != 0
    counted = await etcd.range("msgscript/", prefix=True, count_only=True, timeout_s=T)
    assert (counted.kvs, counted.count, counted.revision) == ((), 2, found.revision)
    single = await etcd.range("msgscript/a", timeout_s=T)
    assert [kv.value for kv in single.kvs] == [b"1"]


async def test_range_newest_created_before_a_revision(etcd: EtcdClient) -> None:
    revisions = [await etcd.put(f"q/{name}", "", timeout_s=T) for name in ("c", "a", "b")]
    # Touching a key changes its mod revision, not its create revision.
    await etcd.put("q/c", "again", timeout_s=T)
    older = await etcd.range(
        "q/", prefix=True, sort_by="create", descending=True, limit=1, max_create_revision=revisions[2] - 1, timeout_s=T
    )
    assert [kv.key for kv in older.kvs] == [b"q/a"]
    first = await etcd.range("q/", prefix=True, sort_by="create", limit=1, timeout_s=T)
    assert [kv.key for kv in first.kvs] == [b"q/c"]
    none_older = await etcd.range("q/", prefix=True, max_create_revision=revisions[0] - 1, timeout_s=T)
    assert none_older.kvs == ()


async def test_lease_keys_live_and_die_with_it(etcd: EtcdClient) -> None:
    lease = await etcd.grant_lease(30, timeout_s=T)
    await etcd.put("leased", "x", lease=lease, timeout_s=T)
    kv = await etcd.get("leased", timeout_s=T)
    assert kv is not None and kv.lease == lease
    assert 0 < await etcd.keep_alive(lease, timeout_s=T) <= 30
    assert await etcd.revoke_lease(lease, timeout_s=T) is True
    assert await etcd.get("leased", timeout_s=T) is None
    assert await etcd.keep_alive(lease, timeout_s=T) == 0
    assert await etcd.revoke_lease(lease, timeout_s=T) is False


async def test_lease_expires_without_keep_alive(etcd: EtcdClient) -> None:
    lease = await etcd.grant_lease(1, timeout_s=T)
    await etcd.put("leased", "x", lease=lease, timeout_s=T)
    deadline = time.monotonic() + 10
    while await etcd.get("leased", timeout_s=T) is not None:
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.2)
    assert await etcd.keep_alive(lease, timeout_s=T) == 0


async def test_put_with_an_unknown_lease_keeps_etcds_text(etcd: EtcdClient) -> None:
    with pytest.raises(EtcdError, match="etcdserver: requested lease not found"):
        await etcd.put("k", "v", lease=12345, timeout_s=T)
