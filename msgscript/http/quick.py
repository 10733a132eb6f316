"""Answers written by the connection itself, for gateway requests that need nothing of aiohttp's request handling.

aiohttp's handling of one request (a task, the request object, routing, middlewares, the response object and
its writer) costs about as much CPU as a whole request to a bare aiohttp handler. `POST /funcs.hello` needs
none of it when its script answers at once (`Dispatcher.dispatch_now`): GatewayConnection hands such a request
to `QuickAnswers.answer`, which runs it and gives back the bytes aiohttp would have written. Everything else goes
the usual way (msgscript.http.gateway), which answers the same request the same way, byte for byte.

Parsing the request is the larger part of what is left, and most requests are of the plainest kind (one
segment, a few ordinary headers, a Content-Length, all in one read): the connection reads those without
aiohttp's parser (msgscript.http.protocol.simple_request) and hands them to `QuickAnswers.answer_simple`.
"""

from __future__ import annotations

import functools
import logging

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage

from msgscript import tracing
from msgscript.catalog import INTERNAL_SUBJECTS
from msgscript.http import gateway
from msgscript.http.gateway import PLAIN_UTF8, answer_now, script_url
from msgscript.http.keys import SETTINGS
from msgscript.message import Message, results_json
from msgscript.subjects import is_valid_subject

# What GatewayConnection uses of aiohttp's connection to answer a request in its stead (see `supported`).
_HANDLER_INTERNALS = (
    "_waiter",
    "_messages",
    "_manager",
    "_keepalive",
    "_keepalive_timeout",
    "_keepalive_handle",
    "_next_keepalive_close_time",
    "_process_keepalive",
    "_parser",
    "_loop",
    "_request_count",
)
MAX_BODY_BYTES = 64 * 1024
"""Larger bodies go the usual way: a script would not run inline on them anyway."""
# What aiohttp writes for the gateway's JSON answer to a kept-alive HTTP/1.1 request, Date and body aside.
_HEAD = (
    f"HTTP/1.1 200 OK\r\nContent-Type: {PLAIN_UTF8}\r\nContent-Length: %d\r\nDate: %s\r\n"
    f"Server: {SERVER_SOFTWARE}\r\n\r\n"
).encode()


class QuickAnswers:
    """The requests of one application that its connections answer themselves, and their answers.

    Answered here: a kept-alive HTTP/1.1 request, not HEAD, without Expect or Content-Encoding, whose target is
    `/<subject>` (one segment, not a route of its own such as `/healthz`), for a subject whose one script is not
    an HTML script and finishes inline. Not while a bearer token guards the gateway, tracing is
    on or the gateway's debug line is logged: those take the usual way.
    """

    @staticmethod
    def supported() -> bool:
        """Whether this aiohttp has what answering in the connection relies on; without it, every request goes
        the usual way (tests/test_http_protocol.py fails then, so that it is noticed)."""
        return all(hasattr(web.RequestHandler, name) for name in _HANDLER_INTERNALS)

    def __init__(self, app: web.Application) -> None:
        settings = app[SETTINGS]
        self._app = app
        self._enabled = not settings.http_token
        self._max_body_bytes = min(MAX_BODY_BYTES, settings.max_payload_bytes)
        # The one-segment paths that a route of their own serves (`/healthz`, `/metrics`, ...).
        self._routed = {
            resource.canonical for resource in app.router.resources() if isinstance(resource, web.PlainResource)
        }

    def _active(self) -> bool:
        return (
            self._enabled
            and not tracing.enabled()
            and not gateway.log.isEnabledFor(logging.DEBUG)  # the usual way logs a line for each request
        )

    def wants(self, message: RawRequestMessage, body_bytes: int) -> bool:
        """True when `answer` may answer this request (with a body of `body_bytes`, all arrived)."""
        return (
            body_bytes <= self._max_body_bytes
            and message.version == HttpVersion11
            and not message.should_close
            and not message.upgrade
            and message.method != hdrs.METH_HEAD
            and hdrs.EXPECT not in message.headers
            and hdrs.CONTENT_ENCODING not in message.headers
            and message.path[:1] == "/"
            and self._active()
        )

    def answer(self, message: RawRequestMessage, body: bytes) -> bytes | None:
        """The whole response to a request `wants` took, or None: then it goes the usual way and nothing of its
        scripts has taken effect."""
        return self._answer(message.method, message.url.path, message.path, body)

    def answer_simple(self, method: str, target: str, body: bytes) -> bytes | None:
        """`answer` for a request `simple_request` read (its target needs no decoding: it is its own path)."""
        if len(body) > self._max_body_bytes or not self._active():
            return None
        return self._answer(method, target, target, body)

    def _answer(self, method: str, path: str, target: str, body: bytes) -> bytes | None:
        subject = path[1:]
        if "/" in subject or path in self._routed or not _is_gateway_subject(subject):
            return None
        # Never an HTML script's answer: the page it makes is the usual way's to write.
        reply = answer_now(self._app, Message(subject, body, method, script_url(target, subject)), html=False)
        if reply is None:
            return None
        json = results_json(reply.results)
        return _HEAD % (len(json), rfc822_formatted_time().encode()) + json


@functools.lru_cache(maxsize=1024)  # a gateway sees the same few subjects again and again
def _is_gateway_subject(subject: str) -> bool:
    """True when the gateway runs scripts for `subject` (not an inbox, not an internal subject)."""
    return is_valid_subject(subject) and not subject.startswith("_INBOX.") and subject not in INTERNAL_SUBJECTS
