"""The function gateway: `<METHOD> /<subject>/...` runs the subject's scripts in-process and answers their results."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from msgscript import tracing
from msgscript._gohttp import DEADLINE_EXCEEDED, canonical_header_key, is_token
from msgscript.catalog import INTERNAL_SUBJECTS, Catalog, CatalogMiss, InvalidCatalogRequest
from msgscript.config import DEFAULT_HTTP_TIMEOUT_S
from msgscript.durations import parse_duration
from msgscript.errors import NoScripts, StoreError
from msgscript.http.access import may_browse
from msgscript.http.body import BadBody, BodyError, body_error_response, read_body
from msgscript.http.keys import CATALOG, DISPATCHER, DURABLE, IN_FLIGHT, METRICS, SETTINGS, TASKS
from msgscript.message import MSG_ID_HEADER, Message, Reply, Result, results_json
from msgscript.subjects import is_valid_subject

if TYPE_CHECKING:
    from msgscript.jetstream import DurableConsumers

log = logging.getLogger(__name__)

TIMEOUT_PARAM = "_timeout"
RETRY_AFTER_S = 1
"""What a 503 for a full in-flight bound tells the client to wait before trying again."""
HTML_CONTENT_TYPE = "text/html"
PLAIN_UTF8 = "text/plain; charset=utf-8"

# The server frames the body itself; a script must not be able to contradict it.
_FRAMING_HEADERS = frozenset({"Content-Length", "Transfer-Encoding"})


def text_response(status: int, text: str) -> web.Response:
    """A plain-text answer (`text/plain; charset=utf-8`), the shape of every gateway error."""
    return web.Response(status=status, body=text.encode("utf-8", "replace"), headers={"Content-Type": PLAIN_UTF8})


def first_segment(path: str) -> str:
    """The first segment of a decoded URL path: the subject (`/funcs.hello/a/b` → `funcs.hello`)."""
    return path.split("/", 2)[1] if path.startswith("/") else path.split("/", 1)[0]


def request_target(request: web.BaseRequest) -> str:
    """The request URI as sent: escaped path, then `?` and the raw query when there is one."""
    target = request.raw_path
    if not target.startswith("/"):
        # An absolute-form target (`GET http://host/path`): keep its path and query only.
        target = str(request.rel_url)
    return target


def script_url(target: str, subject: str) -> str:
    """The `url` given to scripts: the request URI with every `/<subject>` removed, query kept (Go's rule)."""
    return target.replace("/" + subject, "")


def request_timeout_s(request: web.BaseRequest) -> float:
    """The `_timeout` query parameter as a Go duration; absent or invalid means the default 5 s."""
    raw = request.query.get(TIMEOUT_PARAM)
    if raw is None:
        return DEFAULT_HTTP_TIMEOUT_S
    try:
        return parse_duration(raw)
    except ValueError:
        return DEFAULT_HTTP_TIMEOUT_S


def _is_sendable(name: str, value: str) -> bool:
    """True when a script's header can go on the wire without breaking the response."""
    return is_token(name) and not any(c in value for c in "\r\n\x00")


def html_response(result: Result) -> web.Response:
    """The response of an HTML result: its status (0 means 200), its headers and its body.

    A result carrying an error answers 500 `Error: <error>`; without a Content-Type header (in any
    spelling) the response is `text/html`.
    """
    if result.error:
        return text_response(500, f"Error: {result.error}")
    status = result.http_code or 200
    if not 100 <= status <= 999:
        return text_response(500, f"Error: invalid HTTP status code {status}")
    headers: CIMultiDict[str] = CIMultiDict()
    for raw_name, value in (result.http_headers or {}).items():
        name = canonical_header_key(raw_name)
        if name in _FRAMING_HEADERS or not _is_sendable(name, value):
            log.info("dropping header %r set by a script", raw_name)
            continue
        headers[name] = value
    if "Content-Type" not in headers:
        headers["Content-Type"] = HTML_CONTENT_TYPE
    return web.Response(status=status, body=result.payload or b"", headers=headers)


def reply_response(reply: Reply) -> web.Response:
    """Turn a Reply into the gateway's response: the first HTML result wins, otherwise all results as JSON."""
    if reply.error:
        return text_response(500, f"Error: {reply.error}")
    for result in reply.results or ():
        if result.is_html:
            return html_response(result)
    return web.Response(body=results_json(reply.results), headers={"Content-Type": PLAIN_UTF8})


def busy_response(limit: int) -> web.Response:
    """The answer when every in-flight slot is taken: 503, and when to try again."""
    response = text_response(
        503, f"Error: server busy: {limit} messages and requests already in flight (-max-in-flight), retry later"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


async def wait_done(task: asyncio.Task[Reply], timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `task` without cancelling it; True when it is done."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(max(timeout_s, 0.0), wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


async def catalog_response(catalog: Catalog, subject: str, data: bytes) -> web.Response:
    """The answer of an internal subject: its one result, or 400 for malformed data and 404 for a miss.

    Over NATS the same failures are a Reply error, as in Go; their kind, not their text, picks the status here.
    """
    try:
        reply = await catalog.lookup(subject, data)
    except InvalidCatalogRequest as exc:
        return text_response(400, f"Error: {exc}")
    except CatalogMiss as exc:
        return text_response(404, f"Error: {exc}")
    except StoreError as exc:
        log.error("store lookup failed subject=%s: %s", subject, exc)
        return text_response(500, f"Error: failed to get scripts: {exc}")
    return reply_response(reply)


def not_found(subject: str) -> web.Response:
    """The answer for a subject without scripts."""
    return text_response(404, f"Error: no script found for subject {subject}")


async def durable_response(durable: DurableConsumers, request: web.Request, subject: str, body: bytes) -> web.Response:
    """Publish a request for durable scripts into their stream: 202 with where it was stored, once it is stored.

    The request's `Nats-Msg-Id` or `Idempotency-Key` header becomes the message id, so that a client retrying
    after a lost answer does not store the message twice.
    """
    msg_id = request.headers.get(MSG_ID_HEADER, "") or request.headers.get("Idempotency-Key", "")
    try:
        ack = await durable.publish(subject, body, msg_id)
    except Exception as exc:
        log.warning("durable publish failed subject=%s: %s", subject, exc)
        return text_response(503, f"Error: the message could not be stored: {exc or type(exc).__name__}")
    document = {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}
    return web.Response(status=202, body=json.dumps(document).encode(), headers={"Content-Type": "application/json"})


async def handle_gateway(request: web.Request) -> web.Response:
    """Run the scripts of the subject named by the first path segment and answer their results."""
    if not tracing.enabled():
        return await _gateway(request)
    attributes = {
        "http.method": request.method,
        "http.url": request_target(request),
        "http.remote_addr": request.remote or "",
        "http.request.body_size": request.content_length or 0,
    }
    parent = tracing.extract(request.headers)  # the caller's span, when the request carries trace context
    with tracing.span("http.request", kind="server", http=True, parent=parent, attributes=attributes) as span:
        response = await _gateway(request)
        if span is not None:
            span.set_attribute("http.status_code", response.status)
            span.set_attribute("http.response.body_size", response.content_length or 0)
            if response.status >= 500:
                tracing.fail(span, f"HTTP {response.status}")
        return response


async def _gateway(request: web.Request) -> web.Response:
    subject = first_segment(request.path)
    if log.isEnabledFor(logging.DEBUG):
        # Debug, not info as in Go: a log line per request costs more than the rest of the request (and the
        # client's address is a lookup of its own, not made for a line that is not logged).
        log.debug("Received HTTP request subject=%s client=%s", subject, request.remote)
    app = request.app
    settings = app[SETTINGS]
    if not is_valid_subject(subject):
        return text_response(400, f"Error: invalid subject {subject!r} in URL, expected /<subject>")
    try:
        body = await read_body(request, settings.max_payload_bytes)
    except BodyError as exc:
        if isinstance(exc, BadBody):
            log.info("%s subject=%s client=%s", exc, subject, request.remote)
        return body_error_response(exc)
    if subject.startswith("_INBOX."):
        return not_found(subject)
    if subject in INTERNAL_SUBJECTS:
        # The Go gateway forwarded these to NATS; they describe scripts, so they follow the browse mode.
        if not may_browse(request, settings.browse):
            return not_found(subject)
        return await catalog_response(app[CATALOG], subject, body)
    message = Message(subject, body, request.method, script_url(request_target(request), subject))
    reply = answer_now(app, message)
    if reply is not None:
        return reply_response(reply)
    return await _dispatch(request, message)


def answer_now(app: web.Application, message: Message, *, html: bool = True) -> Reply | None:
    """The Reply of a gateway request whose script answers without waiting (`Dispatcher.dispatch_now`), or None:
    then nothing of its scripts has taken effect, and a dispatch of its own answers it (`_dispatch`: 404, 503,
    durable scripts, the `_timeout`).

    The run holds an in-flight slot and counts as a request, as a dispatch does; with every slot taken it is
    not tried, and the dispatch refuses the request (or answers 404 for a subject without scripts). With `html`
    False, a subject whose script is an HTML script is not answered here either.
    """
    in_flight = app[IN_FLIGHT]
    if not in_flight.try_acquire():
        return None
    try:
        reply = app[DISPATCHER].dispatch_now(message, html=html)
    finally:
        in_flight.release()
    if reply is not None and (metrics := app.get(METRICS)) is not None:
        metrics.count_message("http")
    return reply


async def _dispatch(request: web.Request, message: Message) -> web.Response:
    """Run the scripts of a request as a task of their own, and answer their Reply or the `_timeout` that ran out."""
    app = request.app
    subject = message.subject
    dispatcher = app[DISPATCHER]
    try:
        scripts = await dispatcher.scripts_for(subject)
    except NoScripts as exc:
        if exc.durable and DURABLE in app:
            return await durable_response(app[DURABLE], request, subject, message.payload)
        return not_found(subject)
    except StoreError as exc:  # logged by the dispatcher
        return text_response(500, f"Error: failed to get scripts for subject: {exc}")
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.count_message("http")  # a request for a subject with scripts, whether it runs or gets a 503
    # HTTP shares the in-flight bound with NATS, but where NATS waits for a slot, a request is refused.
    in_flight = app[IN_FLIGHT]
    if not in_flight.try_acquire():
        log.debug("HTTP request refused, every in-flight slot is taken subject=%s", subject)
        return busy_response(in_flight.limit)
    # The dispatch is its own task, owned by TASKS (which shutdown waits for); it holds the slot until it ends.
    task = app[TASKS].start(dispatcher.run_all(scripts, message), name=f"msgscript:http:{subject}")
    task.add_done_callback(lambda _: in_flight.release())
    try:
        finished = await wait_done(task, request_timeout_s(request))
    finally:
        if not task.done():
            # The wait ran out, or the client went away (aiohttp cancels the handler): nobody wants the result.
            task.cancel()
    if not finished:
        log.info("HTTP request timed out subject=%s, its dispatch is cancelled", subject)
        return text_response(503, DEADLINE_EXCEEDED)
    try:
        reply = task.result()
    except Exception as exc:
        # Logged with its traceback by TASKS, which owns the dispatch.
        return text_response(500, f"Error: internal error: {exc}")
    return reply_response(reply)
