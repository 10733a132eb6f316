"""Go's time layouts and locations, for the `time` module: Time.Format, time.Parse and time.LoadLocation.

A layout is Go's reference time written the way the text should look (`2006-01-02T15:04:05Z07:00`,
`Mon Jan _2 15:04:05 MST 2006`, `.000`, ...); `next_element` splits it as Go does. A location (`Zone`)
answers, for an instant, the zone abbreviation in effect and its offset. Layout text is handled as one
character per byte (latin-1), so that the code walks bytes as Go does.
"""

from __future__ import annotations

import math
import time as _clock
import zoneinfo
from collections.abc import Callable
from datetime import datetime

__all__ = [
    "GoParseError",
    "Zone",
    "go_format",
    "go_parse",
    "load_location",
    "local_zone",
    "next_element",
    "utc_zone",
]

Zone = Callable[[int], tuple[str, int]]
"""A location: for a time (seconds since the epoch), the zone abbreviation in effect and its offset (seconds)."""

_DAY_S = 86400
# The span where datetime can look a zone up (years 2..9998); beyond it the nearest edge's rules apply.
_LOOKUP_MIN_S = -62104060800
_LOOKUP_MAX_S = 253339228800

_MONTHS = tuple("January February March April May June July August September October November December".split())
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAYS_BEFORE = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365)

# Layout elements. The fractional second elements are tuples: (kind, separator, digit count).
# Longest first where one starts another, as Go tries them.
_TZ_ELEMENTS = tuple("-070000 -07:00:00 -0700 -07:00 -07 Z070000 Z07:00:00 Z0700 Z07:00 Z07".split())
Element = str | tuple[str, str, int]


class _BadValue(Exception):
    """The value does not fit the layout element being read."""


# --- locations -------------------------------------------------------------------------------------------


def utc_zone(_: int) -> tuple[str, int]:
    """UTC, at every instant."""
    return ("UTC", 0)


def local_zone(seconds: int) -> tuple[str, int]:
    """The daemon's local zone (what Go calls Local: TZ, else /etc/localtime)."""
    try:
        tm = _clock.localtime(min(max(seconds, _LOOKUP_MIN_S), _LOOKUP_MAX_S))
    except (OverflowError, OSError, ValueError):
        return ("UTC", 0)
    return (tm.tm_zone or "", int(tm.tm_gmtoff or 0))


def _zoneinfo(zone: zoneinfo.ZoneInfo) -> Zone:
    def lookup(seconds: int) -> tuple[str, int]:
        moment = datetime.fromtimestamp(min(max(seconds, _LOOKUP_MIN_S), _LOOKUP_MAX_S), zone)
        offset = moment.utcoffset()
        return (moment.tzname() or "", int(offset.total_seconds()) if offset is not None else 0)

    return lookup


def load_location(name: str) -> Zone:
    """Go's time.LoadLocation: "" and "UTC" are UTC, "Local" the local zone, others from the IANA database.

    Raises:
        ValueError: with Go's text (`unknown time zone X`, `time: invalid location name`).
    """
    if name in ("", "UTC"):
        return utc_zone
    if name == "Local":
        return local_zone
    if ".." in name or name[0] in "/\\":
        raise ValueError("time: invalid location name")
    try:
        return _zoneinfo(zoneinfo.ZoneInfo(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name}") from exc


# --- calendar --------------------------------------------------------------------------------------------


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) of a day count since 1970-01-01."""
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in(month: int, year: int) -> int:
    if month == 2 and _is_leap(year):
        return 29
    return _DAYS_BEFORE[month] - _DAYS_BEFORE[month - 1]


# --- layouts ---------------------------------------------------------------------------------------------


def _starts_lower(text: str) -> bool:
    return bool(text) and "a" <= text[0] <= "z"


def next_element(layout: str) -> tuple[str, Element | None, str]:
    """Split a layout at its first element: (literal prefix, element, rest); the element is None at the end.

    The recognised elements and their precedence are Go's (time.nextStdChunk): `Jan` is no element in
    `Janet`, `_2006` is a literal `_` and a year, a run of `0`s or `9`s after `.` or `,` is a fraction
    only when no other digit follows.
    """
    size = len(layout)
    for i, c in enumerate(layout):
        rest = layout[i:]
        if c == "J" and rest.startswith("Jan"):
            if rest.startswith("January"):
                return layout[:i], "January", layout[i + 7 :]
            if not _starts_lower(layout[i + 3 :]):
                return layout[:i], "Jan", layout[i + 3 :]
        elif c == "M":
            if rest.startswith("Mon"):
                if rest.startswith("Monday"):
                    return layout[:i], "Monday", layout[i + 6 :]
                if not _starts_lower(layout[i + 3 :]):
                    return layout[:i], "Mon", layout[i + 3 :]
            if rest.startswith("MST"):
                return layout[:i], "MST", layout[i + 3 :]
        elif c == "0":
            if i + 1 < size and "1" <= layout[i + 1] <= "6":
                return layout[:i], layout[i : i + 2], layout[i + 2 :]
            if rest.startswith("002"):
                return layout[:i], "002", layout[i + 3 :]
        elif c == "1":
            if rest.startswith("15"):
                return layout[:i], "15", layout[i + 2 :]
            return layout[:i], "1", layout[i + 1 :]
        elif c == "2":
            if rest.startswith("2006"):
                return layout[:i], "2006", layout[i + 4 :]
            return layout[:i], "2", layout[i + 1 :]
        elif c == "_":
            if rest.startswith("_2"):
                if rest.startswith("_2006"):
                    return layout[: i + 1], "2006", layout[i + 5 :]
                return layout[:i], "_2", layout[i + 2 :]
            if rest.startswith("__2"):
                return layout[:i], "__2", layout[i + 3 :]
        elif c in "345":
            return layout[:i], c, layout[i + 1 :]
        elif c == "P" and rest.startswith("PM"):
            return layout[:i], "PM", layout[i + 2 :]
        elif c == "p" and rest.startswith("pm"):
            return layout[:i], "pm", layout[i + 2 :]
        elif c in "-Z":
            for element in _TZ_ELEMENTS:
                if element[0] == c and rest.startswith(element):
                    return layout[:i], element, layout[i + len(element) :]
        elif c in ".," and i + 1 < size and layout[i + 1] in "09":
            digit = layout[i + 1]
            j = i + 1
            while j < size and layout[j] == digit:
                j += 1
            if not (j < size and layout[j].isdigit() and layout[j].isascii()):
                return layout[:i], ("frac0" if digit == "0" else "frac9", c, j - i - 1), layout[j:]
    return layout, None, ""


def _int(value: int, width: int) -> str:
    """Go's appendInt: zero-padded to width, the sign in front."""
    if value < 0:
        return "-" + str(-value).zfill(width)
    return str(value).zfill(width)


def go_format(seconds: int, nanos: int, layout: str, zone: Zone) -> str:
    """Go's Time.Format for the instant (seconds, nanos) seen in zone."""
    name, offset = zone(seconds)
    days, clock = divmod(seconds + offset, _DAY_S)
    year, month, day = _civil_from_days(days)
    hour, minute, second = clock // 3600, clock // 60 % 60, clock % 60
    year_day = _DAYS_BEFORE[month - 1] + day + (month > 2 and _is_leap(year))
    out: list[str] = []
    while layout:
        prefix, element, layout = next_element(layout)
        out.append(prefix)
        if element is None:
            break
        if isinstance(element, tuple):
            out.append(_fraction(nanos, *element))
        elif element == "2006":
            out.append(_int(year, 4))
        elif element == "06":
            out.append(_int(int(math.fmod(year, 100)), 2))
        elif element in ("January", "Jan"):
            out.append(_MONTHS[month - 1] if element == "January" else _MONTHS[month - 1][:3])
        elif element in ("1", "01"):
            out.append(_int(month, len(element)))
        elif element in ("Monday", "Mon"):
            weekday = _DAYS[(days + 4) % 7]
            out.append(weekday if element == "Monday" else weekday[:3])
        elif element in ("2", "02"):
            out.append(_int(day, len(element)))
        elif element == "_2":
            out.append(f"{day:2d}")
        elif element == "__2":
            out.append(f"{year_day:3d}")
        elif element == "002":
            out.append(_int(year_day, 3))
        elif element == "15":
            out.append(_int(hour, 2))
        elif element in ("3", "03"):
            out.append(_int(hour % 12 or 12, len(element)))
        elif element in ("4", "04"):
            out.append(_int(minute, len(element)))
        elif element in ("5", "05"):
            out.append(_int(second, len(element)))
        elif element in ("PM", "pm"):
            marker = "PM" if hour >= 12 else "AM"
            out.append(marker if element == "PM" else marker.lower())
        elif element == "MST":
            out.append(name if name else _offset_text(offset, "-0700"))
        else:
            out.append(_offset_text(offset, element))
    return "".join(out)


def _offset_text(offset: int, element: str) -> str:
    """A zone offset written as a numeric zone element (`-0700`, `Z07:00`, ...); `Z` for UTC in ISO 8601 ones."""
    if element[0] == "Z" and offset == 0:
        return "Z"
    sign = "-" if offset < 0 else "+"
    minutes = abs(offset) // 60
    text = sign + _int(minutes // 60, 2)
    colon = ":" if ":" in element else ""
    if len(element) > 3:  # not the hours-only -07 / Z07
        text += colon + _int(minutes % 60, 2)
    if element.endswith("0000") or element.endswith(":00:00"):
        text += colon + _int(abs(offset) % 60, 2)
    return text


def _fraction(nanos: int, kind: str, separator: str, digits: int) -> str:
    """Fractional seconds: `.000` keeps its width, `.999` drops trailing zeros (and the separator)."""
    text = str(nanos).zfill(9)[: min(digits, 9)]
    if kind == "frac9":
        text = text.rstrip("0")
        if not text:
            return ""
    return separator + text


def _quote(text: str) -> str:
    """Go's time.quote: double quotes, `\\"` and `\\\\` escaped, other non-printing or non-ASCII bytes as \\xNN."""
    out = ['"']
    for char in text:
        code = ord(char)
        if code >= 0x80 or code < 0x20:
            out.append(f"\\x{code:02x}")
        elif char in '"\\':
            out.append("\\" + char)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


class GoParseError(ValueError):
    """A value that does not match its layout; the text is Go's *time.ParseError."""

    def __init__(self, layout: str, value: str, layout_elem: str, value_elem: str, message: str = "") -> None:
        if message:
            text = f"parsing time {_quote(value)}{message}"
        else:
            text = (
                f"parsing time {_quote(value)} as {_quote(layout)}: cannot parse {_quote(value_elem)} as "
                f"{_quote(layout_elem)}"
            )
        super().__init__(text)


def _skip(value: str, prefix: str) -> tuple[str, bool]:
    """Remove a literal prefix from value; a run of spaces matches any run of spaces.

    Returns what is left of value and whether the whole prefix matched (if not, value is left where the
    match failed, which is what Go's error quotes).
    """
    while prefix:
        if prefix[0] == " ":
            if value and value[0] != " ":
                return value, False
            prefix = prefix.lstrip(" ")
            value = value.lstrip(" ")
            continue
        if not value or value[0] != prefix[0]:
            return value, False
        prefix, value = prefix[1:], value[1:]
    return value, True


def _is_digit(text: str, i: int) -> bool:
    return i < len(text) and "0" <= text[i] <= "9"


def _number(value: str, fixed: bool) -> tuple[int, str]:
    """One or two digits (exactly two when fixed)."""
    if not _is_digit(value, 0):
        raise _BadValue
    if not _is_digit(value, 1):
        if fixed:
            raise _BadValue
        return int(value[0]), value[1:]
    return int(value[:2]), value[2:]


def _atoi(text: str) -> int:
    """Go's time.atoi: an optional sign and decimal digits, nothing else."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise _BadValue
    return -int(digits) if text[:1] == "-" else int(digits)


def _lookup(names: tuple[str, ...], value: str, width: int | None) -> tuple[int, str]:
    """The index of the name (or its first `width` letters) that starts value, ignoring ASCII case."""
    for index, name in enumerate(names):
        candidate = name if width is None else name[:width]
        if value[: len(candidate)].lower() == candidate.lower() and len(value) >= len(candidate):
            return index, value[len(candidate) :]
    raise _BadValue


def _nanoseconds(value: str, size: int) -> tuple[int, str]:
    """Nanoseconds from a separator and digits (value[:size]); the second item is a range error or ""."""
    if value[:1] not in (".", ","):
        raise _BadValue
    size = min(size, 10)
    number = _atoi(value[1:size])
    if number < 0:
        return 0, "fractional second"
    return number * 10 ** (10 - size), ""


def _signed_offset_length(value: str) -> int:
    """Length of `+h`/`-hh` at the start of value (hours up to 23), or 0."""
    if not value or value[0] not in "+-":
        return 0
    digits = 0
    while digits + 1 < len(value) and "0" <= value[digits + 1] <= "9":
        digits += 1
    if digits == 0 or int(value[1 : 1 + digits]) > 23:
        return 0
    return 1 + digits


def _zone_name_length(value: str) -> int:
    """Length of a zone abbreviation at the start of value (Go's parseTimeZone), or 0 when there is none."""
    if len(value) < 3:
        return 0
    if value[:4] in ("ChST", "MeST"):
        return 4
    if value[:3] == "GMT":
        return 3 + _signed_offset_length(value[3:])
    if value[0] in "+-":
        return _signed_offset_length(value)
    upper = 0
    while upper < 6 and upper < len(value) and "A" <= value[upper] <= "Z":
        upper += 1
    if upper == 3:
        return 3
    if upper == 4 and (value[3] == "T" or value[:4] == "WITA"):
        return 4
    if upper == 5 and value[4] == "T":
        return 5
    return 0


def _zone_offset(value: str, element: str) -> tuple[int, str]:
    """A numeric zone offset in seconds (east positive) read as the element's shape."""
    if ":" in element and element.endswith(":00:00"):
        if len(value) < 9 or value[3] != ":" or value[6] != ":":
            raise _BadValue
        sign, hours, minutes, seconds, rest = value[0], value[1:3], value[4:6], value[7:9], value[9:]
    elif ":" in element:
        if len(value) < 6 or value[3] != ":":
            raise _BadValue
        sign, hours, minutes, seconds, rest = value[0], value[1:3], value[4:6], "00", value[6:]
    elif len(element) == 3:
        if len(value) < 3:
            raise _BadValue
        sign, hours, minutes, seconds, rest = value[0], value[1:3], "00", "00", value[3:]
    elif element.endswith("0000"):
        if len(value) < 7:
            raise _BadValue
        sign, hours, minutes, seconds, rest = value[0], value[1:3], value[3:5], value[5:7], value[7:]
    else:
        if len(value) < 5:
            raise _BadValue
        sign, hours, minutes, seconds, rest = value[0], value[1:3], value[3:5], "00", value[5:]
    offset = (_number(hours, True)[0] * 60 + _number(minutes, True)[0]) * 60 + _number(seconds, True)[0]
    if sign == "-":
        return -offset, rest
    if sign != "+":
        raise _BadValue
    return offset, rest


def _offset_of_name(zone: Zone, name: str, wall: int) -> int | None:
    """The offset a zone abbreviation has in a location around a time (Go's Location.lookupName), or None."""
    seen: list[tuple[str, int]] = []
    for month in range(-12, 13):
        found = zone(wall + month * 30 * _DAY_S)
        if found not in seen:
            seen.append(found)
    for zone_name, offset in seen:
        if zone_name == name:
            in_effect, actual = zone(wall - offset)
            if in_effect == name:
                return actual
    for zone_name, offset in seen:
        if zone_name == name:
            return offset
    return None


def go_parse(layout: str, value: str, default: Zone, local: Zone) -> tuple[int, int]:
    """Go's time.Parse (default and local: UTC and Local) or ParseInLocation (both the location).

    Returns the instant as (seconds since the epoch, nanoseconds).

    Raises:
        GoParseError: the value does not match the layout, or a field is out of range.
    """
    full_layout, full_value = layout, value
    year, month, day, year_day = 0, -1, -1, -1
    hour = minute = second = nanos = 0
    pm = am = False
    utc = False
    zone_offset: int | None = None
    zone_name = ""
    while True:
        prefix, element, suffix = next_element(layout)
        element_text = layout[len(prefix) : len(layout) - len(suffix)]
        value, matched = _skip(value, prefix)
        if not matched:
            raise GoParseError(full_layout, full_value, prefix, value)
        if element is None:
            if value:
                raise GoParseError(full_layout, full_value, "", value, ": extra text: " + _quote(value))
            break
        layout = suffix
        hold = value
        out_of_range = ""
        try:
            if isinstance(element, tuple):
                kind, _, digits = element
                if kind == "frac0":
                    if len(value) < 1 + digits:
                        raise _BadValue
                    nanos, out_of_range = _nanoseconds(value, 1 + digits)
                    value = value[1 + digits :]
                elif len(value) >= 2 and value[0] in ".," and _is_digit(value, 1):
                    end = 1
                    while _is_digit(value, end):
                        end += 1
                    nanos, out_of_range = _nanoseconds(value, end)
                    value = value[end:]
            elif element == "2006":
                if len(value) < 4 or not _is_digit(value, 0):
                    raise _BadValue
                year, value = _atoi(value[:4]), value[4:]
            elif element == "06":
                if len(value) < 2:
                    raise _BadValue
                year, value = _atoi(value[:2]), value[2:]
                year += 1900 if year >= 69 else 2000
            elif element in ("Jan", "January"):
                month, value = _lookup(_MONTHS, value, 3 if element == "Jan" else None)
                month += 1
            elif element in ("1", "01"):
                month, value = _number(value, element == "01")
                if not 0 < month <= 12:
                    out_of_range = "month"
            elif element in ("Mon", "Monday"):
                _, value = _lookup(_DAYS, value, 3 if element == "Mon" else None)
            elif element in ("2", "_2", "02"):
                if element == "_2" and value[:1] == " ":
                    value = value[1:]
                day, value = _number(value, element == "02")
            elif element in ("__2", "002"):
                if element == "__2":
                    for _ in range(2):
                        if value[:1] == " ":
                            value = value[1:]
                count = 0
                while count < 3 and _is_digit(value, count):
                    count += 1
                if count == 0 or (element == "002" and count != 3):
                    raise _BadValue
                year_day, value = int(value[:count]), value[count:]
            elif element == "15":
                hour, value = _number(value, False)
                if not 0 <= hour < 24:
                    out_of_range = "hour"
            elif element in ("3", "03"):
                hour, value = _number(value, element == "03")
                if not 0 <= hour <= 12:
                    out_of_range = "hour"
            elif element in ("4", "04"):
                minute, value = _number(value, element == "04")
                if not 0 <= minute < 60:
                    out_of_range = "minute"
            elif element in ("5", "05"):
                second, value = _number(value, element == "05")
                if not 0 <= second < 60:
                    out_of_range = "second"
                elif len(value) >= 2 and value[0] in ".," and _is_digit(value, 1):
                    # A fraction the layout does not ask for is still read, unless one follows in the layout.
                    following = next_element(layout)[1]
                    if not isinstance(following, tuple):
                        end = 2
                        while _is_digit(value, end):
                            end += 1
                        nanos, out_of_range = _nanoseconds(value, end)
                        value = value[end:]
            elif element in ("PM", "pm"):
                if len(value) < 2:
                    raise _BadValue
                marker, value = value[:2], value[2:]
                expected = ("PM", "AM") if element == "PM" else ("pm", "am")
                if marker == expected[0]:
                    pm = True
                elif marker == expected[1]:
                    am = True
                else:
                    raise _BadValue
            elif element == "MST":
                if value[:3] == "UTC":
                    utc, value = True, value[3:]
                else:
                    length = _zone_name_length(value)
                    if length == 0:
                        raise _BadValue
                    zone_name, value = value[:length], value[length:]
            else:
                if element[0] == "Z" and value[:1] == "Z":
                    utc, value = True, value[1:]
                else:
                    zone_offset, value = _zone_offset(value, element)
        except _BadValue:
            raise GoParseError(full_layout, full_value, element_text, hold) from None
        if out_of_range:
            raise GoParseError(full_layout, full_value, element_text, value, f": {out_of_range} out of range")

    if pm and hour < 12:
        hour += 12
    elif am and hour == 12:
        hour = 0

    if year_day >= 0:
        month, day = _from_year_day(full_layout, full_value, value, year, year_day, month, day)
    else:
        month = 1 if month < 0 else month
        day = 1 if day < 0 else day
    if not 1 <= day <= _days_in(month, year):
        raise GoParseError(full_layout, full_value, "", value, ": day out of range")

    wall = _days_from_civil(year, month, day) * _DAY_S + hour * 3600 + minute * 60 + second
    if utc:
        return wall, nanos
    if zone_offset is not None:
        return wall - zone_offset, nanos
    if zone_name:
        # A known abbreviation of the location counts with its offset; an unknown one is taken as UTC.
        offset = _offset_of_name(local, zone_name, wall)
        return wall - (offset or 0), nanos
    # The wall clock in the default location; near a transition the offset in effect at the result wins.
    offset = default(wall)[1]
    offset = default(wall - offset)[1]
    return wall - offset, nanos


def _from_year_day(
    layout: str, value: str, rest: str, year: int, year_day: int, month: int, day: int
) -> tuple[int, int]:
    """Month and day of a day of the year, which must agree with a month and day also given."""
    found_month = 0
    found_day = 0
    if _is_leap(year):
        if year_day == 31 + 29:
            found_month, found_day = 2, 29
        elif year_day > 31 + 29:
            year_day -= 1
    if not 1 <= year_day <= 365:
        raise GoParseError(layout, value, "", rest, ": day-of-year out of range")
    if found_month == 0:
        found_month = (year_day - 1) // 31 + 1
        if _DAYS_BEFORE[found_month] < year_day:
            found_month += 1
        found_day = year_day - _DAYS_BEFORE[found_month - 1]
    if month >= 0 and month != found_month:
        raise GoParseError(layout, value, "", rest, ": day-of-year does not match month")
    if day >= 0 and day != found_day:
        raise GoParseError(layout, value, "", rest, ": day-of-year does not match day")
    return found_month, found_day
