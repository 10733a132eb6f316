"""OpenTelemetry tracing as the Go server does it: on when TELEMETRY_TRACES is set, and free when it is not.

With tracing on, spans are exported over OTLP/gRPC (insecure) to `OTEL_ENDPOINT` (`host:port`), or to
what the SDK's own `OTEL_EXPORTER_OTLP_*ENDPOINT` variables name, else printed to stdout as JSON. The
other `OTEL_*` variables (sampler, batch processor, propagators, resource attributes) work as the SDK
defines them. W3C trace context and baggage travel in NATS and HTTP headers.

The span helpers below are what the daemon calls on its hot path. With tracing off they return a shared
do-nothing context manager and OpenTelemetry is never imported.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

TRACES_ENV = "TELEMETRY_TRACES"
ENDPOINT_ENV = "OTEL_ENDPOINT"
SERVICE_NAME = "msgscript"
MAIN_TRACER = "msgscript.main"
HTTP_TRACER = "http-nats-proxy"
"""The Go server's tracer names: the gateway's spans come from the second, everything else from the first."""
SHUTDOWN_TIMEOUT_S = 5.0
"""How long a stopping daemon waits for its last spans to be exported (the SDK's own bound is 30 s)."""

_SDK_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class _Tracing:
    """The process's tracers and propagator while tracing is on."""

    __slots__ = ("current_span", "http", "kinds", "main", "propagator", "provider")

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, get_current_span

        self.current_span = get_current_span
        self.kinds = {kind.name.lower(): kind for kind in SpanKind}
        self.provider = provider
        self.main: Tracer = provider.get_tracer(MAIN_TRACER)
        self.http: Tracer = provider.get_tracer(HTTP_TRACER)
        # tracecontext and baggage unless OTEL_PROPAGATORS says otherwise, as in the SDK.
        self.propagator = propagate.get_global_textmap()


_on: _Tracing | None = None
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled() -> bool:
    """True while tracing is on in this process."""
    return _on is not None


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: Context | None = None,
    http: bool = False,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the `with` block, child of `parent` or else of the current span.

    `kind` is `internal`, `server` or `client`; `http` picks the gateway's tracer. An exception leaving the
    block is recorded on the span and marks it as an error. With tracing off this yields None and costs a
    global lookup.
    """
    on = _on
    if on is None:
        return _OFF
    current = on.current_span()
    if parent is None and current.get_span_context().is_valid and not current.is_recording():
        # Inside a trace the sampler left out: its children would be left out too, so none is made (the
        # context passed on is the unsampled parent's, which tells the next hop not to sample either).
        return _OFF
    tracer = on.http if http else on.main
    return tracer.start_as_current_span(name, context=parent, kind=on.kinds[kind], attributes=attributes)


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context carried by message or request headers (None with tracing off or no headers)."""
    on = _on
    if on is None or not headers:
        return None
    return on.propagator.extract(headers)


def headers(base: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """`base` plus the current trace context, for an outgoing NATS message; `base` as it is with tracing off."""
    on = _on
    if on is None:
        return dict(base) if base else None
    carrier = dict(base or {})
    on.propagator.inject(carrier)
    return carrier or None


def fail(current: Span | None, error: str, *, attribute: str = "") -> None:
    """Mark the span (None with tracing off) as failed, with `error` as the status description and as the
    value of `attribute` when one is named."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if attribute:
        current.set_attribute(attribute, error)
    current.set_status(Status(StatusCode.ERROR, error))


def _exporter(env: Mapping[str, str]) -> Any:
    endpoint = env.get(ENDPOINT_ENV, "")
    if endpoint or any(env.get(name) for name in _SDK_ENDPOINT_ENVS):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if endpoint:
            return OTLPSpanExporter(endpoint=endpoint, insecure=True)
        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter(out=sys.stdout)


def _resource(version: str) -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    # Ours first, so that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES can override them.
    ours = {"service.name": SERVICE_NAME, "service.version": version}
    return Resource.create({**ours, **OTELResourceDetector().detect().attributes})


@contextlib.contextmanager
def configured(env: Mapping[str, str], version: str) -> Iterator[bool]:
    """Turn tracing on for the block when `env` has a non-empty TELEMETRY_TRACES; yields whether it is on.

    On the way out the spans still buffered are exported, waiting at most SHUTDOWN_TIMEOUT_S.
    """
    global _on
    if not env.get(TRACES_ENV):
        yield False
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = _exporter(env)
    provider = TracerProvider(resource=_resource(version))
    # Batch size and delay come from OTEL_BSP_*; the SDK's default delay is the Go server's 5 s.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _on = _Tracing(provider)
    log.info("tracing on: exporting spans to %s", env.get(ENDPOINT_ENV) or type(exporter).__name__)
    try:
        yield True
    finally:
        _on = None
        # The SDK exports what is left while it shuts down, retrying an unreachable collector for long.
        flush = threading.Thread(target=provider.shutdown, name="msgscript-trace-flush", daemon=True)
        flush.start()
        flush.join(SHUTDOWN_TIMEOUT_S)
        if flush.is_alive():
            log.warning("the last spans were not exported within %.0f s", SHUTDOWN_TIMEOUT_S)
