"""Durable scripts: the JetStream stream that captures their subjects, one consumer per script, and the deliveries.

A script with `--* durable: true` runs from JetStream instead of core NATS, at least once: its message is
acknowledged only after the script succeeded, redelivered with a backoff after a failure, and published as a
dead letter after its last attempt (docs/durable.md). Every instance shares the script's durable consumer, so
each message is handled once across the cluster unless an instance fails while handling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from msgscript import tracing
from msgscript.catalog import Catalog
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.inflight import InFlightLimit
from msgscript.message import MSG_ID_HEADER, Delivery, Message, Reply, Result
from msgscript.script import Script
from msgscript.store.base import Resync
from msgscript.subjects import is_valid_subject, matches

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.metrics import Metrics

log = logging.getLogger(__name__)

REPLY_TO_HEADER = "Msgscript-Reply-To"
DUPLICATE_WINDOW_S = 120.0
"""How long the stream remembers a `Nats-Msg-Id`, to store a message published twice only once."""
ACK_WAIT_S = 30.0
"""How long the server waits for an acknowledgement before it redelivers (a running script renews it)."""
PROGRESS_EVERY_S = 10.0
"""How often a running script's message is marked in progress, so that it is not redelivered mid-run."""
INACTIVE_THRESHOLD_S = 24 * 3600.0
"""A consumer nobody fetched from for this long (its script is gone) is removed by the server."""
FETCH_WAIT_S = 2.0
"""How long one fetch waits for messages; a stopping daemon waits at most this for its fetches to end."""
MAX_BATCH = 64
"""The most messages one fetch asks for (never more than the free in-flight slots)."""
SETTLE_TIMEOUT_S = 5.0
"""How long an acknowledgement or a dead letter may take before it is given up (the message then comes back)."""
RESYNC_RETRY_S = 5.0
"""How long to wait before trying again to set up a stream or consumer that failed (NATS away, say)."""
STATUS_HEADER = "Status"
PULL_ENDED = frozenset({"404", "408"})
"""The statuses that end a pull request in the normal way: no messages now, or its expiry came."""
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def consumer_name(script: Script) -> str:
    """The durable consumer of a script: readable, and distinct for each (subject, name) pair."""
    digest = hashlib.sha1(f"{script.subject}\0{script.name}".encode()).hexdigest()[:10]
    readable = _NAME_UNSAFE.sub("_", script.name)[:40].strip("_") or "script"
    return f"msgscript_{readable}_{digest}"


def covered(subject: str, patterns: Sequence[str]) -> bool:
    """True when a pattern other than `subject` itself already captures every subject `subject` does."""
    return any(pattern != subject and matches(pattern, subject) for pattern in patterns)


def position(msg: Msg) -> tuple[str, int, int]:
    """The stream, stream sequence and delivery count of a JetStream message, read from its reply subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…`, with a domain and an account hash before the
    stream in the newer form). nats-py's `metadata` reads the same and more, at several times the cost."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return tokens[2], int(tokens[5]), int(tokens[4])
    if len(tokens) >= 11:
        return tokens[4], int(tokens[7]), int(tokens[6])
    meta = msg.metadata
    return meta.stream, meta.sequence.stream, meta.num_delivered


def retry_delay_s(script: Script, delivery: int) -> float:
    """The delay before the redelivery that follows failed delivery number `delivery` (1-based)."""
    backoff = script.backoff_s
    return backoff[min(delivery, len(backoff)) - 1] if backoff else 0.0


@dataclass
class _Consumer:
    """One durable script's consumer in this daemon, and the task that fetches for it."""

    script: Script
    stream: str
    fetcher: asyncio.Task[None] | None = None

    def stop(self) -> None:
        if self.fetcher is not None:
            self.fetcher.cancel()


class DurableConsumers:
    """Keeps a consumer for every durable script in the store, and runs the deliveries it fetches.

    Use it as an async context manager, entered after the NATS connection and the dispatcher exist. On exit it
    stops fetching, lets deliveries in progress finish for the grace period and gives back (naks) the rest.
    """

    def __init__(
        self,
        nc: Client,
        dispatcher: Dispatcher,
        catalog: Catalog,
        settings: Settings,
        *,
        in_flight: InFlightLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._stream = settings.stream
        self._dlq_prefix = settings.dlq_prefix
        self._grace_period_s = settings.grace_period_s
        self._max_ack_pending = settings.max_in_flight
        self._in_flight = in_flight
        self._metrics = metrics
        self._consumers: dict[str, _Consumer] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        # The deliveries whose script runs now: their message, and when its ack wait was last renewed.
        self._running: dict[asyncio.Task[Any] | None, tuple[Msg, float]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self._resync = Resync(self.sync, what="durable scripts' consumers", retry_s=RESYNC_RETRY_S)
        self._stopping = False

    async def __aenter__(self) -> DurableConsumers:
        try:
            await self.sync()
        except Exception as exc:
            log.error("failed to set up the durable scripts' consumers, trying again: %s", exc)
            self._resync.schedule()
        self._catalog.add_listener(self._resync.schedule)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_in_progress(), name="msgscript:in-progress")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        self._resync.close()
        # Each fetcher ends once its pull request does (within FETCH_WAIT_S), giving back what still arrives.
        fetchers = [consumer.fetcher for consumer in self._consumers.values() if consumer.fetcher is not None]
        self._consumers.clear()
        if fetchers:
            _, late = await asyncio.wait(fetchers, timeout=FETCH_WAIT_S + 2)
            for fetcher in late:
                fetcher.cancel()
        if self._deliveries:
            log.info("waiting for %d durable messages in progress", len(self._deliveries))
            _, pending = await asyncio.wait(set(self._deliveries), timeout=self._grace_period_s)
            for task in pending:
                task.cancel()  # each gives its message back before it ends
            if pending:
                await asyncio.wait(pending, timeout=SETTLE_TIMEOUT_S + 1)
        if self._keeper is not None:
            self._keeper.cancel()

    async def publish(self, subject: str, payload: bytes, msg_id: str = "") -> api.PubAck:
        """Publish into the stream capturing `subject` and wait for it to be stored (the HTTP gateway's way in)."""
        headers = tracing.headers({MSG_ID_HEADER: msg_id} if msg_id else None)
        return await self._js.publish(subject, payload, headers=headers, timeout=SETTLE_TIMEOUT_S)

    async def capture(self, subjects: Sequence[str]) -> None:
        """Make sure the daemon's stream exists and captures `subjects` too (the schedules' ticks)."""
        async with self._sync_lock:
            await self._capture(subjects)

    async def _durable_scripts(self) -> dict[str, Script]:
        return {consumer_name(script): script for script in await self._catalog.scripts() if script.durable}

    async def sync(self) -> None:
        """Capture the durable scripts' subjects, and start (or stop) fetching for the scripts the store gained
        (or lost). A script whose stream or consumer cannot be set up is logged and tried again later."""
        async with self._sync_lock:
            wanted = await self._durable_scripts()
            for name in sorted(set(self._consumers) - set(wanted)):
                consumer = self._consumers.pop(name)
                consumer.stop()
                log.info(
                    "stopped consuming for durable script=%s subject=%s", consumer.script.name, consumer.script.subject
                )
            if wanted:
                # The daemon's stream keeps the dead letters of every durable script, on a user's stream or not.
                await self._capture(sorted({s.subject for s in wanted.values() if not s.stream}))
            failed = False
            for name, script in sorted(wanted.items()):
                stream = script.stream or self._stream
                current = self._consumers.get(name)
                if current is not None and current.stream == stream:
                    current.script = script  # a new version: the next deliveries run it
                    continue
                if current is not None:
                    current.stop()
                try:
                    await self._ensure_consumer(name, script, stream)
                except Exception as exc:
                    log.error("cannot consume stream=%s for durable script=%s: %s", stream, script.name, exc)
                    self._consumers.pop(name, None)
                    failed = True
                    continue
                consumer = _Consumer(script=script, stream=stream)
                consumer.fetcher = asyncio.get_running_loop().create_task(
                    self._fetch_loop(name, consumer), name=f"msgscript:durable:{script.subject}:{script.name}"
                )
                self._consumers[name] = consumer
                log.info("consuming stream=%s for durable script=%s subject=%s", stream, script.name, script.subject)
            if failed:
                raise RuntimeError("some durable scripts have no consumer yet")

    async def _capture(self, subjects: Sequence[str]) -> None:
        """Make sure the daemon's stream exists and captures `subjects` (and the dead letters); it only grows."""
        wanted = [*subjects, f"{self._dlq_prefix}.>"]
        try:
            info = await self._js.stream_info(self._stream)
        except NotFoundError:
            kept = [s for s in wanted if not covered(s, wanted)]
            await self._js.add_stream(
                name=self._stream,
                subjects=kept,
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
            log.info("created stream=%s subjects=%s", self._stream, ",".join(kept))
            return
        config = info.config
        present = list(config.subjects or ())
        missing = [s for s in wanted if s not in present and not covered(s, present)]
        if not missing:
            return
        # A new wildcard may cover subjects already there: keep the broadest, so that no two overlap.
        merged = [*present, *missing]
        kept = [s for s in merged if not covered(s, merged)]
        await self._js.update_stream(config.evolve(subjects=kept))
        log.info("stream=%s now captures %s", self._stream, ",".join(missing))

    async def _ensure_consumer(self, name: str, script: Script, stream: str) -> None:
        await self._js.add_consumer(
            stream,
            api.ConsumerConfig(
                durable_name=name,
                description=f"msgscript durable script {script.name} on {script.subject}",
                filter_subject=script.subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_deliver=-1,  # the daemon counts the attempts itself: a dead letter, not a silent drop
                max_ack_pending=self._max_ack_pending,
                inactive_threshold=INACTIVE_THRESHOLD_S,
            ),
        )

    async def _fetch_loop(self, name: str, consumer: _Consumer) -> None:
        """Pull for one consumer while the daemon runs, never more messages than there are free in-flight slots.

        One pull request at a time, answered into an inbox whose callback starts each delivery as it arrives
        (nats-py's `fetch` waits for the messages one by one, which cost a task each). A request ends when
        its batch has come, or with a status (408 when it expires empty-handed, 409 when the consumer went).
        """
        pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{name}"
        inbox = self._nc.new_inbox()
        ended = asyncio.Event()
        wanted = 0
        status = ""

        async def on_msg(msg: Msg) -> None:
            nonlocal wanted, status
            code = msg.headers.get(STATUS_HEADER) if msg.headers else None
            if code is not None and not msg.reply:
                status = code
                ended.set()
                return
            wanted -= 1
            if wanted <= 0:
                ended.set()
            # Stopping: what the last pull still brings goes back at once, for another instance to take.
            self._start(msg.nak() if self._stopping else self._deliver(consumer, msg))

        subscription = await self._nc.subscribe(inbox, cb=on_msg)
        request = {"expires": int(FETCH_WAIT_S * 1e9)}
        try:
            while not self._stopping:
                try:
                    free = self._in_flight.limit - self._in_flight.in_use
                    if free <= 0:
                        # Everything is busy: wait for a slot to come free, then let it go again for the pull.
                        await self._in_flight.acquire()
                        self._in_flight.release()
                        continue
                    wanted, status = min(free, MAX_BATCH), ""
                    ended.clear()
                    await self._nc.publish(pull_subject, json.dumps({**request, "batch": wanted}).encode(), inbox)
                    # The server ends an unfinished request at its expiry; the extra second covers a lost answer.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ended.wait(), FETCH_WAIT_S + 1)
                    if status and status not in PULL_ENDED:
                        log.warning("pulling for durable script=%s: status %s", consumer.script.name, status)
                        await asyncio.sleep(RESYNC_RETRY_S)
                        await self._ensure_consumer(name, consumer.script, consumer.stream)
                except Exception as exc:
                    log.warning("pulling for durable script=%s failed, trying again: %s", consumer.script.name, exc)
                    await asyncio.sleep(RESYNC_RETRY_S)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.unsubscribe(), SETTLE_TIMEOUT_S)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, consumer: _Consumer, msg: Msg) -> None:
        """Run one delivery under an in-flight slot, then acknowledge it, give it back for a retry, or
        dead-letter it."""
        # Pulls ask for no more than the free slots, so this rarely waits (only when core NATS took some since).
        await self._in_flight.acquire()
        try:
            if self._metrics is not None:
                self._metrics.count_message("jetstream")
            headers = msg.headers or {}
            if not tracing.enabled():
                await self._run_delivery(consumer.script, msg, headers)
                return
            attributes = {"nats.subject": msg.subject, "nats.message_size": len(msg.data)}
            parent = tracing.extract(headers)
            with tracing.span("jetstream.handle_message", kind="consumer", parent=parent, attributes=attributes):
                await self._run_delivery(consumer.script, msg, headers)
        finally:
            self._in_flight.release()

    async def _run_delivery(self, script: Script, msg: Msg, headers: dict[str, str]) -> None:
        stream, sequence, delivered = position(msg)
        delivery = Delivery(
            id=headers.get(MSG_ID_HEADER) or str(sequence), sequence=sequence, delivery=delivered, stream=stream
        )
        message = Message(subject=msg.subject, payload=msg.data, delivery=delivery)
        task = asyncio.current_task()
        self._running[task] = (msg, asyncio.get_running_loop().time())  # see _keep_in_progress
        try:
            result = await self._dispatcher.run(script, message)
        except asyncio.CancelledError:
            # The daemon stops past its grace period: another instance gets the message at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.nak(), SETTLE_TIMEOUT_S)
            raise
        finally:
            del self._running[task]
        try:
            if not result.error:
                await msg.ack()  # a publish: it does not wait for the server
            elif delivery.delivery <= script.retries:
                delay = retry_delay_s(script, delivery.delivery)
                log.info(
                    "durable script=%s failed on delivery %d of seq=%d, retrying in %gs: %s",
                    script.name,
                    delivery.delivery,
                    sequence,
                    delay,
                    result.error,
                )
                await asyncio.wait_for(msg.nak(delay=delay), SETTLE_TIMEOUT_S)
                return
            else:
                await self._dead_letter(script, msg, delivery, result.error)
                await asyncio.wait_for(msg.term(), SETTLE_TIMEOUT_S)
        except Exception as exc:
            # Not settled: the server redelivers it after the ack wait, and it runs again.
            log.warning("could not settle durable message seq=%d of script=%s: %s", sequence, script.name, exc)
            return
        await self._reply(headers, result)

    async def _keep_in_progress(self) -> None:
        """Mark the messages of scripts running for PROGRESS_EVERY_S in progress, so that the server does not
        redeliver them mid-run; one task for all of them, rather than a timer per delivery."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S / 2)
            now = loop.time()
            for task, (msg, renewed) in list(self._running.items()):
                if now - renewed >= PROGRESS_EVERY_S and task in self._running:
                    self._running[task] = (msg, now)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(msg.in_progress(), SETTLE_TIMEOUT_S)

    async def _dead_letter(self, script: Script, msg: Msg, delivery: Delivery, error: str) -> None:
        """Store the message under the dead-letter subject, with why and after how many deliveries it failed."""
        subject = f"{self._dlq_prefix}.{msg.subject}"
        headers = dict(msg.headers or {})
        headers.pop(MSG_ID_HEADER, None)  # the dead letter is a new message, not a duplicate of the original
        headers.update(
            {
                "Msgscript-Error": _header_value(error),
                "Msgscript-Script": _header_value(script.name),
                "Msgscript-Deliveries": str(delivery.delivery),
                "Msgscript-Sequence": str(delivery.sequence),
            }
        )
        await self._js.publish(subject, msg.data, headers=headers, timeout=SETTLE_TIMEOUT_S)
        log.warning(
            "durable script=%s gave up on seq=%d after %d deliveries, dead letter on %s: %s",
            script.name,
            delivery.sequence,
            delivery.delivery,
            subject,
            error,
        )

    async def _reply(self, headers: dict[str, str], result: Result) -> None:
        target = headers.get(REPLY_TO_HEADER, "")
        if not target:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("durable reply: %s", Reply(results=(result,)).to_json())
            return
        if not is_valid_subject(target):
            log.info("not replying to the invalid %s subject %r", REPLY_TO_HEADER, target)
            return
        try:
            await self._nc.publish(target, Reply(results=(result,)).to_json())
        except Exception as exc:
            log.warning("could not publish the durable reply to %s: %s", target, exc)


def _header_value(text: str) -> str:
    """`text` as one header line: NATS headers cannot hold line breaks."""
    return " ".join(text.splitlines())
