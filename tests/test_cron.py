"""Cron schedules (msgscript.cron) and the `--* cron:` header: the run times they name, and the values refused."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from msgscript.cron import parse_cron, tick_text
from msgscript.errors import ScriptParseError
from msgscript.schedules import tick_id
from msgscript.script import Script, parse_script


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def runs(header: str, after: str, count: int = 3) -> list[str]:
    return [tick_text(when) for when in parse_cron(header).upcoming(at(after), count)]


@pytest.mark.parametrize(
    ("header", "after", "expected"),
    [
        (
            "*/5 * * * *",
            "2025-01-01T10:02:30Z",
            ["2025-01-01T10:05:00Z", "2025-01-01T10:10:00Z", "2025-01-01T10:15:00Z"],
        ),
        # Friday morning: the weekdays' 09:00 that follow skip the weekend.
        (
            "0 9 * * 1-5",
            "2025-01-03T10:00:00Z",
            ["2025-01-06T09:00:00Z", "2025-01-07T09:00:00Z", "2025-01-08T09:00:00Z"],
        ),
        (
            "15 14 1 * *",
            "2025-01-31T00:00:00Z",
            ["2025-02-01T14:15:00Z", "2025-03-01T14:15:00Z", "2025-04-01T14:15:00Z"],
        ),
        (
            "0 0 1,15 * *",
            "2025-02-10T00:00:00Z",
            ["2025-02-15T00:00:00Z", "2025-03-01T00:00:00Z", "2025-03-15T00:00:00Z"],
        ),
        (
            "0 12 * JAN,JUL SUN",
            "2025-01-20T00:00:00Z",
            ["2025-01-26T12:00:00Z", "2025-07-06T12:00:00Z", "2025-07-13T12:00:00Z"],
        ),
        ("@hourly", "2025-01-01T10:00:00Z", ["2025-01-01T11:00:00Z", "2025-01-01T12:00:00Z", "2025-01-01T13:00:00Z"]),
        ("@daily", "2025-01-01T10:00:00Z", ["2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z", "2025-01-04T00:00:00Z"]),
        ("@weekly", "2025-01-01T10:00:00Z", ["2025-01-05T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z"]),
        ("@monthly", "2025-01-01T10:00:00Z", ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
        ("@Yearly", "2025-01-01T10:00:00Z", ["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
    ],
)
def test_an_expression_names_the_run_times_that_follow_in_utc(header: str, after: str, expected: list[str]) -> None:
    assert runs(header, after) == expected


def test_a_time_zone_reads_the_expression_in_local_time_across_daylight_saving_changes() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer (from 30 March 2025).
    assert runs("CRON_TZ=Europe/Paris 0 9 * * *", "2025-03-28T12:00:00Z") == [
        "2025-03-29T08:00:00Z",
        "2025-03-30T07:00:00Z",
        "2025-03-31T07:00:00Z",
    ]
    # As Debian's cron: 02:30 does not exist on 30 March (it runs at 03:00 instead), and occurs twice on
    # 26 October (it runs once).
    assert runs("TZ=Europe/Paris 30 2 * * *", "2025-03-29T12:00:00Z") == [
        "2025-03-30T01:00:00Z",
        "2025-03-31T00:30:00Z",
        "2025-04-01T00:30:00Z",
    ]
    assert runs("CRON_TZ=Europe/Paris 30 2 * * *", "2025-10-25T12:00:00Z") == [
        "2025-10-26T00:30:00Z",
        "2025-10-27T01:30:00Z",
        "2025-10-28T01:30:00Z",
    ]


def test_every_counts_from_the_unix_epoch_so_that_every_daemon_names_the_same_ticks() -> None:
    assert runs("@every 1s", "2025-01-01T10:00:00.400Z") == [
        "2025-01-01T10:00:01Z",
        "2025-01-01T10:00:02Z",
        "2025-01-01T10:00:03Z",
    ]
    # 90 s steps from 1970: 10:00:00 is one of them (36000 s into the day), the start time does not matter.
    assert runs("@every 1m30s", "2025-01-01T09:59:59Z") == [
        "2025-01-01T10:00:00Z",
        "2025-01-01T10:01:30Z",
        "2025-01-01T10:03:00Z",
    ]
    assert runs("@every 1500ms", "2025-01-01T10:00:00Z", 2) == ["2025-01-01T10:00:01.500Z", "2025-01-01T10:00:03Z"]
    schedule = parse_cron("@every 7s")
    tick = schedule.next_after(at("2025-06-01T00:00:00Z"))
    assert tick is not None
    # A tick given back yields the one after it, never itself.
    assert schedule.next_after(tick) == tick + timedelta(seconds=7)


def test_the_next_run_is_strictly_after_the_moment() -> None:
    assert runs("*/5 * * * *", "2025-01-01T10:05:00Z", 1) == ["2025-01-01T10:10:00Z"]
    assert runs("*/5 * * * *", "2025-01-01T10:04:59.999Z", 1) == ["2025-01-01T10:05:00Z"]


def test_the_schedule_says_what_it_means() -> None:
    assert parse_cron("*/5 * * * *").describe() == "Every fifth minute of every hour (UTC)"
    assert parse_cron("CRON_TZ=Europe/Paris 0 9 * * 1-5").describe() == (
        "At 09:00 on Monday through Friday (Europe/Paris)"
    )
    assert parse_cron("@every 30s").describe() == "Every 30s, counted from the Unix epoch"


def test_the_header_gives_the_script_its_schedule_and_stays_in_the_content() -> None:
    text = "--* subject: jobs.report\n--* name: report\n--* cron: */5 * * * *\nfunction OnMessage() end\n"
    script = parse_script(text)
    assert script.cron == parse_cron("*/5 * * * *")
    assert "--* cron: */5 * * * *" in script.content
    # Through the upstream Script JSON (etcd), which has no field for it.
    assert Script.from_json(script.to_json()) == script
    assert parse_script("--* subject: a\n--* name: b\n").cron is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", "invalid cron header '': expected 5 fields (minute hour day-of-month month day-of-week), an alias"),
        (
            "* * * *",
            "invalid cron header '* * * *': expected 5 fields (minute hour day-of-month month day-of-week), got 4",
        ),
        ("0 * * * * *", "got 6"),
        ("61 * * * *", "invalid cron header '61 * * * *': bad minute"),
        ("0 24 * * *", "bad hour"),
        ("0 0 30 2 *", "bad day-of-month"),
        ("0 0 * 13 *", "bad month"),
        ("0 0 * * MON-XYZ", "bad day-of-week"),
        ("* * */20 * 1L", "it matches no date in the next 50 years"),
        (
            "@reboot",
            "unknown schedule '@reboot': use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
        ),
        ("@daily 5", "unknown schedule '@daily 5'"),
        ("@every", "expected @every <duration>, such as @every 30s"),
        ("@every soon", 'time: invalid duration "soon"'),
        ("@every 500ms", "the interval of @every must be at least 1s, not 500ms"),
        ("CRON_TZ=Mars/Olympus 0 9 * * *", "unknown time zone 'Mars/Olympus'"),
        ("CRON_TZ=UTC @every 1m", "a time zone does not apply to @every"),
    ],
)
def test_an_unusable_cron_header_is_refused_with_the_reason(value: str, error: str) -> None:
    with pytest.raises(ScriptParseError) as refused:
        parse_script(f"--* subject: jobs.x\n--* name: x\n--* cron: {value}\nfunction OnMessage() end\n")
    assert error in str(refused.value)


def test_an_html_script_cannot_have_a_schedule() -> None:
    with pytest.raises(ScriptParseError, match="an HTML-mode script cannot run on a schedule"):
        parse_script("--* subject: web\n--* name: web\n--* html: true\n--* cron: @hourly\n")


def test_a_tick_is_named_by_script_and_utc_time() -> None:
    script = parse_script("--* subject: jobs.report\n--* name: report\n--* cron: @every 1s\n")
    assert tick_id(script, at("2025-01-01T10:05:00Z")) == "jobs.report/report@2025-01-01T10:05:00Z"
    in_paris = datetime(2025, 1, 1, 11, 5, 0, 250000, tzinfo=ZoneInfo("Europe/Paris"))
    assert tick_id(script, in_paris) == "jobs.report/report@2025-01-01T10:05:00.250Z"
