"""The composition root: opens everything the daemon needs, in order, and closes it in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence

from msgscript.catalog import Catalog
from msgscript.compose import open_dispatcher, open_store
from msgscript.config import WORKER_VARIABLE, Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.etcd_client import open_etcd
from msgscript.http import http_site
from msgscript.inflight import InFlightLimit
from msgscript.jetstream import DurableConsumers
from msgscript.metrics import Metrics
from msgscript.nats_connect import connect_nats
from msgscript.nats_subscriber import NatsSubscriber
from msgscript.schedules import Schedules
from msgscript.supervisor import WorkerLink

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    listeners: Sequence[socket.socket] = (),
    on_stuck: Callable[[str], None] | None = None,
) -> AsyncIterator[Dispatcher]:
    """Start the daemon's parts; on exit stop intake, finish in-flight work and close everything.

    `listeners` are the HTTP gateway's sockets when the supervisor bound them (else it binds its own);
    `on_stuck` hears of executions stuck in a C call long past their deadline.
    """
    async with contextlib.AsyncExitStack() as stack:
        # One etcd client for the store, the cluster lock and the Lua `etcd` module; it dials on first use.
        etcd = await stack.enter_async_context(open_etcd(settings))
        try:
            store = await stack.enter_async_context(open_store(settings, etcd))
        except ConfigError as exc:
            raise ConfigError(f"failed to initialize the script store: {exc}") from exc
        log.info("Starting %s backend", settings.backend)
        nc = await stack.enter_async_context(connect_nats(settings))
        # One bound on the work in flight, whether it came over NATS or HTTP.
        in_flight = InFlightLimit(settings.max_in_flight)
        metrics = None
        if settings.metrics:
            # A registry per daemon, never the global one: several daemons may share a process (the tests do).
            metrics = Metrics(
                in_flight=lambda: in_flight.in_use,
                in_flight_limit=in_flight.limit,
                scripts_loaded=lambda: len(store),
                nats_reconnects=lambda: nc.stats["reconnects"],
                # One of several workers: its series are told apart by a `worker` label.
                worker=settings.env.get(WORKER_VARIABLE, "0") if settings.workers > 1 else "",
            )
        dispatcher = await stack.enter_async_context(
            open_dispatcher(settings, store, nc=nc, etcd=etcd, on_stuck=on_stuck, metrics=metrics)
        )
        catalog = Catalog(store)
        await stack.enter_async_context(
            NatsSubscriber(nc, dispatcher, catalog, settings, in_flight=in_flight, metrics=metrics)
        )
        durable = await stack.enter_async_context(
            DurableConsumers(nc, dispatcher, catalog, settings, in_flight=in_flight, metrics=metrics)
        )
        # `--* cron:` scripts; their ticks go through the durable consumers' stream.
        await stack.enter_async_context(
            Schedules(nc, dispatcher, catalog, durable, settings, in_flight=in_flight, metrics=metrics)
        )

        def readiness() -> str:
            # The store is loaded before the gateway listens (and through etcd outages serves what it holds).
            return "" if nc.is_connected else "NATS disconnected"

        # Entered last so that it stops first: in-flight HTTP requests finish while NATS and the executors are up.
        await stack.enter_async_context(
            http_site(
                dispatcher,
                catalog,
                settings,
                in_flight=in_flight,
                listeners=listeners,
                metrics=metrics,
                readiness=readiness,
                durable=durable,
            )
        )
        yield dispatcher


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    listeners: Sequence[socket.socket] = (),
    link: WorkerLink | None = None,
) -> None:
    """Run the daemon until a shutdown signal arrives (or `stop` is set).

    Under the supervisor (msgscript.supervisor), `link` tells it when the worker serves, and asks it for a
    fresh worker when an execution stays stuck in a thread.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    started = False

    def on_signal() -> None:
        if not stop.is_set():
            log.info("Received shutdown signal, stopping server...")
            stop.set()
            if not started and main is not None:
                main.cancel()  # still starting (waiting on NATS, say): give up on the start

    for sig in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        on_stuck = None if link is None else link.ask_replacement
        async with running(settings, listeners=listeners, on_stuck=on_stuck):
            started = True
            if link is not None:
                link.ready()
            await stop.wait()
    except asyncio.CancelledError:
        if started or not stop.is_set():
            raise
    finally:
        for sig in SHUTDOWN_SIGNALS:
            loop.remove_signal_handler(sig)
    log.info("server stopped")
