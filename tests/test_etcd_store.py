"""The etcd script store against a real etcd: the upstream layout, the watch, outages, and a daemon serving from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aetcd
import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.errors import ConfigError, EtcdUnavailable, LibraryNotFound, StoreError
from msgscript.etcd_client import EtcdClient
from msgscript.message import Reply
from msgscript.script import Script, parse_script
from msgscript.store.etcd_store import EtcdStore
from tests.conftest import DaemonFactory
from tests.processes import command_env, daemon_running, run_msgscript
from tests.servers import EtcdServer, NatsServer, free_port, run_etcd

T = 5.0
VISIBLE_WITHIN_S = 1.0
"""How soon a change made by another etcd client must be seen by the store."""

HELLO = """--* subject: funcs.hello
--* name: hello
function OnMessage(subject, payload) return "hello " .. payload end
"""
HELLO_PLUGIN = """--* subject: funcs.hello_plugin
--* name: hello_plugin
function OnMessage(subject, payload) return "plugin" end
"""
STAR = """--* subject: funcs.*
--* name: star
function OnMessage(subject, payload) return "star " .. subject end
"""
GREETER = """--* subject: funcs.greet
--* name: greet
--* require: greeting
function OnMessage(subject, payload) return Greeting(payload) end
"""
NOLIB = """--* subject: funcs.nolib
--* name: nolib
--* require: nosuchlib
function OnMessage() return "ok" end
"""


def script_value(source: str) -> bytes:
    """What msgscriptcli stores for a script file: the upstream Script JSON."""
    return parse_script(source).to_json()


def script_key(source: str) -> str:
    script = parse_script(source)
    return f"msgscript/scripts/{script.subject}/{script.name}"


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    """A plain etcd client, standing for any other tool writing to the store."""
    async with EtcdClient([etcd_server.url]) as client:
        yield client


def etcd_settings(endpoint: str) -> Settings:
    return Settings(backend="etcd", etcd_endpoints=(endpoint,))


# -- the store on its own --------------------------------------------------------------------------


async def test_open_store_loads_scripts_and_libraries(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
    await etcd.put(script_key(GREETER), script_value(GREETER), timeout_s=T)
    await etcd.put("msgscript/libs/greeting", "function Greeting(n) return 'hi ' .. n end", timeout_s=T)
    await etcd.put("msgscript/other/thing", "ignored", timeout_s=T)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        assert isinstance(store, EtcdStore)
        assert await store.subjects() == ["funcs.greet", "funcs.hello"]
        assert await store.script("funcs.hello", "hello") == parse_script(HELLO)
        assert await store.scripts_for("funcs.greet") == [parse_script(GREETER)]
        assert await store.load_libraries(["greeting"]) == ("function Greeting(n) return 'hi ' .. n end",)


async def test_lookup_is_by_exact_subject_or_wildcard(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    for source in (HELLO, HELLO_PLUGIN, STAR):
        await etcd.put(script_key(source), script_value(source), timeout_s=T)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        # Go's prefix read without a trailing slash also ran funcs.hello_plugin here.
        assert sorted(s.name for s in await store.scripts_for("funcs.hello")) == ["hello", "star"]
        assert [s.name for s in await store.scripts_for("funcs.other")] == ["star"]
        assert await store.scripts_for("other.subject") == []


async def test_the_key_names_the_subject_and_name(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    # msgscriptcli -s/-n writes the key from the flags and the JSON from the file headers.
    await etcd.put("msgscript/scripts/funcs.renamed/alias", script_value(HELLO), timeout_s=T)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        script = await store.script("funcs.renamed", "alias")
        assert script is not None and (script.subject, script.name) == ("funcs.renamed", "alias")
        assert await store.scripts_for("funcs.hello") == []


async def test_missing_library_has_the_go_text(etcd_server: EtcdServer) -> None:
    async with open_store(etcd_settings(etcd_server.url)) as store:
        with pytest.raises(LibraryNotFound) as info:
            await store.load_libraries(["nosuchlib"])
    assert str(info.value) == "key msgscript/libs/nosuchlib doesn't exists"
    assert info.value.name == "nosuchlib"


async def test_undecodable_values_are_logged_and_skipped(
    etcd: EtcdClient, etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="msgscript.store.etcd_store")
    await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
    await etcd.put("msgscript/scripts/funcs.bad/bad", "not json", timeout_s=T)
    await etcd.put("msgscript/scripts/funcs.noname", script_value(HELLO), timeout_s=T)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        assert await store.subjects() == ["funcs.hello"]
        assert "skipping msgscript/scripts/funcs.bad/bad: invalid script JSON" in caplog.text
        assert "ignoring msgscript/scripts/funcs.noname" in caplog.text
        # A good script overwritten with garbage is dropped; the store carries on.
        await etcd.put(script_key(HELLO), '{"content": 5}', timeout_s=T)
        await eventually(lambda: _no_script(store, "funcs.hello", "hello"), VISIBLE_WITHIN_S, "bad value dropped")
        assert "skipping msgscript/scripts/funcs.hello/hello: invalid script JSON" in caplog.text
        await etcd.put(script_key(STAR), script_value(STAR), timeout_s=T)
        await eventually(lambda: _has_script(store, "funcs.*", "star"), VISIBLE_WITHIN_S, "later script")


async def _has_script(store: EtcdStore, subject: str, name: str, content: str | None = None) -> bool:
    script = await store.script(subject, name)
    return script is not None and (content is None or script.content == content)


async def _no_script(store: EtcdStore, subject: str, name: str) -> bool:
    return await store.script(subject, name) is None


async def test_changes_by_any_client_are_followed(etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    async with open_store(etcd_settings(etcd_server.url)) as store:
        assert isinstance(store, EtcdStore)
        changes: list[list[str]] = []
        store.add_listener(lambda: changes.append([]))
        await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
        await eventually(lambda: _has_script(store, "funcs.hello", "hello"), VISIBLE_WITHIN_S, "added script")
        assert len(changes) == 1
        changed = HELLO.replace('"hello "', '"hey "')
        await etcd.put(script_key(HELLO), script_value(changed), timeout_s=T)
        new_content = parse_script(changed).content
        await eventually(lambda: _has_script(store, "funcs.hello", "hello", new_content), VISIBLE_WITHIN_S, "changed")
        assert len(changes) == 2
        # Rewriting the same value changes nothing: no listener call.
        await etcd.put(script_key(HELLO), script_value(changed), timeout_s=T)
        await etcd.put("msgscript/libs/greeting", "function Greeting(n) return 'hi ' .. n end", timeout_s=T)
        await eventually(lambda: _library_is(store, "greeting", "function Greeting(n) return 'hi ' .. n end"), 1, "lib")
        await etcd.put("msgscript/libs/greeting", "function Greeting(n) return 'yo ' .. n end", timeout_s=T)
        await eventually(lambda: _library_is(store, "greeting", "function Greeting(n) return 'yo ' .. n end"), 1, "lib")
        assert len(changes) == 2
        await etcd.delete(script_key(HELLO), timeout_s=T)
        await etcd.delete("msgscript/libs/greeting", timeout_s=T)
        await eventually(lambda: _no_script(store, "funcs.hello", "hello"), VISIBLE_WITHIN_S, "removed script")
        await eventually(lambda: _library_is(store, "greeting", None), VISIBLE_WITHIN_S, "removed library")
        assert len(changes) == 3
        assert await store.subjects() == []


async def _library_is(store: EtcdStore, name: str, source: str | None) -> bool:
    try:
        return await store.load_libraries([name]) == (source,)
    except LibraryNotFound:
        return source is None


async def test_writes_use_the_upstream_layout_and_are_visible_at_once(
    etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    script = parse_script(GREETER)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        await store.put_script(script)
        assert await store.script("funcs.greet", "greet") == script
        await store.put_library("greeting", "function Greeting(n) return n end")
        assert await store.load_libraries(["greeting"]) == ("function Greeting(n) return n end",)
        stored = await etcd.get("msgscript/scripts/funcs.greet/greet", timeout_s=T)
        assert stored is not None and stored.value == script.to_json()
        assert Script.from_json(stored.value) == script
        library = await etcd.get("msgscript/libs/greeting", timeout_s=T)
        assert library is not None and library.value == b"function Greeting(n) return n end"
        await store.delete_script("funcs.greet", "greet")
        await store.delete_library("greeting")
        assert await store.script("funcs.greet", "greet") is None
        assert await etcd.get_prefix("msgscript/", timeout_s=T) == []
        # Deleting what is not there is no error.
        await store.delete_script("funcs.greet", "greet")
        await store.delete_library("greeting")


async def test_listings_name_every_key_and_a_broken_one_can_be_removed(
    etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
    await etcd.put("msgscript/scripts/funcs.bad/bad", "not json", timeout_s=T)
    await etcd.put("msgscript/scripts/funcs.noname", script_value(HELLO), timeout_s=T)
    await etcd.put("msgscript/libs/handmade", "X = 1", timeout_s=T)
    async with open_store(etcd_settings(etcd_server.url)) as store:
        # Listed as the Go CLI lists keys, though never served: so that `msgscriptcli rm` can remove it.
        assert await store.script_names() == [("funcs.bad", "bad"), ("funcs.hello", "hello")]
        assert await store.script("funcs.bad", "bad") is None
        assert await store.library_names() == ["handmade"]
        assert await store.delete_script("funcs.bad", "bad") is True
        assert await etcd.get("msgscript/scripts/funcs.bad/bad", timeout_s=T) is None
        assert await store.script_names() == [("funcs.hello", "hello")]
        assert await store.delete_script("funcs.bad", "bad") is False


async def test_put_script_refuses_keys_it_cannot_form(etcd_server: EtcdServer) -> None:
    async with open_store(etcd_settings(etcd_server.url)) as store:
        with pytest.raises(StoreError, match="invalid subject 'a/b'"):
            await store.put_script(Script(subject="a/b", name="x"))
        with pytest.raises(StoreError, match="needs a name"):
            await store.put_script(Script(subject="a", name=""))


async def test_opening_with_etcd_down_is_one_clear_error() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        async with open_store(etcd_settings(endpoint)):
            pass
    assert str(info.value).startswith(f"etcd at {endpoint} is unreachable: ")
    assert time.monotonic() - started < 10


# -- outages ---------------------------------------------------------------------------------------


class Cable:
    """A TCP relay to etcd that the test can unplug (every connection dropped, new ones refused) and plug back."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def plug(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def unplug(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_writer)
        try:
            etcd_reader, etcd_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.add(etcd_writer)
        try:
            await asyncio.gather(self._pipe(client_reader, etcd_writer), self._pipe(etcd_reader, client_writer))
        finally:
            for writer in (client_writer, etcd_writer):
                writer.transport.abort()
                self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def cable(etcd_server: EtcdServer) -> AsyncIterator[Cable]:
    relay = Cable(int(etcd_server.endpoint.rsplit(":", 1)[1]))
    await relay.plug()
    try:
        yield relay
    finally:
        await relay.unplug()


async def test_resumes_after_a_cut_and_replays_what_it_missed(
    etcd: EtcdClient, cable: Cable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="msgscript.store.etcd_store")
    await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
    await etcd.put(script_key(STAR), script_value(STAR), timeout_s=T)
    async with open_store(etcd_settings(cable.endpoint)) as store:
        assert isinstance(store, EtcdStore)
        await cable.unplug()
        await etcd.put(script_key(GREETER), script_value(GREETER), timeout_s=T)
        await etcd.delete(script_key(STAR), timeout_s=T)
        await asyncio.sleep(0.3)
        # Cut off: still serving what it had.
        assert await store.subjects() == ["funcs.*", "funcs.hello"]
        with pytest.raises(StoreError, match=f"etcd at {cable.endpoint} is unreachable"):
            await store.put_library("x", "y")
        await cable.plug()
        await eventually(lambda: _subjects_are(store, ["funcs.greet", "funcs.hello"]), 10, "caught up")
    assert caplog.text.count("script store: etcd lost") == 1
    assert caplog.text.count("script store: etcd is back") == 1
    assert "reading everything" not in caplog.text


async def _subjects_are(store: EtcdStore, subjects: list[str]) -> bool:
    return await store.subjects() == subjects


async def test_reads_everything_again_when_the_history_was_compacted(
    etcd: EtcdClient, etcd_server: EtcdServer, cable: Cable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="msgscript.store.etcd_store")
    await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
    async with open_store(etcd_settings(cable.endpoint)) as store:
        await cable.unplug()
        await etcd.put(script_key(STAR), script_value(STAR), timeout_s=T)
        latest = await etcd.put("unrelated", "x", timeout_s=T)
        port = int(etcd_server.endpoint.rsplit(":", 1)[1])
        async with aetcd.Client(host="127.0.0.1", port=port) as plain:
            await plain.compact(latest)
        await cable.plug()
        await eventually(lambda: _subjects_are(store, ["funcs.*", "funcs.hello"]), 10, "caught up")
    assert f"etcd has compacted its history up to revision {latest}; reading everything again" in caplog.text


# -- a daemon serving from etcd --------------------------------------------------------------------


async def answer(nc: nats.NATS, subject: str, data: bytes = b"John") -> bytes | str:
    """The single result's payload, or its error text."""
    msg = await nc.request(subject, data, timeout=T)
    reply = Reply.from_json(msg.data)
    assert reply.results is not None and len(reply.results) == 1, reply
    result = reply.results[0]
    return result.error or (result.payload or b"")


async def answers_with(nc: nats.NATS, subject: str, expected: bytes | str) -> bool:
    try:
        return await answer(nc, subject) == expected
    except NoRespondersError:
        return False


async def has_no_responders(nc: nats.NATS, subject: str) -> bool:
    try:
        await nc.request(subject, b"", timeout=1)
    except NoRespondersError:
        return True
    except NatsTimeout:
        # A request that reaches the subscription just as it is removed is dropped with it: ask again.
        return False
    return False


async def test_daemon_follows_etcd_over_nats(
    make_daemon: DaemonFactory, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await etcd.put(script_key(NOLIB), script_value(NOLIB), timeout_s=T)
    async with make_daemon(backend="etcd", etcd_endpoints=(etcd_server.url,)):
        assert await answer(nc, "funcs.nolib") == (
            "failed to read librairies: key msgscript/libs/nosuchlib doesn't exists"
        )
        # Added by another client: subscribed and answering, without a restart.
        await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
        await eventually(lambda: answers_with(nc, "funcs.hello", b"hello John"), 2, "new script answers")
        await etcd.put(script_key(HELLO), script_value(HELLO.replace('"hello "', '"hey "')), timeout_s=T)
        await eventually(lambda: answers_with(nc, "funcs.hello", b"hey John"), 2, "changed script answers")
        # Libraries are hot too.
        await etcd.put(script_key(GREETER), script_value(GREETER), timeout_s=T)
        await etcd.put("msgscript/libs/greeting", "function Greeting(n) return 'hi ' .. n end", timeout_s=T)
        await eventually(lambda: answers_with(nc, "funcs.greet", b"hi John"), 2, "library")
        await etcd.put("msgscript/libs/greeting", "function Greeting(n) return 'yo ' .. n end", timeout_s=T)
        await eventually(lambda: answers_with(nc, "funcs.greet", b"yo John"), 2, "changed library")
        # A value that is not a script is skipped; the daemon carries on.
        await etcd.put("msgscript/scripts/funcs.bad/bad", "{not json", timeout_s=T)
        await etcd.delete(script_key(HELLO), timeout_s=T)
        await eventually(lambda: has_no_responders(nc, "funcs.hello"), 3, "deleted script unsubscribed")
        assert await has_no_responders(nc, "funcs.bad")
        assert await answer(nc, "funcs.greet") == b"yo John"


async def test_daemon_serves_from_memory_while_etcd_is_down(
    make_daemon: DaemonFactory, nc: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    first_etcd, second_etcd = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(second_etcd.aclose)
        stack.push_async_callback(first_etcd.aclose)
        await first_etcd.enter_async_context(run_etcd(client_port=port))
        async with EtcdClient([endpoint]) as etcd:
            await etcd.put(script_key(HELLO), script_value(HELLO), timeout_s=T)
        await stack.enter_async_context(make_daemon(backend="etcd", etcd_endpoints=(endpoint,)))
        assert await answer(nc, "funcs.hello") == b"hello John"
        await first_etcd.aclose()
        for _ in range(3):
            assert await answer(nc, "funcs.hello") == b"hello John"
            await asyncio.sleep(0.3)
        # A rebuilt etcd (empty) on the same address: the daemon notices, reads it, and follows it again.
        await second_etcd.enter_async_context(run_etcd(client_port=port))
        async with EtcdClient([endpoint]) as etcd:
            # gRPC shares the daemon's connection state for this address: retry until it has reconnected.
            await eventually(lambda: put_succeeds(etcd, script_key(STAR), script_value(STAR)), 10, "put after restart")
        await eventually(lambda: answers_with(nc, "funcs.new", b"star funcs.new"), 10, "script added after the restart")
        await eventually(lambda: answers_with(nc, "funcs.hello", b"star funcs.hello"), 2, "script gone from etcd")
    assert caplog.text.count("script store: etcd lost") == 1
    assert caplog.text.count("script store: etcd is back") == 1
    assert "script store: etcd history changed" in caplog.text


async def put_succeeds(etcd: EtcdClient, key: str, value: bytes) -> bool:
    try:
        await etcd.put(key, value, timeout_s=T)
    except EtcdUnavailable:
        return False
    return True


# -- the command ---------------------------------------------------------------------------------------


async def test_command_exits_when_etcd_is_unreachable(nats_server: NatsServer) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    code, _, text = await run_msgscript(
        *("-backend", "etcd", "-etcdurl", endpoint, "-natsurl", nats_server.url, "-port", str(free_port())), timeout=20
    )
    assert code == 1
    assert f"failed to initialize the script store: etcd at {endpoint} is unreachable: " in text
    assert text.count("is unreachable") == 1, text
    assert "Traceback" not in text


ENV = """--* subject: funcs.env
--* name: env
function OnMessage() return os.getenv("ETCD_ENDPOINTS") end
"""


@contextlib.asynccontextmanager
async def command_daemon(nats_server: NatsServer, *args: str, **env: str) -> AsyncIterator[str]:
    """Run `msgscript -backend etcd <args>` until it subscribes; yields its log so far."""
    command = ("-backend", "etcd", "-natsurl", nats_server.url, "-port", str(free_port()), *args)
    async with daemon_running(*command, env=command_env(**env)) as daemon:
        yield daemon.log


async def test_etcd_endpoints_overrides_the_flag(
    nats_server: NatsServer, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await etcd.put(script_key(ENV), script_value(ENV), timeout_s=T)
    dead = f"127.0.0.1:{free_port()}"
    async with command_daemon(nats_server, "-etcdurl", dead, ETCD_ENDPOINTS=etcd_server.endpoint) as log:
        assert f"from etcd at {etcd_server.endpoint}" in log
        assert await answer(nc, "funcs.env") == etcd_server.endpoint.encode()


async def test_the_flag_is_exported_as_etcd_endpoints(
    nats_server: NatsServer, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    await etcd.put(script_key(ENV), script_value(ENV), timeout_s=T)
    async with command_daemon(nats_server, "-etcdurl", etcd_server.url):
        assert await answer(nc, "funcs.env") == etcd_server.url.encode()


async def test_a_burst_of_new_scripts_is_all_subscribed(
    make_daemon: DaemonFactory, nc: nats.NATS, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    sources = [HELLO.replace("funcs.hello", f"funcs.burst{i}") for i in range(20)]
    async with make_daemon(backend="etcd", etcd_endpoints=(etcd_server.url,)):
        # Changes landing while the subscriptions are being updated must not be missed.
        await asyncio.gather(*(etcd.put(script_key(s), script_value(s), timeout_s=T) for s in sources))
        for i in range(20):
            await eventually(lambda i=i: answers_with(nc, f"funcs.burst{i}", b"hello John"), 3, f"burst{i}")
