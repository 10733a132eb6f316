"""Prometheus metrics on /metrics, read with the Prometheus parser: what moves, by how much, and who may read them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msgscript import __version__
from msgscript.etcd_client import EtcdClient
from msgscript.etcd_lock import EtcdLock
from msgscript.metrics import Metrics
from msgscript.script import parse_script
from tests.conftest import DaemonFactory
from tests.fixtures import SCRIPTS
from tests.processes import daemon_running
from tests.servers import EtcdServer, NatsServer, free_port

EXAMPLES = Path(__file__).parent.parent / "examples"
TOKEN = "metrics-Token_7"
T = 10.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(session: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of `/metrics`, parsed as Prometheus parses it."""
    async with session.get(base + "/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(await resp.text())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """One sample's value; 0 for a series not there yet (a counter that never moved)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, metric: str, /, **labels: str) -> float:
    return value(after, metric, **labels) - value(before, metric, **labels)


@contextlib.asynccontextmanager
async def gateway(make_daemon: DaemonFactory, **overrides: object) -> AsyncIterator[str]:
    """An in-process daemon on the fixture scripts; yields its gateway's base URL."""
    port = free_port()
    async with make_daemon(http_port=port, **overrides):
        yield f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def held_requests(nc: nats.NATS, subject: str) -> AsyncIterator[list[Msg]]:
    """The requests made on `subject` while the context lasts, kept unanswered for the test to answer."""
    held: list[Msg] = []

    async def hold(msg: Msg) -> None:
        held.append(msg)

    sub = await nc.subscribe(subject, cb=hold)
    try:
        yield held
    finally:
        await sub.unsubscribe()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_counts_move_by_exactly_the_messages_and_runs(
    make_daemon: DaemonFactory, nc: nats.NATS, client: aiohttp.ClientSession
) -> None:
    nats_hello, http_hello = 3, 2
    async with gateway(make_daemon) as base:
        before = await scrape(client, base)
        for _ in range(nats_hello):
            await nc.request("funcs.hello", b"John", timeout=T)
        for _ in range(http_hello):
            async with client.post(base + "/funcs.hello", data=b"John") as resp:
                assert resp.status == 200
        await nc.request("funcs.fail", b"", timeout=T)
        await nc.request("funcs.loop", b"", timeout=T)  # `--* timeout: 1s`
        await nc.request("funcs.multi", b"", timeout=T)  # two scripts: one message, two runs
        # Neither a subject without scripts, nor an internal subject, nor the daemon's own routes are messages.
        async with client.post(base + "/nothing.here") as resp:
            assert resp.status == 404
        await nc.request("__listScripts", b"", timeout=T)
        async with client.get(base + "/healthz") as resp:
            assert resp.status == 200
        after = await scrape(client, base)

    assert moved(before, after, "msgscript_messages_total", source="nats") == nats_hello + 3
    assert moved(before, after, "msgscript_messages_total", source="http") == http_hello
    runs = "msgscript_executions_total"
    assert moved(before, after, runs, subject="funcs.hello", name="hello", executor="lua", outcome="ok") == 5
    assert moved(before, after, runs, subject="funcs.fail", name="fail", executor="lua", outcome="error") == 1
    assert moved(before, after, runs, subject="funcs.loop", name="loop", executor="lua", outcome="timeout") == 1
    for name in ("a", "b"):
        assert moved(before, after, runs, subject="funcs.multi", name=name, executor="lua", outcome="ok") == 1
    assert value(after, runs, subject="funcs.fail", name="fail", executor="lua", outcome="ok") == 0
    # Every run is one duration observation, whatever its outcome.
    assert moved(before, after, "msgscript_execution_duration_seconds_count", executor="lua") == 9
    assert value(after, "msgscript_execution_duration_seconds_bucket", executor="lua", le="+Inf") == value(
        after, "msgscript_execution_duration_seconds_count", executor="lua"
    )
    assert moved(before, after, "msgscript_lock_wait_seconds_count") == 0  # no `lock: true` script ran


async def test_in_flight_is_read_when_scraped(
    make_daemon: DaemonFactory, nc: nats.NATS, client: aiohttp.ClientSession
) -> None:
    # funcs.wait asks test.slow and waits for its answer: held here, one message over NATS and one request over HTTP.
    async with held_requests(nc, "test.slow") as held, gateway(make_daemon) as base:
        assert value(await scrape(client, base), "msgscript_in_flight") == 0
        over_nats = asyncio.create_task(nc.request("funcs.wait", b"n", timeout=T))
        over_http = asyncio.create_task(client.post(base + "/funcs.wait?_timeout=10s", data=b"h"))

        async def both_waiting() -> bool:
            return len(held) == 2

        await eventually(both_waiting, "both scripts waiting on test.slow")
        assert value(await scrape(client, base), "msgscript_in_flight") == 2
        for msg in held:
            await msg.respond(b"done")
        await over_nats
        async with await over_http as resp:
            assert resp.status == 200
        assert value(await scrape(client, base), "msgscript_in_flight") == 0


async def test_a_run_nobody_waits_for_is_cancelled(
    make_daemon: DaemonFactory, nc: nats.NATS, client: aiohttp.ClientSession
) -> None:
    # Nobody answers the script's request: the HTTP wait runs out first.
    async with held_requests(nc, "test.slow"), gateway(make_daemon) as base:
        async with client.post(base + "/funcs.wait?_timeout=300ms", data=b"h") as resp:
            assert resp.status == 503
        labels = {"subject": "funcs.wait", "name": "wait", "executor": "lua"}

        async def recorded() -> bool:
            samples = await scrape(client, base)
            return value(samples, "msgscript_executions_total", **labels, outcome="cancelled") == 1

        await eventually(recorded, "the cancelled run recorded")
        samples = await scrape(client, base)
        assert value(samples, "msgscript_messages_total", source="http") == 1
        assert value(samples, "msgscript_execution_duration_seconds_count", executor="lua") == 1
        assert value(samples, "msgscript_in_flight") == 0


async def test_scripts_build_and_process(make_daemon: DaemonFactory, client: aiohttp.ClientSession) -> None:
    async with gateway(make_daemon, max_in_flight=17) as base:
        samples = await scrape(client, base)
    assert value(samples, "msgscript_scripts_loaded") == len(SCRIPTS)
    assert value(samples, "msgscript_in_flight_limit") == 17
    assert value(samples, "msgscript_build_info", version=__version__) == 1
    assert value(samples, "msgscript_nats_reconnects_total") == 0
    # Both message series are there before the first message, so that rate() sees it.
    assert ("msgscript_messages_total", frozenset({("source", "http")})) in samples
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)


async def test_lock_wait_of_a_locked_script_on_etcd(
    make_daemon: DaemonFactory,
    nc: nats.NATS,
    client: aiohttp.ClientSession,
    etcd_server: EtcdServer,
) -> None:
    source = "--* subject: funcs.locked\n--* name: locked\n--* lock: true\n--* timeout: 1s\n"
    source += 'function OnMessage(subject, payload) return "ran" end\n'
    async with EtcdClient([etcd_server.url]) as etcd:
        await etcd.put("msgscript/scripts/funcs.locked/locked", parse_script(source).to_json(), timeout_s=T)
        async with gateway(make_daemon, backend="etcd", etcd_endpoints=(etcd_server.url,)) as base:
            before = await scrape(client, base)
            assert value(before, "msgscript_scripts_loaded") == 1
            await nc.request("funcs.locked", b"", timeout=T)
            # Another instance holds the lock past the script's deadline: the wait ends in a timeout.
            async with EtcdLock(etcd).hold("locked_lock", T) as held:
                assert held
                await nc.request("funcs.locked", b"", timeout=T)
            after = await scrape(client, base)
            # The store is read at scrape time: a script added through etcd counts at once.
            other = parse_script(SCRIPTS["number.lua"]).to_json()
            await etcd.put("msgscript/scripts/funcs.number/number", other, timeout_s=T)

            async with asyncio.timeout(T):
                while value(await scrape(client, base), "msgscript_scripts_loaded") != 2:
                    await asyncio.sleep(0.05)
    assert moved(before, after, "msgscript_lock_wait_seconds_count") == 2
    assert value(after, "msgscript_lock_wait_seconds_sum") > 0
    labels = {"subject": "funcs.locked", "name": "locked", "executor": "lua"}
    assert moved(before, after, "msgscript_executions_total", **labels, outcome="ok") == 1
    assert moved(before, after, "msgscript_executions_total", **labels, outcome="timeout") == 1


@pytest.mark.parametrize("route", ["metrics", "readyz", "healthz"])
async def test_a_subject_named_like_a_route_does_not_shadow_it(
    make_daemon: DaemonFactory, fixture_dirs: tuple[Path, Path], client: aiohttp.ClientSession, route: str
) -> None:
    scripts, _ = fixture_dirs
    (scripts / "route.lua").write_text(
        f'--* subject: {route}\n--* name: shadow\nfunction OnMessage() return "shadow" end\n'
    )
    expected = {"metrics": "# HELP ", "readyz": "ready", "healthz": "ok"}[route]
    async with gateway(make_daemon) as base:
        async with client.get(f"{base}/{route}") as resp:
            assert resp.status == 200
            assert (await resp.text()).startswith(expected)
        # The subject is still served under a longer path.
        async with client.post(f"{base}/{route}/x") as resp:
            assert resp.status == 200
            assert "c2hhZG93" in await resp.text()  # base64 of "shadow"


async def test_no_metrics_answers_404_and_still_shadows_a_metrics_subject(
    make_daemon: DaemonFactory, fixture_dirs: tuple[Path, Path], client: aiohttp.ClientSession
) -> None:
    scripts, _ = fixture_dirs
    (scripts / "route.lua").write_text('--* subject: metrics\n--* name: m\nfunction OnMessage() return "m" end\n')
    async with gateway(make_daemon, metrics=False) as base:
        async with client.get(base + "/metrics") as resp:
            assert resp.status == 404
            assert await resp.text() == "404: Not Found"
        async with client.post(base + "/funcs.hello", data=b"x") as resp:
            assert resp.status == 200


async def test_metrics_want_the_token_but_not_the_browse_mode(
    make_daemon: DaemonFactory, client: aiohttp.ClientSession
) -> None:
    async with gateway(make_daemon, http_token=TOKEN, browse="off") as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with client.get(base + "/metrics", headers=headers) as resp:
                assert resp.status == 401
                assert "msgscript_" not in await resp.text()
        samples = await scrape(client, base, headers={"Authorization": f"Bearer {TOKEN}"})
        assert value(samples, "msgscript_build_info", version=__version__) == 1


async def test_openmetrics_when_asked(make_daemon: DaemonFactory, client: aiohttp.ClientSession) -> None:
    async with gateway(make_daemon) as base:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with client.get(base + "/metrics", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            assert (await resp.text()).endswith("# EOF\n")


async def test_metrics_of_the_msgscript_command(nats_server: NatsServer, client: aiohttp.ClientSession) -> None:
    port = free_port()
    args = ("-natsurl", nats_server.url, "-script", str(EXAMPLES), "-port", str(port))
    async with daemon_running(*args), await nats.connect(nats_server.url) as nc:
        await nc.request("funcs.hello", b"John", timeout=T)
        samples = await scrape(client, f"http://127.0.0.1:{port}")
    # The worker process serves them: its own runs, its own process.
    assert value(samples, "msgscript_messages_total", source="nats") == 1
    labels = {"subject": "funcs.hello", "name": "hello", "executor": "lua", "outcome": "ok"}
    assert value(samples, "msgscript_executions_total", **labels) == 1
    assert value(samples, "process_cpu_seconds_total") > 0


async def test_no_metrics_flag(nats_server: NatsServer, client: aiohttp.ClientSession) -> None:
    port = free_port()
    args = ("-natsurl", nats_server.url, "-script", str(EXAMPLES), "-port", str(port), "-no-metrics")
    async with daemon_running(*args):
        async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 404


def test_histogram_buckets_are_cumulative_and_a_bound_is_in_its_own_bucket() -> None:
    metrics = Metrics(in_flight=lambda: 3, in_flight_limit=9, scripts_loaded=lambda: 7, nats_reconnects=lambda: 2)
    for wait_s in (0.001, 0.0011, 500.0):
        metrics.observe_lock_wait(wait_s)
    samples = parse(generate_latest(metrics.registry).decode())
    buckets = "msgscript_lock_wait_seconds_bucket"
    assert (value(samples, buckets, le="0.001"), value(samples, buckets, le="0.005")) == (1, 2)
    assert (value(samples, buckets, le="120.0"), value(samples, buckets, le="+Inf")) == (2, 3)
    assert value(samples, "msgscript_lock_wait_seconds_count") == 3
    assert value(samples, "msgscript_lock_wait_seconds_sum") == pytest.approx(500.0021)
    assert value(samples, "msgscript_in_flight") == 3
    assert value(samples, "msgscript_in_flight_limit") == 9
    assert value(samples, "msgscript_scripts_loaded") == 7
    assert value(samples, "msgscript_nats_reconnects_total") == 2
