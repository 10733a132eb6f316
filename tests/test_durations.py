"""msgscript.durations: Go duration strings parsed and formatted as Go's time package does."""

from __future__ import annotations

import pytest

from msgscript.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h10m", 4200.0),
        ("1h1m1.5s", 3661.5),
        ("-1s", -1.0),
        ("+5s", 5.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("+0", 0.0),
        ("0s", 0.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1ns", 1e-9),
        ("1us", 1e-6),
        ("1\u00b5s", 1e-6),  # micro sign
        ("1\u03bcs", 1e-6),  # Greek mu
        ("1.5h", 5400.0),
        ("1m30s", 90.0),
        ("10s5m", 310.0),  # units may come in any order
        ("00000000000000000000000000000005s", 5.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_parse_duration_accepts_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_truncates_below_a_nanosecond_like_go() -> None:
    assert parse_duration("1.0000000009s") == 1.0
    assert parse_duration("0.9ns") == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus", 'time: invalid duration "bogus"'),
        ("5", 'time: missing unit in duration "5"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("1.2.3s", 'time: missing unit in duration "1.2.3s"'),
        ("1sec", 'time: unknown unit "sec" in duration "1sec"'),
        ("1S", 'time: unknown unit "S" in duration "1S"'),
        ("1h1", 'time: missing unit in duration "1h1"'),
        (" 1s", 'time: invalid duration " 1s"'),
        ("1s ", 'time: unknown unit "s " in duration "1s "'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
        ("--1s", 'time: invalid duration "--1s"'),
        ("\u0663s", 'time: invalid duration "\\xd9\\xa3s"'),  # only ASCII digits count
        ("2562048h", 'time: invalid duration "2562048h"'),  # past the int64 range of nanoseconds
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("99999999999999999999s", 'time: invalid duration "99999999999999999999s"'),
    ],
)
def test_parse_duration_rejects_what_go_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)

    assert str(info.value) == message


def test_parse_duration_allows_the_most_negative_duration() -> None:
    assert parse_duration("-9223372036854775808ns") == pytest.approx(-9223372036.854775808)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (120, "2m0s"),
        (5, "5s"),
        (1.5, "1.5s"),
        (0.3, "300ms"),
        (4200, "1h10m0s"),
        (3600, "1h0m0s"),
        (3661.5, "1h1m1.5s"),
        (0, "0s"),
        (-1, "-1s"),
        (1e-9, "1ns"),
        (1.5e-6, "1.5\u00b5s"),
        (0.0015, "1.5ms"),
        (-0.3, "-300ms"),
        (59.999, "59.999s"),
    ],
)
def test_format_duration_matches_go_duration_string(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["300ms", "1.5s", "2m0s", "1h10m0s", "5s", "-1s", "1.5\u00b5s", "7ns"])
def test_format_duration_output_parses_back(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
