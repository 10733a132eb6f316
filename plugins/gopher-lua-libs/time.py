"""The `time` Lua module: clock, sleep, and Go time layouts for parsing and formatting.

- `time.unix()` → seconds since the epoch (float); `time.unix_nano()` → nanoseconds.
- `time.sleep(seconds)` waits (fractions allowed); a sleep past the script's deadline lasts until the
  deadline, where the script stops with its timeout error.
- `time.parse(value, layout [, location])` → seconds since the epoch, or `nil, err`. The layout is Go's
  reference time (`Mon Jan 2 15:04:05 MST 2006`, `2006-01-02T15:04:05Z07:00`, `Jan _2`, `.000`, ...); a
  value without a zone is read in `location` (an IANA name such as `Europe/Paris`, `UTC` or `Local`), by
  default UTC. Errors are Go's (`parsing time "x" as "2006": cannot parse "x" as "2006"`).
- `time.format(seconds [, layout [, location]])` → text (default layout `Mon Jan 2 15:04:05 -0700 MST
  2006`, default location the daemon's local zone), or `nil, err` for an unknown location.

One deliberate difference: Go computes parse's result through nanoseconds in 64 bits, which wraps for
dates before 1678 or after 2262 (a layout without a date parses into year 0); the result here is right.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time as _clock
from typing import Any

from msgscript.lua.api import ModuleContext

from ._golayout import GoParseError, Zone, go_format, go_parse, load_location, local_zone, utc_zone
from ._shared_text import check_number, check_string

DEFAULT_FORMAT = "Mon Jan 2 15:04:05 -0700 MST 2006"
_NS = 1_000_000_000
_INT64_MIN = -(2**63)


def split_seconds(value: float) -> tuple[int, int]:
    """(seconds, nanoseconds) of a Lua number the way the Go module splits it (truncating toward zero)."""
    if not math.isfinite(value):
        return _INT64_MIN, 0  # what Go's int64() conversion yields on amd64
    seconds = int(value)
    nanos = int((value - seconds) * _NS)
    extra, nanos = divmod(nanos, _NS)
    return seconds + extra, nanos


def _latin1(value: bytes) -> str:
    """Bytes as str one character per byte, so that the layout code walks bytes as Go does."""
    return value.decode("latin-1")


class TimeModule:
    """Builds the `time` table for one execution."""

    name = "time"
    inline_safe = False
    """sleep waits on the event loop (ctx.call)."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{unix, unix_nano, sleep, parse, format}`."""

        def unix(*_: object) -> float:
            return float(_clock.time_ns()) / 1e9

        def unix_nano(*_: object) -> int:
            return _clock.time_ns()

        def sleep(seconds: object = None, *_: object) -> None:
            wanted = check_number(seconds, 1, "sleep")
            if not wanted > 0:
                return
            # On the event loop, so that cancelling the execution ends the wait too. A sleep past the deadline
            # ends there, and the script is stopped as soon as this returns.
            with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
                ctx.call(asyncio.sleep(wanted))

        def parse(value: object = None, layout: object = None, *args: object) -> tuple[object, ...]:
            layout_b = check_string(layout, 2, "parse")
            value_b = check_string(value, 1, "parse")
            default: Zone = utc_zone
            local: Zone = local_zone
            if args:
                try:
                    default = local = load_location(check_string(args[0], 3, "parse").decode("utf-8", "replace"))
                except ValueError as exc:
                    return (None, str(exc))
            try:
                seconds, nanos = go_parse(_latin1(layout_b), _latin1(value_b), default, local)
            except GoParseError as exc:
                return (None, str(exc).encode("latin-1"))
            # Through a float of nanoseconds, as Go computes it (the same rounding).
            return (float(seconds * _NS + nanos) / 1e9,)

        def format_(seconds: object = None, *args: object) -> tuple[object, ...]:
            instant = check_number(seconds, 1, "format")
            layout = _latin1(check_string(args[0], 2, "format")) if args else DEFAULT_FORMAT
            zone: Zone = local_zone
            if len(args) > 1:
                try:
                    zone = load_location(check_string(args[1], 3, "format").decode("utf-8", "replace"))
                except ValueError as exc:
                    return (None, str(exc))
            whole, nanos = split_seconds(instant)
            return (go_format(whole, nanos, layout, zone).encode("latin-1"),)

        return {"unix": unix, "unix_nano": unix_nano, "sleep": sleep, "parse": parse, "format": format_}


module = TimeModule()
