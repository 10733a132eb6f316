"""Cron schedules: the `--* cron:` header's expressions, and the times they name.

A schedule is a 5-field cron expression as Debian's cron reads it (`*/5 * * * *`), one of its `@hourly`,
`@daily`, `@weekly`, `@monthly`, `@yearly` aliases, or `@every <Go duration>`. Expressions run in UTC unless
they start with `CRON_TZ=<IANA zone>` (or `TZ=`); `@every` ticks are multiples of the interval since the Unix
epoch. Either way the times depend on the schedule alone, never on when a daemon started, so that every daemon
of a cluster names the same ticks (msgscript.schedules).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from msgscript.durations import parse_duration

EVERY = "@every"
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The shorthands of Vixie cron, and the expressions they stand for."""
ZONE_PREFIXES = ("CRON_TZ=", "TZ=")
MIN_EVERY_S = 1.0
"""The shortest `@every` interval."""
_FIELDS = "minute hour day-of-month month day-of-week"
_FORMS = f"5 fields ({_FIELDS}), an alias such as @hourly, or @every <duration>"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """When a script runs: a cron expression in a time zone, or a fixed interval."""

    text: str
    """The header value as written, surrounding spaces removed."""
    expression: str = ""
    """The 5-field expression (an alias expanded); empty for `@every`."""
    every_ms: int = 0
    """The `@every` interval in milliseconds; 0 for an expression."""
    zone: str = ""
    """The IANA time zone the expression is read in; empty means UTC."""

    def zone_info(self) -> tzinfo:
        """The time zone the expression is read in."""
        return ZoneInfo(self.zone) if self.zone else UTC

    def next_after(self, moment: datetime) -> datetime | None:
        """The first run time strictly after `moment` (an aware datetime), in UTC; None when the expression
        matches no time in the 50 years that follow."""
        if self.every_ms:
            # Whole milliseconds, counted exactly: a tick given back as `moment` yields the one after it.
            elapsed_ms = (moment - _EPOCH) // _MS
            return _EPOCH + (elapsed_ms // self.every_ms + 1) * self.every_ms * _MS
        return next(self._iterate(moment), None)

    def upcoming(self, moment: datetime, count: int) -> list[datetime]:
        """The next `count` run times after `moment`, in UTC (fewer when the expression runs out)."""
        times: list[datetime] = []
        if self.every_ms:
            previous = moment
            while len(times) < count and (following := self.next_after(previous)) is not None:
                times.append(following)
                previous = following
            return times
        for when in self._iterate(moment):
            times.append(when)
            if len(times) == count:
                break
        return times

    def _iterate(self, moment: datetime) -> CronIterator:
        return CronIterator(CronSim(self.expression, moment.astimezone(self.zone_info())))

    def describe(self) -> str:
        """The schedule in words, with its time zone: `Every fifth minute of every hour (UTC)`."""
        if self.every_ms:
            return f"Every {self.text.split()[-1]}, counted from the Unix epoch"
        words = CronSim(self.expression, datetime.now(UTC)).explain()
        return f"{words} ({self.zone or 'UTC'})"


class CronIterator:
    """Run times of a CronSim, converted to UTC; it stops where CronSim gives up (no match in 50 years)."""

    def __init__(self, sim: CronSim) -> None:
        self._sim = sim

    def __iter__(self) -> CronIterator:
        return self

    def __next__(self) -> datetime:
        return next(self._sim).astimezone(UTC)


def parse_cron(text: str) -> CronSchedule:
    """Parse a `--* cron:` header value.

    Raises:
        ValueError: the value is not a schedule; the text says why (`expected 5 fields …, got 6`, `bad minute`).
    """
    words = text.split()
    zone = ""
    if words:
        for prefix in ZONE_PREFIXES:
            if words[0].startswith(prefix):
                zone = words.pop(0).removeprefix(prefix)
                _check_zone(zone)
                break
    if not words:
        raise ValueError(f"expected {_FORMS}")
    head = words[0].lower()
    if head == EVERY:
        if zone:
            raise ValueError("a time zone does not apply to @every")
        return CronSchedule(text=text.strip(), every_ms=_every_ms(words[1:]))
    if head.startswith("@"):
        expression = ALIASES.get(head)
        if expression is None or len(words) != 1:
            aliases = ", ".join(ALIASES)
            raise ValueError(f"unknown schedule {' '.join(words)!r}: use {aliases} or @every <duration>")
    elif len(words) != 5:
        raise ValueError(f"expected 5 fields ({_FIELDS}), got {len(words)}")
    else:
        expression = " ".join(words)
    schedule = CronSchedule(text=text.strip(), expression=expression, zone=zone)
    try:
        first = schedule.next_after(datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(str(exc).lower()) from None
    if first is None:
        raise ValueError("it matches no date in the next 50 years")
    return schedule


def _check_zone(zone: str) -> None:
    try:
        if not zone:
            raise ValueError("no zone")
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {zone!r}") from None


def _every_ms(rest: list[str]) -> int:
    if len(rest) != 1:
        raise ValueError("expected @every <duration>, such as @every 30s")
    interval_s = parse_duration(rest[0])
    if interval_s < MIN_EVERY_S:
        raise ValueError(f"the interval of @every must be at least 1s, not {rest[0]}")
    return round(interval_s * 1000)


def tick_text(tick: datetime) -> str:
    """A run time as the schedules name it: UTC, ISO 8601, milliseconds only when there are some."""
    tick = tick.astimezone(UTC)
    text = tick.strftime("%Y-%m-%dT%H:%M:%S")
    if tick.microsecond:
        text += f".{tick.microsecond // 1000:03d}"
    return text + "Z"
