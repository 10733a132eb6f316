"""The NATS side of the daemon (msgscript.nats_subscriber) over a real nats-server: requests in, Reply documents out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from msgscript.dispatch import Dispatcher
from msgscript.etcd_client import EtcdClient
from msgscript.message import Message, Reply
from msgscript.script import parse_script
from tests.conftest import DaemonFactory
from tests.fixtures import SCRIPTS
from tests.servers import run_etcd

HELLO_JOHN = (
    b'{"script_result":[{"http_code":0,"error":"","http_headers":null,"is_html":false,'
    b'"payload":"UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxvIHdpdGggcGF5bG9hZDogSm9obg=="}],"is_html":false}'
)


async def request(nc: nats.NATS, subject: str, data: bytes, timeout: float = 5) -> Reply:
    msg = await nc.request(subject, data, timeout=timeout)
    return Reply.from_json(msg.data)


def payloads(reply: Reply) -> list[bytes | None]:
    return [r.payload for r in reply.results or ()]


async def test_hello_reply_is_byte_identical_to_go(daemon: Dispatcher, nc: nats.NATS) -> None:
    msg = await nc.request("funcs.hello", b"John", timeout=5)
    assert msg.data == HELLO_JOHN


async def test_json_without_payload_is_passed_as_raw_text(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "funcs.hello", b'{"foo":1}')
    assert payloads(reply) == [b'Processed subject: funcs.hello with payload: {"foo":1}']


async def test_null_is_passed_as_raw_text(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "funcs.hello", b"null")
    assert payloads(reply) == [b"Processed subject: funcs.hello with payload: null"]


async def test_envelope_subject_within_the_subscription_is_honoured(daemon: Dispatcher, nc: nats.NATS) -> None:
    # funcs.wild.b reaches the `funcs.wild.*` subscription, which funcs.wild.c could have reached directly.
    envelope = b'{"subject":"funcs.wild.c","payload":"Sm9obg=="}'
    reply = await request(nc, "funcs.wild.b", envelope)
    assert payloads(reply) == [b"wild funcs.wild.c"]
    # The same subscription also takes funcs.wild.a, which runs its literal script too.
    reply = await request(nc, "funcs.wild.b", b'{"subject":"funcs.wild.a","payload":""}')
    assert sorted(payloads(reply)) == [b"literal funcs.wild.a", b"wild funcs.wild.a"]  # type: ignore[type-var]


@pytest.mark.parametrize(
    "envelope_subject",
    # Another script subject, a wildcard, an inbox, nothing at all: the arrival subject's scripts run.
    ["funcs.multi", "funcs.*", "_INBOX.taken", ""],
)
async def test_envelope_subject_outside_the_subscription_is_ignored(
    daemon: Dispatcher, nc: nats.NATS, envelope_subject: str
) -> None:
    envelope = json.dumps({"subject": envelope_subject, "payload": "Sm9obg=="}).encode()
    msg = await nc.request("funcs.hello", envelope, timeout=5)
    assert msg.data == HELLO_JOHN


async def test_envelope_with_invalid_base64_is_raw(daemon: Dispatcher, nc: nats.NATS) -> None:
    data = b'{"subject":"funcs.hello","payload":"not base64!"}'
    reply = await request(nc, "funcs.hello", data)
    assert payloads(reply) == [b"Processed subject: funcs.hello with payload: " + data]


async def test_envelope_for_a_subject_without_scripts_runs_the_arrival_subject(
    daemon: Dispatcher, nc: nats.NATS
) -> None:
    reply = await request(nc, "funcs.hello", b'{"subject":"funcs.unknown","payload":"Sm9obg=="}')
    assert reply.error == ""
    assert payloads(reply) == [b"Processed subject: funcs.hello with payload: John"]


async def test_subject_without_script_gets_no_responders(daemon: Dispatcher, nc: nats.NATS) -> None:
    with pytest.raises(NoRespondersError):
        await nc.request("funcs.unknown", b"x", timeout=2)


async def test_non_utf8_payload_reaches_the_script_unchanged(daemon: Dispatcher, nc: nats.NATS) -> None:
    data = b"\xff\xfe\x00\x80 bytes"
    reply = await request(nc, "funcs.hello", data)
    assert payloads(reply) == [b"Processed subject: funcs.hello with payload: " + data]


async def test_plain_publish_runs_the_script_and_sends_no_reply(daemon: Dispatcher, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.sink")
    await nc.publish("funcs.pub", b"John")
    msg = await sink.next_msg(timeout=5)
    assert msg.data == b"John"


async def test_inbox_subjects_never_run(daemon: Dispatcher, nc: nats.NATS) -> None:
    with pytest.raises(NatsTimeout):
        await nc.request("_INBOX.taken", b"x", timeout=0.5)


async def test_async_envelope_is_acknowledged_at_once_and_still_runs(daemon: Dispatcher, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.sink")
    msg = await nc.request("funcs.pub", b'{"async":true,"payload":"Sm9obg==","subject":"funcs.pub"}', timeout=5)
    assert msg.data == b"{}"
    assert (await sink.next_msg(timeout=5)).data == b"John"


async def test_async_envelope_without_reply_subject_still_runs(daemon: Dispatcher, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.sink")
    await nc.publish("funcs.pub", b'{"async":true,"payload":"Sm9obg==","subject":"funcs.pub"}')
    assert (await sink.next_msg(timeout=5)).data == b"John"


async def test_all_scripts_of_a_subject_form_one_reply(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "funcs.multi", b"")
    assert sorted(payloads(reply)) == [b"A", b"B"]  # type: ignore[type-var]
    assert reply.is_html is False


async def test_non_string_return_gives_null_payload(daemon: Dispatcher, nc: nats.NATS) -> None:
    msg = await nc.request("funcs.number", b"", timeout=5)
    assert msg.data == (
        b'{"script_result":[{"http_code":0,"error":"","http_headers":null,"is_html":false,"payload":null}],'
        b'"is_html":false}'
    )


async def test_missing_onmessage_is_a_result_error(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "funcs.noop", b"")
    assert reply.error == ""
    assert [r.error for r in reply.results or ()] == ["failed to find global function named 'OnMessage'"]


async def test_runtime_error_in_onmessage_is_a_result_error(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "funcs.fail", b"")
    assert reply.error == ""
    (result,) = reply.results or ()
    assert result.error.startswith("failed to call OnMessage function: ")


async def test_html_script_without_method_is_not_called(daemon: Dispatcher, nc: nats.NATS) -> None:
    msg = await nc.request("web.page", b"raw", timeout=5)
    assert msg.data == (
        b'{"script_result":[{"http_code":200,"error":"","http_headers":{},"is_html":true,"payload":""}],"is_html":true}'
    )


async def test_html_script_gets_method_url_and_converts_its_returns(daemon: Dispatcher, nc: nats.NATS) -> None:
    envelope = b'{"method":"POST","payload":"","subject":"web.page","url":"/x"}'
    reply = await request(nc, "web.page", envelope)
    (result,) = reply.results or ()
    assert (result.http_code, dict(result.http_headers or {}), result.payload) == (201, {"X-Test": "5"}, b"created")


async def test_library_is_prepended(daemon: Dispatcher, nc: nats.NATS) -> None:
    assert payloads(await request(nc, "funcs.lib", b"John")) == [b"hi John"]


@pytest.mark.parametrize(
    ("backend", "error"),
    [
        ("file", "failed to read librairies: library 'nosuchlib' not found"),
        ("etcd", "failed to read librairies: key msgscript/libs/nosuchlib doesn't exists"),
    ],
)
async def test_missing_library_is_an_error_on_both_backends(
    make_daemon: DaemonFactory, nc: nats.NATS, backend: str, error: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        options: dict[str, Any] = {}
        if backend == "etcd":
            etcd_server = await stack.enter_async_context(run_etcd())
            async with EtcdClient([etcd_server.url]) as etcd:
                script = parse_script(SCRIPTS["nolib.lua"])
                await etcd.put(f"msgscript/scripts/{script.subject}/{script.name}", script.to_json(), timeout_s=5)
            options = {"backend": "etcd", "etcd_endpoints": (etcd_server.url,)}
        await stack.enter_async_context(make_daemon(**options))
        reply = await nc.request("funcs.nolib", b"", timeout=5)
    (result,) = Reply.from_json(reply.data).results or ()
    assert (result.error, result.payload) == (error, None)


async def test_json_module_encodes_like_go(daemon: Dispatcher, nc: nats.NATS) -> None:
    assert payloads(await request(nc, "funcs.json", b"")) == [b'[]|{"a":"x","b":1}']


async def test_nats_publish_from_a_script(daemon: Dispatcher, nc: nats.NATS) -> None:
    sink = await nc.subscribe("funcs.sink")
    assert payloads(await request(nc, "funcs.pub", b"John")) == [b"true"]
    assert (await sink.next_msg(timeout=5)).data == b"John"


async def test_globals_do_not_leak_between_messages(daemon: Dispatcher, nc: nats.NATS) -> None:
    for _ in range(3):
        assert payloads(await request(nc, "funcs.counter", b"")) == [b"1"]


@pytest.mark.parametrize("queue_group", ["msgscript", ""])
async def test_wildcard_subject_scripts_run_and_overlaps_reply_once(
    make_daemon: DaemonFactory, nc: nats.NATS, queue_group: str
) -> None:
    async with make_daemon(queue_group=queue_group):
        await _overlapping_subjects_reply_once(nc)


async def _overlapping_subjects_reply_once(nc: nats.NATS) -> None:
    assert payloads(await request(nc, "funcs.wild.b", b"")) == [b"wild funcs.wild.b"]
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    for _ in range(10):
        await nc.publish("funcs.wild.a", b"", reply=inbox)
        first = Reply.from_json((await replies.next_msg(timeout=5)).data)
        assert sorted(payloads(first)) == [b"literal funcs.wild.a", b"wild funcs.wild.a"]  # type: ignore[type-var]
    with pytest.raises(NatsTimeout):
        await replies.next_msg(timeout=0.5)


async def test_syntax_error_is_a_result_error(daemon: Dispatcher, nc: nats.NATS) -> None:
    (result,) = (await request(nc, "funcs.syntax", b"")).results or ()
    assert result.error.startswith("error executing Lua script: ")


async def test_top_level_error_is_a_result_error(daemon: Dispatcher, nc: nats.NATS) -> None:
    (result,) = (await request(nc, "funcs.toplevel", b"")).results or ()
    assert result.error.startswith("error executing Lua script: ")
    assert "boom" in result.error


async def test_infinite_loop_times_out_and_the_daemon_keeps_serving(daemon: Dispatcher, nc: nats.NATS) -> None:
    started = time.monotonic()
    (result,) = (await request(nc, "funcs.loop", b"")).results or ()
    assert result.error == "script timed out after 1s"
    assert time.monotonic() - started < 3
    assert (await nc.request("funcs.hello", b"John", timeout=5)).data == HELLO_JOHN


async def test_memory_bomb_is_stopped_and_the_daemon_keeps_serving(daemon: Dispatcher, nc: nats.NATS) -> None:
    (result,) = (await request(nc, "funcs.bomb", b"", timeout=30)).results or ()
    assert "not enough memory" in result.error
    assert (await nc.request("funcs.hello", b"John", timeout=5)).data == HELLO_JOHN


async def test_os_exit_is_an_error_not_an_exit(daemon: Dispatcher, nc: nats.NATS) -> None:
    (result,) = (await request(nc, "funcs.exit", b"")).results or ()
    assert result.error.startswith("failed to call OnMessage function: ")
    assert "os.exit" in result.error
    assert (await nc.request("funcs.hello", b"John", timeout=5)).data == HELLO_JOHN


async def test_list_scripts_subject(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "__listScripts", b"")
    (result,) = reply.results or ()
    assert (result.http_code, dict(result.http_headers or {}), result.is_html, reply.is_html) == (200, {}, True, True)
    subjects = json.loads(result.payload or b"")
    assert "funcs.hello" in subjects and "funcs.multi" in subjects
    assert len(subjects) == len(set(subjects))


async def test_list_names_for_script_subject(daemon: Dispatcher, nc: nats.NATS) -> None:
    (result,) = (await request(nc, "__listNamesForScript", b"funcs.multi")).results or ()
    assert json.loads(result.payload or b"") == ["a", "b"]


async def test_info_named_script_subject(daemon: Dispatcher, nc: nats.NATS) -> None:
    reply = await request(nc, "__infoNamedScript", b"funcs.lib,lib")
    (result,) = reply.results or ()
    assert result.payload == b"function OnMessage(_, p) return Greet(p) end"
    assert dict(result.http_headers or {}) == {"executor": "lua", "libraries": "greet"}
    assert result.is_html is False


async def test_info_named_script_misses(daemon: Dispatcher, nc: nats.NATS) -> None:
    msg = await nc.request("__infoNamedScript", b"funcs.hello,nope", timeout=5)
    assert msg.data == (
        b'{"script_result":null,"is_html":false,"error":"no script found for subject funcs.hello with name nope"}'
    )


async def test_malformed_info_request_is_an_error_and_the_daemon_keeps_serving(
    daemon: Dispatcher, nc: nats.NATS
) -> None:
    for data in (b"nocomma", b"a,b,c"):
        assert (await request(nc, "__infoNamedScript", data)).error == "invalid request"
    assert (await nc.request("funcs.hello", b"John", timeout=5)).data == HELLO_JOHN


async def test_twenty_slow_requests_complete_in_parallel(daemon: Dispatcher, nc: nats.NATS) -> None:
    responses: set[asyncio.Task[None]] = set()

    async def respond_later(msg: nats.aio.msg.Msg) -> None:
        await asyncio.sleep(1.0)
        await msg.respond(b"slow " + msg.data)

    async def slow_responder(msg: nats.aio.msg.Msg) -> None:
        # Answer each request from its own task: the subscription callback runs one message at a time.
        task = asyncio.ensure_future(respond_later(msg))
        responses.add(task)
        task.add_done_callback(responses.discard)

    await nc.subscribe("test.slow", cb=slow_responder)
    started = time.monotonic()
    replies = await asyncio.gather(*(request(nc, "funcs.wait", str(i).encode(), timeout=15) for i in range(20)))
    elapsed = time.monotonic() - started
    assert [(payloads(r), [x.error for x in r.results or ()]) for r in replies] == [
        ([f"slow {i}".encode()], [""]) for i in range(20)
    ]
    assert elapsed < 5, f"20 one-second requests took {elapsed:.1f}s: they did not run in parallel"


@pytest.mark.parametrize(("queue_group", "expected"), [("msgscript", 40), ("", 80)])
async def test_queue_group_runs_each_message_once_per_group(
    make_daemon: DaemonFactory, nc: nats.NATS, queue_group: str, expected: int
) -> None:
    sink = await nc.subscribe("funcs.sink")
    async with make_daemon(queue_group=queue_group), make_daemon(queue_group=queue_group):
        for i in range(40):
            await nc.publish("funcs.count", str(i).encode())
        await nc.flush()
        received = []
        with pytest.raises(NatsTimeout):
            while True:
                received.append((await sink.next_msg(timeout=1.0)).data)
    assert len(received) == expected


async def test_graceful_stop_finishes_messages_in_flight(make_daemon: DaemonFactory, nc: nats.NATS) -> None:
    async def slow_responder(msg: nats.aio.msg.Msg) -> None:
        await asyncio.sleep(1.0)
        await msg.respond(b"late")

    await nc.subscribe("test.slow", cb=slow_responder)
    async with make_daemon():
        pending = asyncio.ensure_future(request(nc, "funcs.wait", b"", timeout=10))
        await asyncio.sleep(0.3)
    reply = await pending
    assert payloads(reply) == [b"late"]


async def test_dispatch_without_nats(daemon: Dispatcher) -> None:
    reply = await daemon.dispatch(Message(subject="funcs.hello", payload=b"John"))
    assert reply.to_json() == HELLO_JOHN
