"""OpenTelemetry tracing end to end: a real `msgscript` daemon exporting over OTLP/gRPC to a receiver run here,
with trace context carried through HTTP, NATS and a script calling a script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import nats
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from msgscript import __version__
from tests.processes import Daemon, command_env, daemon_running, start_daemon
from tests.servers import NatsServer, free_port

FRONT = """--* subject: trace.front
--* name: front
function OnMessage(subject, payload)
    local nats = require("nats")
    local reply, err = nats.request("trace.back", payload, 5)
    if err then error(err) end
    return "front got " .. reply
end
"""
BACK = """--* subject: trace.back
--* name: back
function OnMessage(subject, payload)
    return "back:" .. payload
end
"""
BROKEN = """--* subject: trace.broken
--* name: broken
function OnMessage(subject, payload)
    error("boom")
end
"""
EXPORT_WAIT_S = 10.0
# Spans leave the daemon in batches; a short delay keeps the tests quick.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, object]
    error: bool
    resource: dict[str, object]


def _value(any_value: object) -> object:
    kind = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: object) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}  # type: ignore[attr-defined]


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    spans: list[Span] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes=_attributes(span.attributes),
                            error=span.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
                            resource=resource,
                        )
                    )
        self.changed.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, done: Callable[[list[Span]], bool], timeout_s: float = EXPORT_WAIT_S) -> list[Span]:
        """Wait until `done(spans)` holds; fail with what arrived if it does not in time."""
        try:
            async with asyncio.timeout(timeout_s):
                while not done(self.spans):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            arrived = [(s.name, s.trace_id, s.span_id, s.parent_id) for s in self.spans]
            raise AssertionError(f"the spans expected did not arrive in {timeout_s} s; arrived: {arrived}") from None
        return self.spans


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    collector = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, port
    finally:
        await server.stop(grace=None)


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    for name, text in (("front.lua", FRONT), ("back.lua", BACK), ("broken.lua", BROKEN)):
        (tmp_path / name).write_text(text)
    return tmp_path


def daemon_args(scripts: Path, nats_server: NatsServer, port: int) -> tuple[str, ...]:
    return ("-script", str(scripts), "-natsurl", nats_server.url, "-port", str(port), "-http-host", "127.0.0.1")


@contextlib.asynccontextmanager
async def traced_daemon(scripts: Path, nats_server: NatsServer, collector_port: int) -> AsyncIterator[int]:
    port = free_port()
    env = command_env(TELEMETRY_TRACES="1", OTEL_ENDPOINT=f"127.0.0.1:{collector_port}", **FAST_EXPORT)
    async with daemon_running(*daemon_args(scripts, nats_server, port), env=env):
        yield port


def new_parent() -> tuple[str, str, str]:
    """A trace id, a span id and the `traceparent` header of a caller's sampled span."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def only(spans: list[Span], name: str, **attributes: object) -> Span:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"expected one {name} {attributes}, got {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def children(spans: list[Span], parent: Span) -> list[str]:
    return sorted(s.name for s in spans if s.parent_id == parent.span_id)


async def test_one_trace_covers_http_a_script_its_nats_request_and_the_script_answering(
    receiver: tuple[Receiver, int], scripts: Path, nats_server: NatsServer
) -> None:
    collector, collector_port = receiver
    trace_id, caller_span, traceparent = new_parent()
    async with traced_daemon(scripts, nats_server, collector_port) as port:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/trace.front", data=b"hi", headers={"traceparent": traceparent}) as resp,
        ):
            assert resp.status == 200
            body = await resp.read()
        assert b"payload" in body

        def complete(spans: list[Span]) -> bool:
            return sum(s.name == "lua.execute_script" and s.trace_id == trace_id for s in spans) == 2

        await collector.wait_for(complete)
    spans = [s for s in collector.spans if s.trace_id == trace_id]

    request = only(spans, "http.request")
    assert request.parent_id == caller_span
    assert request.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert request.attributes["http.method"] == "POST"
    assert request.attributes["http.status_code"] == 200
    assert request.resource["service.name"] == "msgscript"
    assert request.resource["service.version"] == __version__
    assert children(spans, request) == ["nats.handle_message.get_scripts", "nats.handle_message.run_scripts"]

    front = only(spans, "lua.execute_script", **{"script.name": "front"})
    runs = [s for s in spans if s.name == "nats.handle_message.run_scripts"]
    assert front.parent_id in {s.span_id for s in runs if s.parent_id == request.span_id}
    assert front.attributes["nats.subject"] == "trace.front"

    # The script's own request is a client span under the script, and the answering side is its child.
    call = only(spans, "nats.request")
    assert call.parent_id == front.span_id
    assert call.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert call.attributes["nats.subject"] == "trace.back"
    handle = only(spans, "nats.handle_message")
    assert handle.parent_id == call.span_id
    assert handle.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert handle.attributes["nats.subject"] == "trace.back"
    assert children(spans, handle) == [
        "nats.handle_message.get_scripts",
        "nats.handle_message.run_scripts",
        "nats.handle_message.send_reply",
    ]
    back = only(spans, "lua.execute_script", **{"script.name": "back"})
    back_run = next(s for s in runs if s.parent_id == handle.span_id)
    assert back.parent_id == back_run.span_id
    assert not any(s.error for s in spans)


async def test_a_nats_message_continues_its_senders_trace_and_a_failure_is_marked(
    receiver: tuple[Receiver, int], scripts: Path, nats_server: NatsServer
) -> None:
    collector, collector_port = receiver
    trace_id, caller_span, traceparent = new_parent()
    async with traced_daemon(scripts, nats_server, collector_port):
        nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            msg = await nc.request("trace.broken", b"x", timeout=10, headers={"traceparent": traceparent})
        finally:
            await nc.close()
        assert "boom" in json.loads(msg.data)["script_result"][0]["error"]
        await collector.wait_for(lambda spans: any(s.name == "lua.execute_script" for s in spans))
        await collector.wait_for(lambda spans: any(s.name == "nats.handle_message" for s in spans))
    spans = [s for s in collector.spans if s.trace_id == trace_id]
    handle = only(spans, "nats.handle_message")
    assert handle.parent_id == caller_span
    script = only(spans, "lua.execute_script")
    assert script.error
    assert "boom" in str(script.attributes["executor.error"])
    assert script.attributes["script.name"] == "broken"


async def test_without_telemetry_traces_nothing_is_exported(
    receiver: tuple[Receiver, int], scripts: Path, nats_server: NatsServer
) -> None:
    collector, collector_port = receiver
    port = free_port()
    env = command_env(OTEL_ENDPOINT=f"127.0.0.1:{collector_port}", **FAST_EXPORT)
    async with daemon_running(*daemon_args(scripts, nats_server, port), env=env):
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/trace.front", data=b"x") as resp,
        ):
            assert resp.status == 200
        # Ten times the export delay: spans would have arrived by now.
        await asyncio.sleep(1.0)
    assert collector.spans == []


async def test_without_an_endpoint_spans_are_printed_to_stdout(scripts: Path, nats_server: NatsServer) -> None:
    port = free_port()
    env = command_env(TELEMETRY_TRACES="1", OTEL_ENDPOINT="", **FAST_EXPORT)
    daemon: Daemon = await start_daemon(*daemon_args(scripts, nats_server, port), env=env, stdout=True)
    try:
        async with aiohttp.ClientSession() as http, http.post(f"http://127.0.0.1:{port}/trace.back", data=b"x") as resp:
            assert resp.status == 200
    finally:
        await daemon.stop()
    # The last spans are printed while the daemon stops.
    assert daemon.stdout is not None
    printed = await asyncio.wait_for(daemon.stdout, 10)
    assert '"name": "lua.execute_script"' in printed
    assert '"script.name": "back"' in printed


async def test_a_trace_the_caller_did_not_sample_is_not_recorded_here_either(
    receiver: tuple[Receiver, int], scripts: Path, nats_server: NatsServer
) -> None:
    collector, collector_port = receiver
    unsampled_id, _, unsampled = new_parent()
    unsampled = unsampled[:-2] + "00"
    sampled_id, _, sampled = new_parent()
    async with traced_daemon(scripts, nats_server, collector_port) as port:
        async with aiohttp.ClientSession() as http:
            for traceparent in (unsampled, sampled):
                url = f"http://127.0.0.1:{port}/trace.front"
                async with http.post(url, data=b"hi", headers={"traceparent": traceparent}) as resp:
                    assert resp.status == 200

        def complete(spans: list[Span]) -> bool:
            return sum(s.name == "lua.execute_script" and s.trace_id == sampled_id for s in spans) == 2

        await collector.wait_for(complete)
    # The script's request carried the unsampled context on: the answering side recorded nothing either.
    assert [s.name for s in collector.spans if s.trace_id == unsampled_id] == []
    # Nor did it start a trace of its own: the one answering span is the sampled request's.
    assert [s.trace_id for s in collector.spans if s.name == "nats.handle_message"] == [sampled_id]
