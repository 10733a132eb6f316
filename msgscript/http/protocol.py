"""The gateway's HTTP connections: what they serve, read timeouts, and one quiet log line for each malformed request.

aiohttp bounds how long a connection may sit idle between requests, not how long a client may take to
send one: a client that sends its headers or its body a byte at a time holds the connection as long as
it likes. `GatewayConnection` gives each request a deadline for its headers and one for its body. It
also answers the requests the parser rejects (bad request line, headers, chunking, Content-Length)
with a 400 and one INFO line, where aiohttp logs an error with a traceback, and refuses the same way
what aiohttp's parser lets through but the server does not serve: HTTP versions other than 1.0 and 1.1,
an invalid Host, CONNECT (`request_rejection`). And it answers the simplest gateway requests itself
(msgscript.http.quick), with the bytes aiohttp would have written. aiohttp has no public hook for any of it,
so the connection class is aiohttp's `RequestHandler`, subclassed, and `GatewayRunner` is an `AppRunner`
whose server builds these connections (and leaves request bodies undecoded, for `body.read_body`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.http import HttpProcessingError, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from msgscript.durations import format_duration
from msgscript.errors import MsgscriptError

if TYPE_CHECKING:  # msgscript.http.quick reaches this module through the gateway's imports
    from msgscript.http.quick import QuickAnswers

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 75.0
"""How long a kept-alive connection may wait for its next request (aiohttp's default is an hour)."""
_PLAIN_UTF8 = "text/plain; charset=utf-8"
_STREAM_LIMIT_BYTES = 2**16  # aiohttp's own buffer limit of a request body stream


class BodyReadTimeout(MsgscriptError, TimeoutError):
    """Set on a request body that did not arrive within the body read timeout; readers of the body get it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"request body not received within {format_duration(timeout_s)}")


class UnsupportedVersion(MsgscriptError, HttpProcessingError):
    """Given by `request_rejection` for a request whose HTTP version has a later major than 1; answered 505."""

    code = 505


# What a client's own bytes (or its leaving) can raise while a connection reads a request.
_CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, BodyReadTimeout, ConnectionError)
# RFC 9112 §3.2 wants a Host that is a valid uri-host [":" port] (RFC 3986 §3.2.2): an IP literal in brackets,
# or a name of unreserved, sub-delims and percent-encoded characters (an IPv4 address is such a name).
_HOST = re.compile(
    r"(?:\[(?:[0-9A-Fa-f:.]+(?:%25[-A-Za-z0-9._~%]+)?|v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+)\]"
    r"|[-A-Za-z0-9._~!$&'()*+,;=]*(?:%[0-9A-Fa-f]{2}[-A-Za-z0-9._~!$&'()*+,;=]*)*)"
    r"(?::[0-9]*)?"
)


_SIMPLE_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# One path segment of characters that need no decoding (no `%`), without a query.
_SIMPLE_TARGET = re.compile(rb"/[-A-Za-z0-9._~!$&'()*+,;=:@]+")
# A token, a colon (no space before it), then visible ASCII, spaces and tabs: no obs-fold, no stray CR or LF.
_SIMPLE_HEADER = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):([\t\x20-\x7e]*)")
_SIMPLE_HEAD_BYTES = 8190
"""aiohttp's limit on one header line: a simple request's whole head stays within it."""
_SIMPLE_MAX_HEADERS = 32
"""Well under aiohttp's limit on the number of header lines (128), which answers more with a 400."""
_NOT_SIMPLE_HEADERS = frozenset({b"transfer-encoding", b"expect", b"content-encoding", b"upgrade"})


@functools.lru_cache(maxsize=256)  # clients send the same few hosts again and again
def valid_host(host: str) -> bool:
    """Whether a Host header's value is a uri-host with an optional port."""
    return _HOST.fullmatch(host) is not None


def simple_request(data: bytes) -> tuple[str, str, bytes] | None:
    """The method, target and body of `data` when it is exactly one whole request of the plainest kind; else None.

    The plainest kind: an HTTP/1.1 request line with a common method and a one-segment target that needs no
    decoding; at most 32 header lines of a token, a colon and visible ASCII; one valid Host; at most one
    Content-Length, and no Transfer-Encoding, Expect, Content-Encoding or Upgrade, nor a Connection other than
    keep-alive; a head within aiohttp's line limit; and a body that is the rest of `data`. aiohttp's parser
    reads such a request the same way, and reads everything else.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > _SIMPLE_HEAD_BYTES:
        return None
    lines = data[:end].split(b"\r\n")
    if len(lines) > _SIMPLE_MAX_HEADERS + 1:
        return None
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return None
    raw_method, raw_target, _ = request_line
    method = raw_method.decode("latin-1")
    if method not in _SIMPLE_METHODS or _SIMPLE_TARGET.fullmatch(raw_target) is None:
        return None
    length = 0
    seen_length = False
    host = None
    for line in lines[1:]:
        header = _SIMPLE_HEADER.fullmatch(line)
        if header is None:
            return None
        name = header[1].lower()
        value = header[2].strip(b" \t")
        if name == b"content-length":
            if seen_length or not value.isdigit():
                return None
            seen_length, length = True, int(value)
        elif name == b"host":
            if host is not None:
                return None
            host = value.decode("ascii")
        elif name == b"connection":
            if value.lower() != b"keep-alive":
                return None
        elif name in _NOT_SIMPLE_HEADERS:
            return None
    start = end + 4
    if host is None or len(data) != start + length or not valid_host(host):
        return None
    return method, raw_target.decode("ascii"), data[start:]


def request_rejection(message: RawRequestMessage) -> HttpProcessingError | None:
    """Why a request the parser accepted is not served, or None; runs for every request, so it stays cheap.

    Only HTTP/1.0 and HTTP/1.1 are served (HTTP/0.9 is a 400: its client could not read a status line; a later
    major is a 505), the Host header must be valid, and CONNECT is refused: this server is no proxy.
    """
    version = message.version
    if version != HttpVersion11 and version != HttpVersion10:
        if version.major < 1:
            return BadHttpMessage("HTTP/0.9 is not supported")
        return UnsupportedVersion(
            message=f"HTTP/{version.major}.{version.minor} is not supported, only HTTP/1.0 and HTTP/1.1"
        )
    host = message.headers.get(hdrs.HOST)
    if host is not None and not valid_host(host):
        return BadHttpMessage("invalid Host header")
    if message.method == hdrs.METH_CONNECT:
        return BadHttpMessage("CONNECT is not supported, this server is not a proxy")
    return None


def first_line(text: str) -> str:
    """The first non-blank line of a parser message, without its trailing colon (aiohttp adds a diagram below)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip().rstrip(":")
    return "malformed request"


def _timeout_response(text: str) -> bytes:
    """A whole `408 Request Timeout` response that closes the connection, for when no request object exists."""
    body = text.encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        f"Content-Type: {_PLAIN_UTF8}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayConnection(web.RequestHandler):
    """One HTTP connection: aiohttp's handling, plus the read deadlines and quiet answers to malformed requests.

    The header deadline runs from the connection's start, and from the first byte of each later request,
    until the request's headers are complete; the body deadline runs from there until its body is. A
    request that misses its header deadline is answered 408 and the connection closed (it is just closed
    if it sent nothing, or after the response under way if an earlier request is still being answered).
    A body that misses its deadline fails with BodyReadTimeout for whoever reads it (the gateway answers
    408) and the connection closes after the response.

    A request that arrives whole while aiohttp's loop waits for one is offered to QuickAnswers, which may answer
    it here: nothing earlier on the connection is left unanswered then, so the answers keep their order. While
    every read of the connection has been exactly one whole request of the plainest kind (`simple_request`),
    aiohttp's parser holds nothing, and such a request is offered without it; the first read that is anything
    else goes to aiohttp's parser, which reads all that follows.
    """

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = manager.header_timeout_s
        self._body_timeout_s = manager.body_timeout_s
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the body being received, until it is complete
        self._partial = False  # some bytes of a request whose headers are not complete have arrived
        self._quick = manager.quick
        self._simple = manager.quick is not None  # every read so far was one simple request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the header deadline with the connection: a client that connects and says nothing is a stall too."""
        super().connection_made(transport)
        self._arm(self._header_timeout_s, self._headers_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the deadlines with the connection."""
        self._disarm()
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does, move the deadlines along with what the bytes completed, and answer here a request
        that QuickAnswers takes."""
        if self._force_close or self._close:
            super().data_received(data)
            return
        if self._simple and data:
            request = simple_request(data)
            if request is None:
                self._simple = False  # aiohttp's parser may keep part of this read: it reads everything from now on
            elif self._answered_simply(*request):
                return
        messages = self._messages
        queued = len(messages)
        # aiohttp's loop waits on this future for requests; it is woken below, unless the request is answered here.
        waiter, self._waiter = self._waiter, None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        if len(messages) > queued:
            self._disarm()
            self._partial = False
            for index in range(queued, len(messages)):
                message, payload = messages[index]
                if isinstance(message, RawRequestMessage):
                    if (rejection := request_rejection(message)) is not None:
                        # Answered like a request the parser rejected: by `handle_error`, then the connection closes
                        # (its body, if any, is not waited for).
                        messages[index] = (_ErrInfo(rejection.code, rejection, rejection.message), EMPTY_PAYLOAD)
                        self._body = None
                        continue
                    self._body = None if payload.is_eof() else payload
                else:
                    self._fail_body(first_line(message.message))
            if self._body is not None:
                self._arm(self._body_timeout_s, self._body_timed_out)
            if waiter is None or waiter.done():
                return  # aiohttp's loop is busy with an earlier request, and finds these when it is done
            # aiohttp's loop waits: there is no earlier request for an answer written here to overtake.
            if len(messages) == 1 and self._answered_here():
                return
            waiter.set_result(None)
        elif self._body is not None:
            if self._body.is_eof():
                self._body = None
                self._disarm()
        elif data:
            self._partial = True
            if self._deadline is None:
                # The first bytes of the next request: its headers have their deadline from now.
                self._arm(self._header_timeout_s, self._headers_timed_out)

    def _answered_here(self) -> bool:
        """Answer the one queued request through QuickAnswers if it takes it, as aiohttp's loop would; True if done."""
        quick = self._quick
        message, payload = self._messages[0]
        transport = self.transport
        if (
            quick is None
            or not isinstance(message, RawRequestMessage)
            or not payload.is_eof()
            or payload.exception() is not None
            or transport is None
            or transport.is_closing()
            or not self._keepalive
            or not quick.wants(message, payload.total_bytes)
        ):
            return False
        body = payload.read_nowait()
        response = quick.answer(message, body)
        if response is None:
            if body:  # read for nothing: the usual way gets it in a stream of its own
                self._messages[0] = (message, self._stream_of(body))
            return False
        self._messages.popleft()
        if self._parser is not None:
            self._parser.message_consumed()  # what aiohttp's loop does with each request it takes
        self._send(transport, response)
        return True

    def _answered_simply(self, method: str, target: str, body: bytes) -> bool:
        """Answer a simple request that aiohttp's parser has not seen, if aiohttp's loop waits and QuickAnswers takes
        it; True if done."""
        quick = self._quick
        waiter = self._waiter
        transport = self.transport
        if (
            quick is None
            or waiter is None
            or waiter.done()
            or self._messages
            or transport is None
            or transport.is_closing()
            or not self._keepalive
        ):
            return False
        response = quick.answer_simple(method, target, body)
        if response is None:
            return False
        self._request_count += 1  # as aiohttp counts the requests it parses
        self._disarm()  # the header deadline of a request that came whole
        self._partial = False
        self._send(transport, response)
        return True

    def _send(self, transport: asyncio.Transport, response: bytes) -> None:
        """Write a response answered here, with what aiohttp's loop does after each response it writes."""
        if self._manager is not None:
            self._manager.requests_count += 1
        transport.write(response)
        # The idle timeout of the connection runs from now.
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _stream_of(self, body: bytes) -> StreamReader:
        """A finished request body stream holding `body`."""
        stream = StreamReader(self, _STREAM_LIMIT_BYTES, loop=self._loop)
        stream.feed_data(body)
        stream.feed_eof()
        return stream

    def _fail_body(self, reason: str) -> None:
        """The parser rejected the bytes after a body had started (bad chunking): fail that body's readers."""
        body, self._body = self._body, None
        if body is None or body.is_eof():
            return  # a rejected request of its own, answered 400 by `handle_error`
        if body.exception() is None:
            body.set_exception(web.RequestPayloadError(reason))
        # Whoever reads the body answers (and logs) once; the parser's own error entry is never reached.
        self.close()

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _client(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def _headers_timed_out(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        limit = format_duration(self._header_timeout_s)
        if self._request_in_progress or self._messages:
            # An earlier request is being answered on this connection: close once its response is out.
            log.info(
                "HTTP request headers not received within %s client=%s, closing after the response",
                limit,
                self._client(),
            )
            self.close()
            return
        if self._partial:
            log.info("HTTP request headers not received within %s client=%s, answering 408", limit, self._client())
            transport.write(_timeout_response(f"Error: request headers not received within {limit}"))
        else:
            log.debug("HTTP connection sent no request within %s client=%s, closing", limit, self._client())
        self.force_close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        body, self._body = self._body, None
        if body is None or self.transport is None:
            return
        if body.exception() is None:  # not already failed (and answered) for a broken encoding, say
            log.info(
                "HTTP request body not received within %s client=%s",
                format_duration(self._body_timeout_s),
                self._client(),
            )
            body.set_exception(BodyReadTimeout(self._body_timeout_s))
        self.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request the parser or `request_rejection` refused (4xx, 505) with one INFO line; 5xx to aiohttp."""
        if status >= 500 and not isinstance(exc, UnsupportedVersion):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, HttpProcessingError) and exc.message:
            reason = first_line(exc.message)
        else:
            reason = first_line(message or str(exc or ""))
        log.info("bad HTTP request client=%s: %s", self._client(), reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way when the request was found malformed")
        response = web.Response(
            status=status, body=f"Error: bad request: {reason}".encode(), headers={"Content-Type": _PLAIN_UTF8}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Log errors the client caused (a body it broke, sent too slowly or left) at debug level, once answered."""
        exc = kw.get("exc_info")
        if isinstance(exc, _CLIENT_FAULTS):
            log.debug("HTTP connection closed client=%s: %s", self._client(), first_line(str(exc)))
            return
        super().log_exception(*args, **kw)


class GatewayServer(web.Server):
    """aiohttp's server for one application, with each connection a GatewayConnection."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        header_timeout_s: float,
        body_timeout_s: float,
        quick: QuickAnswers | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.quick = quick

    def __call__(self) -> web.RequestHandler:
        """A new connection (the protocol factory the listening socket calls)."""
        return GatewayConnection(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner serving its application through a GatewayServer, whose connections answer what `quick` takes."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float,
        body_timeout_s: float,
        quick: QuickAnswers | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT_S)
        # Bodies reach the handlers as sent: `body.read_body` decodes every coding, strictly and within bounds.
        kwargs["auto_decompress"] = False
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._quick = quick

    async def _make_server(self) -> web.Server:
        # aiohttp's own server carries the application's handler and settings; serve them with our connections.
        plain = await super()._make_server()
        return GatewayServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout_s=self._header_timeout_s,
            body_timeout_s=self._body_timeout_s,
            quick=self._quick,
            **plain._kwargs,
        )
