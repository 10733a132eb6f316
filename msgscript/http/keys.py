"""Typed application keys shared by the gateway and the browse pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from msgscript.catalog import Catalog
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.http.readme import Readme
from msgscript.http.tasks import DispatchTasks
from msgscript.inflight import InFlightLimit

if TYPE_CHECKING:  # prometheus_client is imported by the daemon only
    from msgscript.jetstream import DurableConsumers
    from msgscript.metrics import Metrics

Readiness = Callable[[], str]
"""Why the daemon cannot serve now (`NATS disconnected`), or "" when it can."""

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
CATALOG = web.AppKey("catalog", Catalog)
SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", DispatchTasks)
IN_FLIGHT = web.AppKey("in_flight", InFlightLimit)
README = web.AppKey("readme", Readme)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
"""Set only when the daemon records metrics."""
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
DURABLE: web.AppKey[DurableConsumers] = web.AppKey("durable")
"""Where a request for a subject of durable scripts is published; set by the daemon."""
