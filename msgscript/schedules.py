"""Scheduled scripts (`--* cron:`): each tick runs once across the daemons that share a NATS server.

Every daemon keeps a timer for each scheduled script of its store. When a tick comes due, each one publishes it
into the daemon's JetStream stream (`-stream`), on `msgscript.cron.<stream>`, with the message id
`<subject>/<name>@<tick time>`. The stream stores the first copy and answers the others as duplicates, so
exactly one daemon learns that its copy was stored: that one runs the script, `OnMessage(<subject>, "")`,
through the dispatcher as a message would run (lock, deadline, metrics), and deletes the stored tick (the
stream remembers its id for its duplicate window all the same). A tick that comes due more than half that window
late in a daemon (its loop or machine stalled) is skipped there, so that no late copy can be stored twice.
Ticks that came due while no daemon ran are never published, so never run.

Without JetStream on the NATS server (the embedded server has none), every daemon runs every tick itself, and
says so in its log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from msgscript import tracing
from msgscript.catalog import Catalog
from msgscript.config import Settings
from msgscript.cron import tick_text
from msgscript.dispatch import Dispatcher
from msgscript.inflight import InFlightLimit
from msgscript.jetstream import DUPLICATE_WINDOW_S, DurableConsumers
from msgscript.message import Message, Reply
from msgscript.script import Script
from msgscript.store.base import Resync

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.metrics import Metrics, TickOutcome

log = logging.getLogger(__name__)

TICK_SUBJECT_PREFIX = "msgscript.cron"
"""Ticks are published on `<prefix>.<stream>`: daemons on different streams keep their ticks apart."""
MAX_LATE_S = 60.0
"""The latest a daemon publishes a tick after its time (or half the stream's duplicate window, if shorter)."""
RETRY_S = 5.0
"""How long to wait before trying again to follow the store or to set up the stream, after a failure."""
STREAM_TIMEOUT_S = 5.0
"""How long a request to JetStream (stream info, deleting a tick) may take."""

_WAKE_EVERY_S = 20.0
_Mode = Literal["unknown", "stream", "local"]
_Key = tuple[str, str]


def tick_id(script: Script, tick: datetime) -> str:
    """The `Nats-Msg-Id` of one tick of a script: the same in every daemon, distinct for every tick."""
    return f"{script.subject}/{script.name}@{tick_text(tick)}"


async def _sleep_until(moment: datetime) -> None:
    """Sleep until the wall clock reaches `moment`. asyncio's timers follow the monotonic clock, which stands still
    while the machine sleeps and does not follow a clock that is set: waking up now and then notices both."""
    while (remaining_s := moment.timestamp() - time.time()) > 0:
        await asyncio.sleep(min(remaining_s, _WAKE_EVERY_S))


class Schedules:
    """Runs the scheduled scripts of the store on their ticks, each tick in one daemon of those sharing a stream.

    Use it as an async context manager, entered after the durable consumers (whose stream it shares). On exit
    its timers stop, and the runs in progress get the grace period to finish before they are cancelled.
    """

    def __init__(
        self,
        nc: Client,
        dispatcher: Dispatcher,
        catalog: Catalog,
        durable: DurableConsumers,
        settings: Settings,
        *,
        in_flight: InFlightLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self._js = nc.jetstream(timeout=STREAM_TIMEOUT_S)
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._durable = durable
        self._stream = settings.stream
        self._subject = f"{TICK_SUBJECT_PREFIX}.{settings.stream}"
        self._grace_period_s = settings.grace_period_s
        self._in_flight = in_flight
        self._metrics = metrics
        self._scripts: dict[_Key, Script] = {}
        self._timers: dict[_Key, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._mode: _Mode = "unknown"
        self._max_late_s = MAX_LATE_S
        self._resync = Resync(self.sync, what="schedules", retry_s=RETRY_S)
        self._setup = Resync(self._prepare, what="schedules' stream", retry_s=RETRY_S)

    async def __aenter__(self) -> Schedules:
        try:
            await self.sync()
        except Exception as exc:
            log.error("failed to set up the schedules, trying again: %s", exc)
            self._resync.schedule()
        self._catalog.add_listener(self._resync.schedule)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._resync.close()
        self._setup.close()
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        if timers:
            await asyncio.wait(timers)
        if self._tasks:
            log.info("waiting for %d scheduled runs in progress", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace_period_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def sync(self) -> None:
        """Start the timers of the scheduled scripts the store gained (or whose schedule changed), and stop those
        of the scripts it lost. A script changed otherwise keeps its timer; its next tick runs the new version."""
        wanted = {(s.subject, s.name): s for s in await self._catalog.scripts() if s.cron is not None}
        for key in sorted(set(self._timers) - set(wanted)):
            self._timers.pop(key).cancel()
            self._scripts.pop(key, None)
            log.info("schedule stopped script=%s subject=%s", key[1], key[0])
        if wanted and self._mode == "unknown":
            try:
                await self._prepare()  # before the first timer starts, so that its first tick finds the stream
            except Exception as exc:
                log.error("failed to set up the stream for the ticks, trying again: %s", exc)
                self._setup.schedule()
        for key, script in sorted(wanted.items()):
            previous = self._scripts.get(key)
            self._scripts[key] = script
            if key in self._timers:
                if previous is not None and previous.cron == script.cron:
                    continue
                self._timers.pop(key).cancel()
            timer = asyncio.get_running_loop().create_task(
                self._keep(key), name=f"msgscript:cron:{script.subject}:{script.name}"
            )
            timer.add_done_callback(self._finished)
            self._timers[key] = timer
            assert script.cron is not None
            log.info(
                "scheduled script=%s subject=%s cron=%r: %s",
                script.name,
                script.subject,
                script.cron.text,
                script.cron.describe(),
            )

    async def _prepare(self) -> None:
        """Have the daemon's stream capture the ticks and read its duplicate window; or find that NATS has no
        JetStream, and run the ticks locally."""
        if self._mode != "unknown":
            return
        try:
            await self._durable.capture([self._subject])
        except ServiceUnavailableError:
            # Nothing answers the JetStream API: the server runs without it.
            self._mode = "local"
            log.warning(
                "NATS has no JetStream: scheduled scripts run on every daemon that serves them, each tick once per "
                "daemon; enable JetStream for each tick to run once across the daemons"
            )
            return
        info = await self._js.stream_info(self._stream)
        window_s = info.config.duplicate_window or DUPLICATE_WINDOW_S
        self._max_late_s = min(MAX_LATE_S, window_s / 2)
        self._mode = "stream"
        log.info("scheduled ticks go through stream=%s subject=%s", self._stream, self._subject)

    async def _keep(self, key: _Key) -> None:
        """The timer of one scheduled script: wait for each tick, then start it (without waiting for its run)."""
        last: datetime | None = None
        while True:
            schedule = self._scripts[key].cron
            assert schedule is not None
            now = datetime.now(UTC)
            tick = schedule.next_after(now if last is None or now > last else last)
            if tick is None:
                log.warning("schedule of script=%s subject=%s has no run time left", key[1], key[0])
                return
            await _sleep_until(tick)
            last = tick
            script = self._scripts[key]
            self._start(self._tick(script, tick), f"msgscript:cron:{script.subject}:{script.name}:{tick_text(tick)}")

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("scheduled task %s failed", task.get_name(), exc_info=exc)

    async def _tick(self, script: Script, tick: datetime) -> None:
        """Claim one tick and run it, under an in-flight slot: a daemon with every slot taken publishes its copy
        late, and leaves the tick to one that has room."""
        await self._in_flight.acquire()
        try:
            late_s = time.time() - tick.timestamp()
            if late_s > self._max_late_s:
                log.warning(
                    "tick %s of script=%s subject=%s skipped: it came due %.1fs ago",
                    tick_text(tick),
                    script.name,
                    script.subject,
                    late_s,
                )
                self._count(script, "missed")
                return
            if self._mode == "unknown":
                log.warning(
                    "tick %s of script=%s subject=%s not run: the stream for the ticks is not set up yet",
                    tick_text(tick),
                    script.name,
                    script.subject,
                )
                self._count(script, "missed")
                return
            if self._mode == "stream" and not await self._claim(script, tick):
                return
            await self._run(script, tick)
        finally:
            self._in_flight.release()

    async def _claim(self, script: Script, tick: datetime) -> bool:
        """Publish the tick; True when this daemon's copy is the one the stream stored (so it runs here)."""
        try:
            ack = await self._durable.publish(self._subject, b"", tick_id(script, tick))
        except (nats.errors.Error, TimeoutError) as exc:
            if isinstance(exc, NoStreamResponseError):
                self._mode = "unknown"  # the stream is gone, or no longer captures the ticks: set it up again
                self._setup.schedule()
            log.warning(
                "tick %s of script=%s subject=%s not run: stream=%s did not store it: %s",
                tick_text(tick),
                script.name,
                script.subject,
                self._stream,
                exc,
            )
            self._count(script, "missed")
            return False
        if ack.duplicate:
            self._count(script, "elsewhere")
            return False
        # The stream has taken note of the id: the tick itself need not stay.
        self._start(self._forget(ack.stream, ack.seq), f"msgscript:cron:forget:{ack.seq}")
        return True

    async def _forget(self, stream: str, sequence: int) -> None:
        try:
            await self._js.delete_msg(stream, sequence)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("could not delete tick seq=%d from stream=%s: %s", sequence, stream, exc)

    async def _run(self, script: Script, tick: datetime) -> None:
        """Run one tick as a message would run, and log its result."""
        self._count(script, "run")
        if self._metrics is not None:
            self._metrics.count_message("cron")
        message = Message(subject=script.subject, payload=b"")
        if tracing.enabled():
            attributes = {"nats.subject": script.subject, "script.name": script.name, "cron.tick": tick_text(tick)}
            with tracing.span("cron.tick", attributes=attributes):
                result = await self._dispatcher.run(script, message)
        else:
            result = await self._dispatcher.run(script, message)
        if result.error:
            log.warning(
                "scheduled script=%s subject=%s failed on tick %s: %s",
                script.name,
                script.subject,
                tick_text(tick),
                result.error,
            )
        elif log.isEnabledFor(logging.DEBUG):
            reply = Reply(results=(result,)).to_json().decode("utf-8", "replace")
            log.debug(
                "scheduled script=%s subject=%s ran tick %s: %s", script.name, script.subject, tick_text(tick), reply
            )

    def _count(self, script: Script, outcome: TickOutcome) -> None:
        if self._metrics is not None:
            self._metrics.count_tick(script, outcome)
