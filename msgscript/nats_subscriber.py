"""The NATS subscriber: one subscription per subject with core scripts, plus the internal subjects."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from msgscript import tracing
from msgscript.catalog import INTERNAL_SUBJECTS, Catalog
from msgscript.config import NATS_CONNECT_TIMEOUT_S, Settings
from msgscript.dispatch import Dispatcher
from msgscript.inflight import InFlightLimit
from msgscript.message import Message, Reply, decode_message
from msgscript.nats_client import DirectHandler, NatsClient
from msgscript.store.base import Resync
from msgscript.subjects import has_wildcards, is_valid_pattern, is_valid_subject, matches

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.metrics import Metrics

log = logging.getLogger(__name__)

_ASYNC_ACK = b"{}"
RESYNC_RETRY_S = 1.0
"""How long to wait before updating the subscriptions again after a failure (NATS away, say)."""


def confine_subject(message: Message, arrival: str, subscription: str) -> Message:
    """The message with its envelope subject kept only if the message could have come on it directly.

    A Go envelope names the subject whose scripts run. Honouring any subject would let a client that may
    publish on `funcs.hello` run `funcs.admin`, past the NATS permissions; so the envelope subject counts
    only when it is a publishable subject that the subscription the message arrived through matches.
    Otherwise the scripts of the arrival subject run.
    """
    subject = message.subject
    if subject == arrival:
        return message
    if is_valid_subject(subject) and not subject.startswith("_INBOX.") and matches(subscription, subject):
        return message
    log.debug(
        "ignoring envelope subject=%s outside subscription=%s, running subject=%s", subject, subscription, arrival
    )
    return dataclasses.replace(message, subject=arrival)


class NatsSubscriber:
    """Subscribes every script subject and the internal subjects, and runs each message within the in-flight bound.

    A message whose script finishes without waiting (`Dispatcher.dispatch_now`) is answered as soon as it is
    read, when an in-flight slot is free (the client's direct path, see msgscript.nats_client), or else in the
    subscription's callback; every other message runs as a task of its own.

    Where script subjects overlap (`funcs.*` and `funcs.a`), NATS picks one subscription per queue
    group among all that match, so with a queue group each message arrives once. Without one, it
    arrives once per matching subscription and only the delivery through the first matching subject
    (in sorted order) is handled. Either way each message runs once per instance (once per queue group).
    """

    def __init__(
        self,
        nc: NatsClient,
        dispatcher: Dispatcher,
        catalog: Catalog,
        settings: Settings,
        *,
        in_flight: InFlightLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self._nc = nc
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._queue = settings.queue_group
        self._grace_period_s = settings.grace_period_s
        self._in_flight = in_flight  # shared with the HTTP gateway
        self._subs: dict[str, Subscription] = {}
        self._literal: set[str] = set()
        self._patterns: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._sync_lock = asyncio.Lock()
        self._resync = Resync(self.sync, what="NATS subscriptions", retry_s=RESYNC_RETRY_S)

    async def __aenter__(self) -> NatsSubscriber:
        for subject in INTERNAL_SUBJECTS:
            self._subs[subject] = await self._nc.subscribe(
                subject, queue=self._queue, cb=self._internal_handler(subject)
            )
        await self.sync()
        self._catalog.add_listener(self._resync.schedule)
        log.info("Starting message watch...")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._resync.close()
        # Stop intake: drain each subscription so messages already delivered to us still run.
        subs = list(self._subs.values())
        self._subs.clear()
        results = await asyncio.gather(
            *(asyncio.wait_for(sub.drain(), self._grace_period_s) for sub in subs),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("subscription drain did not finish: %s", result)
        if self._drains:
            await asyncio.wait(set(self._drains))  # each is bounded by the grace period
        if self._tasks:
            log.info("waiting for %d messages in flight", len(self._tasks))
            done, pending = await asyncio.wait(set(self._tasks), timeout=self._grace_period_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            log.info("stopped: %d messages finished, %d cancelled", len(done), len(pending))

    def _release(self, subject: str, sub: Subscription) -> None:
        """Stop taking messages for a subject whose scripts are gone; those already delivered still run."""

        async def drain() -> None:
            try:
                await asyncio.wait_for(sub.drain(), self._grace_period_s)  # type: ignore[no-untyped-call]
            except Exception as exc:
                log.warning("draining subject=%s did not finish: %s", subject, exc)

        task = asyncio.get_running_loop().create_task(drain(), name=f"msgscript:drain:{subject}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def sync(self) -> None:
        """Subscribe subjects the store gained and unsubscribe the ones it lost."""
        async with self._sync_lock:
            wanted: set[str] = set()
            for script in await self._catalog.scripts():
                if not is_valid_pattern(script.subject):
                    log.warning("not subscribing invalid subject %r", script.subject)
                elif not script.durable:  # durable scripts run from their stream (msgscript.jetstream) only
                    wanted.add(script.subject)
            current = set(self._subs) - set(INTERNAL_SUBJECTS)
            for subject in sorted(current - wanted):
                self._release(subject, self._subs.pop(subject))
                log.info("unsubscribed subject=%s", subject)
            for subject in sorted(wanted - current):
                self._subs[subject] = await self._nc.subscribe_direct(
                    subject, self._queue, self._script_handler(subject), self._direct_handler(subject)
                )
                log.debug("subscribed subject=%s queue=%s", subject, self._queue)
            self._literal = {s for s in wanted if not has_wildcards(s)}
            self._patterns = sorted(wanted - self._literal)
            # Make sure the server has our subscriptions before anyone is told we are ready.
            await self._nc.flush(timeout=int(NATS_CONNECT_TIMEOUT_S))

    def _owner(self, subject: str) -> str | None:
        """The first of our subscribed subjects (sorted) that matches a message subject."""
        candidates = [p for p in self._patterns if matches(p, subject)]
        if subject in self._literal:
            candidates.append(subject)
        return min(candidates) if candidates else None

    def _takes(self, subject: str, pattern: str) -> bool:
        """Whether a message that came through subscription `pattern` is ours to run (counted when it is)."""
        if subject.startswith("_INBOX."):
            return False
        if not self._queue and self._patterns and self._owner(subject) != pattern:
            return False
        if self._metrics is not None:
            self._metrics.count_message("nats")  # on arrival, before it may wait for a slot
        return True

    def _script_handler(self, pattern: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            if not self._takes(msg.subject, pattern):
                return
            if tracing.enabled():
                await self._spawn(self._handle(msg, pattern), msg.subject)
                return
            # Waiting for a slot here holds back this subscription's delivery queue: back-pressure.
            await self._in_flight.acquire()
            reply = self._answer_now(msg.subject, msg.reply, msg.data, pattern)
            if reply is not None:
                await self._respond_and_release(msg.reply, reply)

        return on_message

    def _direct_handler(self, pattern: str) -> DirectHandler:
        def on_direct(raw_subject: bytes, raw_reply: bytes, data: bytes) -> bool:
            # Without a free slot the message waits in the subscription's queue, as every message used to.
            if tracing.enabled() or not self._in_flight.try_acquire():
                return False
            subject = raw_subject.decode()
            if not self._takes(subject, pattern):
                self._in_flight.release()
                return True
            reply = self._answer_now(subject, raw_reply.decode(), data, pattern)
            if reply is None:
                return True
            # A reply publish_now refuses (over the max payload, the pending buffer full, the connection down)
            # is sent by a task, which keeps the slot until it is.
            if not raw_reply or self._nc.publish_now(raw_reply, reply.to_json()):
                self._in_flight.release()
            else:
                self._start(self._respond(raw_reply.decode(), reply), subject)
            return True

        return on_direct

    def _answer_now(self, subject: str, reply_to: str, data: bytes, subscription: str) -> Reply | None:
        """The reply to a message whose scripts finished without waiting, run right here; None when the message
        (with the slot taken for it) went to a task of its own."""
        try:
            message = confine_subject(decode_message(subject, data), subject, subscription)
            reply = None if message.is_async else self._dispatcher.dispatch_now(message)
        except Exception:
            log.exception("failed to handle message subject=%s", subject)
            return Reply(error="internal error while handling the message")
        if reply is None:
            self._start(self._handle_message(subject, reply_to, data, subscription, message), subject)
        return reply

    async def _respond_and_release(self, reply_to: str, reply: Reply) -> None:
        try:
            if reply_to:
                await self._respond(reply_to, reply)
        finally:
            self._in_flight.release()

    def _internal_handler(self, subject: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            await self._spawn(self._answer_internal(subject, msg), subject)

        return on_message

    async def _spawn(self, work: Coroutine[Any, Any, None], subject: str) -> None:
        # Waiting for a slot here holds back this subscription's delivery queue: back-pressure.
        await self._in_flight.acquire()
        self._start(work, subject)

    def _start(self, work: Coroutine[Any, Any, None], subject: str) -> None:
        """Run `work` as a task that gives back the in-flight slot taken for it when it ends."""
        task = asyncio.get_running_loop().create_task(work, name=f"msgscript:{subject}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.release()

    async def _handle(self, msg: Msg, subscription: str) -> None:
        if not tracing.enabled():
            await self._handle_message(msg.subject, msg.reply, msg.data, subscription)
            return
        with tracing.span(
            "nats.handle_message",
            kind="server",
            parent=tracing.extract(msg.headers),  # the sender's span, when the message carries trace context
            attributes={"nats.subject": msg.subject, "nats.message_size": len(msg.data)},
        ):
            await self._handle_message(msg.subject, msg.reply, msg.data, subscription)

    async def _handle_message(
        self, subject: str, reply_to: str, data: bytes, subscription: str, message: Message | None = None
    ) -> None:
        try:
            if message is None:
                message = confine_subject(decode_message(subject, data), subject, subscription)
            if message.is_async and reply_to:
                await self._nc.publish(reply_to, _ASYNC_ACK)
            reply = await self._dispatcher.dispatch(message)
            if not reply_to:
                return
            if not tracing.enabled():
                await self._respond(reply_to, reply)
                return
            with tracing.span("nats.handle_message.send_reply"):
                await self._respond(reply_to, reply)
        except Exception:
            log.exception("failed to handle message subject=%s", subject)
            if reply_to:
                await self._respond(reply_to, Reply(error="internal error while handling the message"))

    async def _answer_internal(self, subject: str, msg: Msg) -> None:
        try:
            reply = await self._catalog.answer(subject, msg.data)
        except Exception as exc:
            log.exception("failed to answer subject=%s", subject)
            reply = Reply(error=f"internal error: {exc}")
        if msg.reply:
            await self._respond(msg.reply, reply)

    def _reply_data(self, reply: Reply) -> bytes:
        """The reply's JSON, or an error in its place when it would not fit in a NATS message."""
        data = reply.to_json()
        if len(data) > self._nc.max_payload:
            data = Reply(error=f"reply of {len(data)} bytes exceeds the NATS max payload").to_json()
        return data

    async def _respond(self, reply_subject: str, reply: Reply) -> None:
        try:
            await self._nc.publish(reply_subject, self._reply_data(reply))
        except Exception as exc:
            log.error("failed to send reply to %s: %s", reply_subject, exc)
