"""Scheduled scripts (msgscript.schedules): ticks run the script with its subject and an empty payload, once
across several daemons on one JetStream; they follow the store; the info page lists the next runs."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import signal
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg

from msgscript.app import running
from msgscript.compose import open_store
from msgscript.config import DEFAULT_STREAM, Settings
from msgscript.cron import tick_text
from msgscript.message import MSG_ID_HEADER
from msgscript.schedules import TICK_SUBJECT_PREFIX, tick_id
from msgscript.script import parse_script
from tests.conftest import fixture_settings
from tests.processes import Daemon, command_env, follow_log, start_daemon
from tests.servers import EtcdServer, NatsServer, free_port, run_nats_server
from tests.test_metrics import scrape, value

T = 10.0
INSTANCES = 3
COUNT_S = 4.0

# Each run reports what it got, and where it ran, on `ran.<name>`.
EVERY_SECOND = """--* subject: jobs.tick
--* name: tick
--* cron: @every 1s
local nats = require("nats")
local json = require("json")
function OnMessage(subject, payload)
    nats.publish("ran.tick", json.encode({subject = subject, payload = payload, instance = os.getenv("INSTANCE") or "",
        version = VERSION or 1}))
    return "ok"
end
"""
FIVE_MINUTES = """--* subject: jobs.report
--* name: report
--* cron: */5 * * * *
function OnMessage(subject, payload) return "report" end
"""
FAILING = """--* subject: jobs.failing
--* name: failing
--* cron: @every 1s
function OnMessage(subject, payload) error("disk full") end
"""
PLAIN = """--* subject: jobs.plain
--* name: plain
function OnMessage(subject, payload) return "plain" end
"""


@pytest.fixture
async def js_server() -> AsyncIterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="msgscript-js-") as store:
        async with run_nats_server("-js", "-sd", store) as server:
            yield server


def write_scripts(root: Path, *sources: str) -> tuple[Path, Path]:
    scripts, libs = root / "scripts", root / "libs"
    scripts.mkdir(exist_ok=True)
    libs.mkdir(exist_ok=True)
    for source in sources:
        (scripts / f"{parse_script(source).name}.lua").write_text(source)
    return scripts, libs


class Runs:
    """The reports of the runs on `ran.*`, in arrival order."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.reports.append(json.loads(msg.data))
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float = T) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while len(self.reports) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.reports


@contextlib.asynccontextmanager
async def watching(server: NatsServer) -> AsyncIterator[tuple[nats.NATS, Runs]]:
    nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
    runs = Runs()
    try:
        await nc.subscribe("ran.*", cb=runs.on_msg)
        yield nc, runs
    finally:
        await nc.close()


async def test_a_tick_runs_the_script_with_its_subject_and_an_empty_payload_once(
    js_server: NatsServer, tmp_path: Path
) -> None:
    scripts, libs = write_scripts(tmp_path, EVERY_SECOND, PLAIN)
    async with watching(js_server) as (nc, runs), running(fixture_settings(js_server.url, scripts, libs)):
        reports = await runs.wait_for(2)
        second_run = datetime.now(UTC)
        assert reports[0] == {"subject": "jobs.tick", "payload": "", "instance": "", "version": 1}
        # A copy of a tick that already ran (a daemon restarting with its clock behind, say) is not stored
        # again, so it does not run again.
        tick = second_run.replace(microsecond=0) - timedelta(seconds=1)
        again = await nc.jetstream().publish(
            f"{TICK_SUBJECT_PREFIX}.{DEFAULT_STREAM}",
            b"",
            headers={MSG_ID_HEADER: tick_id(parse_script(EVERY_SECOND), tick)},
        )
        assert again.duplicate, tick_text(tick)
        # The stream keeps the ids, not the ticks.
        info = await nc.jetstream().stream_info(DEFAULT_STREAM)
        assert info.state.messages <= 1


async def test_each_tick_runs_once_across_three_daemons(js_server: NatsServer, tmp_path: Path) -> None:
    scripts, _ = write_scripts(tmp_path, EVERY_SECOND)

    ports = [free_port() for _ in range(INSTANCES)]

    async def start(number: int) -> Daemon:
        options = ("-natsurl", js_server.url, "-script", str(scripts), "-grace-period", "2s")
        where = ("-port", str(ports[number]), "-http-host", "127.0.0.1")
        return await start_daemon(*options, *where, env=command_env(INSTANCE=str(number)), ready="scheduled script")

    daemons = list(await asyncio.gather(*(start(number) for number in range(INSTANCES))))
    followers = [asyncio.create_task(follow_log(daemon)) for daemon in daemons]
    try:
        async with watching(js_server) as (_, runs):
            # From one run on, count those of the next few seconds: one a second, not one per daemon.
            await runs.wait_for(1)
            await asyncio.sleep(COUNT_S)
            counted = runs.reports[1:]
        assert COUNT_S - 1 <= len(counted) <= COUNT_S + 1, counted
        assert {r["subject"] for r in counted} == {"jobs.tick"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=T)) as client:
            scraped = [await scrape(client, f"http://127.0.0.1:{port}") for port in ports]
        ticks = {
            outcome: sum(
                value(s, "msgscript_cron_ticks_total", subject="jobs.tick", name="tick", outcome=outcome)
                for s in scraped
            )
            for outcome in ("run", "elsewhere", "missed")
        }
        # Each daemon saw the ticks: the one whose copy was stored ran it, the others left it to that one.
        assert ticks["run"] >= len(counted) + 1 and ticks["elsewhere"] >= ticks["run"], ticks
        assert ticks["missed"] == 0
        assert sum(value(s, "msgscript_messages_total", source="cron") for s in scraped) == ticks["run"]
    finally:
        for daemon in daemons:
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.send_signal(signal.SIGTERM)
        for daemon, follower in zip(daemons, followers, strict=True):
            try:
                await asyncio.wait_for(daemon.proc.wait(), 30)
            except TimeoutError:
                daemon.proc.kill()
                await daemon.proc.wait()
            await follower
    for daemon in daemons:
        assert "scheduled script=tick subject=jobs.tick cron='@every 1s'" in daemon.log
        assert "scheduled ticks go through stream=MSGSCRIPT" in daemon.log, daemon.log
        assert " not run" not in daemon.log and "skipped" not in daemon.log, daemon.log


async def test_a_schedule_follows_the_store(js_server: NatsServer, etcd_server: EtcdServer, tmp_path: Path) -> None:
    settings = fixture_settings(js_server.url, tmp_path, tmp_path, backend="etcd", etcd_endpoints=(etcd_server.url,))
    async with (
        watching(js_server) as (_, runs),
        open_store(Settings(backend="etcd", etcd_endpoints=(etcd_server.url,))) as store,
        running(settings),
    ):
        await store.put_script(parse_script(EVERY_SECOND))
        await runs.wait_for(1)
        # A new version runs from the next tick on.
        await store.put_script(parse_script(EVERY_SECOND.replace("local nats", "VERSION = 2\nlocal nats")))
        async with asyncio.timeout(T):
            while runs.reports[-1]["version"] != 2:
                runs.changed.clear()
                await runs.changed.wait()
        # Removed: no tick runs any more.
        await store.delete_script("jobs.tick", "tick")
        await asyncio.sleep(0.5)  # a tick already under way may still report
        after_removal = len(runs.reports)
        await asyncio.sleep(2.5)
        assert len(runs.reports) == after_removal


async def test_without_jetstream_each_daemon_runs_the_ticks_itself_and_logs_failures(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scripts, libs = write_scripts(tmp_path, EVERY_SECOND, FAILING)
    caplog.set_level(logging.INFO, logger="msgscript")
    async with watching(nats_server) as (_, runs), running(fixture_settings(nats_server.url, scripts, libs)):
        reports = await runs.wait_for(2)
    assert reports[0]["subject"] == "jobs.tick"
    assert "NATS has no JetStream: scheduled scripts run on every daemon that serves them" in caplog.text
    failures = [
        r for r in caplog.records if "scheduled script=failing subject=jobs.failing failed on tick" in r.message
    ]
    assert failures and failures[0].levelno == logging.WARNING
    assert "disk full" in failures[0].message


async def test_an_invalid_schedule_keeps_its_script_out_and_the_others_served(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = (
        PLAIN.replace("jobs.plain", "jobs.broken").replace("name: plain", "name: broken") + "--* cron: 61 * * * *\n"
    )
    scripts, libs = write_scripts(tmp_path, PLAIN)
    (scripts / "broken.lua").write_text(broken)
    async with running(fixture_settings(nats_server.url, scripts, libs)):
        nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            reply = json.loads((await nc.request("jobs.plain", b"", timeout=T)).data)
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request("jobs.broken", b"", timeout=T)
        finally:
            await nc.close()
    assert reply["script_result"][0]["error"] == ""
    assert "invalid cron header '61 * * * *': bad minute" in caplog.text


async def test_the_info_page_lists_the_next_runs(nats_server: NatsServer, tmp_path: Path) -> None:
    scripts, libs = write_scripts(tmp_path, FIVE_MINUTES, PLAIN)
    port = free_port()
    settings = fixture_settings(nats_server.url, scripts, libs, http_port=port)
    async with running(settings), aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=T)) as client:
        before = datetime.now(UTC)
        async with client.get(f"http://127.0.0.1:{port}/_/info/jobs.report/report") as response:
            assert response.status == 200
            page = html.unescape(await response.text())
        async with client.get(f"http://127.0.0.1:{port}/_/info/jobs.plain/plain") as response:
            plain_page = await response.text()
    assert "*/5 * * * *" in page and "Every fifth minute of every hour (UTC)" in page
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in re.findall(r'<time datetime="([^"]+)"', page)]
    assert len(times) == 5
    assert before < times[0] <= before + timedelta(minutes=5)
    assert all(t.minute % 5 == 0 and t.second == 0 for t in times)
    assert [later - earlier for earlier, later in zip(times, times[1:], strict=False)] == [timedelta(minutes=5)] * 4
    assert "Next runs" not in plain_page
