"""Go duration strings (`300ms`, `1.5s`, `1h10m`): parsing and Go's Duration.String formatting."""

from __future__ import annotations

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek small letter mu
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DIGITS = "0123456789"
_INT64_LIMIT = 1 << 63


def _quote(text: str) -> str:
    """Quote a string the way Go's time package does in its error texts."""
    out = ['"']
    for char in text:
        if char < " " or char >= "\x80":
            try:
                raw = char.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = char.encode("utf-8", "surrogatepass")
            out.extend(f"\\x{byte:02x}" for byte in raw)
        else:
            out.append("\\" + char if char in '"\\' else char)
    out.append('"')
    return "".join(out)


def _leading_digits(s: str) -> tuple[str, str]:
    """Split `s` into its leading ASCII digits and the rest."""
    i = 0
    while i < len(s) and s[i] in _DIGITS:
        i += 1
    return s[:i], s[i:]


def _fraction(digits: str) -> tuple[int, float]:
    """Go's leadingFraction: the digits as an integer and their scale, ignoring digits past int64 precision."""
    value, scale = 0, 1.0
    for digit in digits:
        if value > (_INT64_LIMIT - 1) // 10:
            break
        candidate = value * 10 + int(digit)
        if candidate > _INT64_LIMIT:
            break
        value, scale = candidate, scale * 10
    return value, scale


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds; raises ValueError for anything Go's time.ParseDuration rejects."""
    invalid = f"time: invalid duration {_quote(text)}"
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(invalid)
    total = 0
    while s:
        if s[0] != "." and s[0] not in _DIGITS:
            raise ValueError(invalid)
        whole, s = _leading_digits(s)
        significant = whole.lstrip("0")
        if len(significant) > 19 or (significant and int(significant) > _INT64_LIMIT):
            raise ValueError(invalid)
        frac = ""
        if s[:1] == ".":
            frac, s = _leading_digits(s[1:])
        if not whole and not frac:
            raise ValueError(invalid)
        end = 0
        while end < len(s) and s[end] != "." and s[end] not in _DIGITS:
            end += 1
        if end == 0:
            raise ValueError(f"time: missing unit in duration {_quote(text)}")
        unit, s = s[:end], s[end:]
        unit_ns = _UNIT_NS.get(unit)
        if unit_ns is None:
            raise ValueError(f"time: unknown unit {_quote(unit)} in duration {_quote(text)}")
        value = int(significant or "0")
        if value > _INT64_LIMIT // unit_ns:
            raise ValueError(invalid)
        value *= unit_ns
        numerator, scale = _fraction(frac)
        if numerator:
            # Go computes the fractional part in float64, truncating to whole nanoseconds.
            value += int(float(numerator) * (float(unit_ns) / scale))
            if value > _INT64_LIMIT:
                raise ValueError(invalid)
        total += value
        if total > _INT64_LIMIT:
            raise ValueError(invalid)
    if not negative and total > _INT64_LIMIT - 1:
        raise ValueError(invalid)
    return (-total if negative else total) / 1e9


def _fixed(value: int, digits: int) -> str:
    """Format value / 10**digits with trailing zeros removed, Go style."""
    whole, frac = divmod(value, 10**digits)
    frac_text = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole}.{frac_text}" if frac_text else str(whole)


def format_duration(seconds: float) -> str:
    """Format seconds like Go's time.Duration.String (`2m0s`, `5s`, `1.5s`, `300ms`)."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 10**3:
        return f"{sign}{ns}ns"
    if ns < 10**6:
        return f"{sign}{_fixed(ns, 3)}µs"
    if ns < 10**9:
        return f"{sign}{_fixed(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_fixed(rest, 9)}s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text
