"""The daemon's nats-py client: TLS when asked for it, flushes that keep order, and a direct path for the messages
it answers at once.

nats-py writes a PING (what `flush` waits on the PONG of) to the socket at once, ahead of the commands still
waiting for its flusher: a `flush` right after `subscribe` could return before the server had the
subscription, and a request sent then got "no responders". Here a PING queues behind those commands.

nats-py hands every message to its subscription's task: its parser matches the MSG line with a regular
expression and awaits `_process_msg`, which builds a `Msg` and puts it in the subscription's queue; the
task takes it out and awaits the callback; a reply then goes through `publish`, which makes a future to
wake the flusher. For a message answered in a few microseconds that plumbing costs more than the answer.
A subscription with a direct handler (`subscribe_direct`) is offered each message as it is read, before
any of that: the handler answers it there and then (`publish_now` queues the reply for the flusher), or
declines, having done nothing, and the message goes the usual way. While this client has direct handlers,
the whole MSG lines at the start of what a read brought are split here, without the regular expression,
and offered by a plain call; the parser of nats-py takes over at the first anything else. The replies the
handlers queue during a read are written when its messages are done, by the read loop itself when the
socket has taken everything written before (else by the flusher, which waits for the socket to drain): a
hop through the flusher's task for each read would cost about as much as the reply.

This relies on private parts of nats-py: its parser's `parse`, `buf` and `state` with AWAITING_CONTROL_LINE,
the client's `_ps` (its parser), `_process_msg` (where a parsed message arrives), `_subs` and `_remove_sub`,
`_pending` with `_pending_data_size` and `_max_pending_size` (the commands the flusher writes),
`_send_command`, `_flush_pending` and `_flush_queue` (what wakes the flusher), `_send_ping` with `_pongs`,
`_status`, and `_transport` with the stream writer of nats-py's TCP transport (`_io_writer`; without it, the
flusher writes every reply). A nats-py without the others gets neither the direct path (every message takes
the usual way) nor the ordered PING; tests/test_nats_client.py fails then, so that it is noticed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats import errors
from nats.aio.client import PING_PROTO, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import parser

DirectHandler = Callable[[bytes, bytes, bytes], bool]
"""Called with a message's subject, reply subject and payload, before the message is queued: True when it
handled the message, False (having done nothing) to leave it to the subscription's callback. It runs in the
connection's read loop, so it must not block; work that waits goes to a task of its own."""

log = logging.getLogger(__name__)

_FLUSHING_STATES = frozenset({Client.CONNECTED, Client.DRAINING_SUBS})
_PARSER_NAMES = ("parse", "buf", "state")
_PRIVATE_METHODS = ("_process_msg", "_remove_sub", "_send_ping", "_send_command", "_flush_pending")
_PRIVATE_ATTRIBUTES = (
    "_subs",
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_flush_queue",
    "_status",
    "_pongs",
)


class NatsClient(Client):
    """A nats-py client that, when given a TLS context, never talks in plain text, and that offers the messages
    of some subscriptions to a direct handler first (`subscribe_direct`).

    nats-py upgrades to TLS only when the server requires it; a server offering no TLS (or a
    man in the middle hiding it) would get our credentials and messages in the clear. Given `tls`,
    this client insists on the upgrade and refuses a server that does not offer TLS.
    """

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DirectHandler] = {}
        self._kick: asyncio.Future[None] | None = None
        self._reading = False  # the read loop is handling what one read brought
        self._replies = False  # and publish_now queued replies meanwhile
        self.direct_path = (
            all(callable(getattr(Client, name, None)) for name in _PRIVATE_METHODS)
            and all(hasattr(self, name) for name in _PRIVATE_ATTRIBUTES)
            and isinstance(getattr(self, "_ps", None), parser.Parser)
            and all(hasattr(self._ps, name) for name in _PARSER_NAMES)
            and hasattr(parser, "AWAITING_CONTROL_LINE")
        )
        """Whether this nats-py has what the direct path and the ordered PING rely on."""
        if self.direct_path:
            self._ps = _Parser(self)

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and "tls" in self.options:
            if not (info.get("tls_required") or info.get("tls_available")):
                raise errors.SecureConnWantedError
            info["tls_required"] = True
        await super()._process_info(info, initial_connection)

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        if not self.direct_path:
            await super()._send_ping(future)
            return
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._pongs.append(future)
        await self._send_command(PING_PROTO)
        await self._flush_pending()

    async def subscribe_direct(
        self, subject: str, queue: str, cb: Callable[[Msg], Awaitable[None]], direct: DirectHandler
    ) -> Subscription:
        """Subscribe `subject` in `queue` with callback `cb`; each message is offered to `direct` first.

        A message goes to `cb` as usual when it has headers, when messages already wait in the subscription's
        queue (they keep their order), or when `direct` declines it.
        """
        sub = await self.subscribe(subject, queue=queue, cb=cb)
        if self.direct_path:
            self._direct[sub._id] = direct
        return sub

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if headers or not self._offer(sid, subject, reply, data):
            await super()._process_msg(sid, subject, reply, data, headers)

    def _offer(self, sid: int, subject: bytes, reply: bytes, data: bytes) -> bool:
        """Offer a message without headers to its subscription's direct handler; True when it was handled."""
        direct = self._direct.get(sid)
        if direct is None:
            return False
        sub = self._subs.get(sid)
        if sub is None or not sub._pending_queue.empty():
            return False
        # The handler runs inside the read loop: whatever it raises must not end the connection.
        try:
            handled = direct(subject, reply, data)
        except Exception:
            log.exception("the direct handler failed on a message on %s; the message is dropped", subject.decode())
            handled = True
        if handled:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            sub._received += 1
        return handled

    def publish_now(self, subject: bytes, payload: bytes) -> bool:
        """Queue a message for the flusher without waiting, as `publish` would queue it; False, with nothing
        queued, when it has to go through `publish` (not connected, or the pending buffer is full). Called while
        the read loop handles a read (by a direct handler), the message is written when that read is done."""
        flush_queue = self._flush_queue
        if not self.direct_path or self._status not in _FLUSHING_STATES or flush_queue is None:
            return False
        if len(payload) > self._max_payload:
            return False
        command = b"PUB %b %d\r\n%b\r\n" % (subject, len(payload), payload)
        if self._pending_data_size + len(command) > self._max_pending_size:
            return False
        self._pending.append(command)
        self._pending_data_size += len(command)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if self._reading:
            self._replies = True
        else:
            self._wake_flusher()
        return True

    def _wake_flusher(self) -> None:
        flush_queue = self._flush_queue
        if flush_queue is not None and flush_queue.empty():
            # The flusher settles what it takes off its queue unless it is done already: one done future serves.
            if self._kick is None:
                self._kick = asyncio.get_running_loop().create_future()
                self._kick.set_result(None)
            flush_queue.put_nowait(self._kick)

    def _write_replies(self) -> None:
        """Write what publish_now queued during a read: at once when the socket has taken all that was written
        before, else through the flusher (which waits for the socket to drain)."""
        self._replies = False
        if not self._pending:
            return
        writer = getattr(self._transport, "_io_writer", None)
        if (
            self._status in _FLUSHING_STATES
            and isinstance(writer, asyncio.StreamWriter)
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() == 0
        ):
            writer.writelines(self._pending)
            self._pending = []
            self._pending_data_size = 0
        else:
            self._wake_flusher()


class _Parser(parser.Parser):
    """nats-py's parser, but the whole MSG lines at the start of what a read brought are split here and offered
    to their direct handlers by a plain call; the parser of nats-py takes over at the first anything else
    (another operation, a message cut by the end of the read, a line it would reject), with the rest."""

    nc: NatsClient

    async def parse(self, data: bytes = b"") -> None:
        nc = self.nc
        nc._reading = True
        try:
            await self._parse(data)
        finally:
            nc._reading = False
            if nc._replies:
                nc._write_replies()

    async def _parse(self, data: bytes) -> None:
        nc = self.nc
        if self.buf or self.state != parser.AWAITING_CONTROL_LINE or not nc._direct:
            await super().parse(data)
            return
        size = len(data)
        start = 0
        while data.startswith(b"MSG ", start):
            eol = data.find(b"\r\n", start)
            if eol < 0:
                break
            fields = data[start + 4 : eol].split()
            if len(fields) == 3:
                subject, sid, length = fields
                reply = b""
            elif len(fields) == 4:
                subject, sid, reply, length = fields
            else:
                break
            if not (sid.isdigit() and length.isdigit()):
                break
            begin = eol + 2
            end = begin + int(length)
            if end + 2 > size:
                break
            payload = data[begin:end]
            start = end + 2  # the payload's CRLF, skipped unread as nats-py's parser does
            number = int(sid)
            if not nc._offer(number, subject, reply, payload):
                await Client._process_msg(nc, number, subject, reply, payload, b"")
        if start < size:
            await super().parse(data[start:] if start else data)
