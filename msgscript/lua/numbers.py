"""Numbers as text the way the Go msgscript writes them: gopher-lua's `tostring` and Go's `%v` of a float."""

from __future__ import annotations

import math

INT64_LIMIT = 2**63
"""Integers in [-INT64_LIMIT, INT64_LIMIT) fit gopher-lua's int64 and are written without a point."""


def shortest_digits(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of abs(value) and where the decimal point goes.

    The value is 0.DIGITS × 10**point, like Go's strconv decimal. value must be finite and non-zero.
    """
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def fixed_notation(digits: str, point: int) -> str:
    """Write 0.DIGITS × 10**point without an exponent (Go's 'f' format with shortest digits)."""
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def go_float_text(value: float) -> str:
    """Format a float like Go's strconv.FormatFloat(v, 'g', -1, 64), which is what `%v` prints."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, point = shortest_digits(value)
    sign = "-" if value < 0 else ""
    exponent = point - 1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return sign + fixed_notation(digits, point)


def lua_number_text(value: float) -> str:
    """Format a Lua number like gopher-lua: integral values without a point (`200`), others Go-style (`1.5`)."""
    if isinstance(value, int) and -INT64_LIMIT <= value < INT64_LIMIT:
        return str(value)
    number = float(value)
    if number.is_integer() and -INT64_LIMIT <= number < INT64_LIMIT:
        return str(int(number))
    return go_float_text(number)
