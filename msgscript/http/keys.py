"""Typed application keys shared by the gateway and the browse pages."""

from __future__ import annotations

from aiohttp import web

from msgscript.catalog import Catalog
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.http.tasks import DispatchTasks
from msgscript.inflight import InFlightLimit

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
CATALOG = web.AppKey("catalog", Catalog)
SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", DispatchTasks)
IN_FLIGHT = web.AppKey("in_flight", InFlightLimit)
README_HTML = web.AppKey("readme_html", str)
