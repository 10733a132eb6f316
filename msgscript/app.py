"""The composition root: opens everything the daemon needs, in order, and closes it in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from msgscript.catalog import Catalog
from msgscript.cluster import EtcdLock, Lock, NoLock
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ConfigError
from msgscript.etcd import open_etcd
from msgscript.executors import open_executors
from msgscript.http import http_site
from msgscript.nats_server import NatsSubscriber, connect_nats
from msgscript.store import open_store

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Dispatcher]:
    """Start the daemon's parts; on exit stop intake, finish in-flight work and close everything."""
    async with contextlib.AsyncExitStack() as stack:
        # One etcd client for the store, the cluster lock and the Lua `etcd` module; it dials on first use.
        etcd = await stack.enter_async_context(open_etcd(settings))
        try:
            store = await stack.enter_async_context(open_store(settings, etcd))
        except ConfigError as exc:
            raise ConfigError(f"failed to initialize the script store: {exc}") from exc
        log.info("Starting %s backend", settings.backend)
        lock: Lock = EtcdLock(etcd) if settings.backend == "etcd" else NoLock()
        nc = await stack.enter_async_context(connect_nats(settings))
        executors = await stack.enter_async_context(open_executors(settings, nc, etcd=etcd))
        dispatcher = Dispatcher(store, executors, lock, script_timeout_s=settings.script_timeout_s)
        catalog = Catalog(store)
        await stack.enter_async_context(NatsSubscriber(nc, dispatcher, catalog, settings))
        # Entered last so that it stops first: in-flight HTTP requests finish while NATS and the executors are up.
        await stack.enter_async_context(http_site(dispatcher, catalog, settings))
        yield dispatcher


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until a shutdown signal arrives (or `stop` is set)."""
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
        async with running(settings):
            started = True
            await stop.wait()
    except asyncio.CancelledError:
        if started or not stop.is_set():
            raise
    finally:
        for sig in SHUTDOWN_SIGNALS:
            loop.remove_signal_handler(sig)
    log.info("server stopped")
