"""Fixtures shared by the suite: a fresh nats-server and etcd per test, a NATS client, and in-process daemons on
the fixture scripts of tests/fixtures.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from msgscript.app import running
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from tests.fixtures import write_fixtures
from tests.servers import EtcdServer, NatsServer, free_port, run_etcd, run_nats_server

DaemonFactory = Callable[..., contextlib.AbstractAsyncContextManager[Dispatcher]]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run in-process (CliRunner) configure logging; later tests must not inherit it."""
    root, ours = logging.getLogger(), logging.getLogger("msgscript")
    saved = (root.level, list(root.handlers), ours.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    ours.setLevel(saved[2])


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    async with run_nats_server() as server:
        yield server


@pytest.fixture
async def etcd_server() -> AsyncIterator[EtcdServer]:
    """A fresh single-member etcd; `.url` is its client URL, `.endpoint` the same as host:port."""
    async with run_etcd() as server:
        yield server


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def fixture_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return write_fixtures(tmp_path)


def fixture_settings(nats_url: str, scripts: Path, libs: Path, **overrides: Any) -> Settings:
    """Settings of an in-process daemon on the fixture scripts (tests/fixtures.py); keywords override them."""
    options: dict[str, Any] = {
        "nats_url": nats_url,
        "script_dir": str(scripts),
        "library_dir": str(libs),
        # A port of its own per daemon (tests that talk HTTP pick a free port themselves).
        "http_host": "127.0.0.1",
        "http_port": 0,
        "grace_period_s": 5.0,
        "max_memory_bytes": 32 * 1024 * 1024,
    }
    options.update(overrides)
    return Settings(**options)


@pytest.fixture
def make_daemon(nats_server: NatsServer, fixture_dirs: tuple[Path, Path]) -> DaemonFactory:
    """Start an in-process daemon on the test NATS server and the fixture scripts; keywords override Settings."""
    scripts, libs = fixture_dirs

    def make(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Dispatcher]:
        return running(fixture_settings(nats_server.url, scripts, libs, **overrides))

    return make


@contextlib.asynccontextmanager
async def gateway_daemon(root: Path, **overrides: Any) -> AsyncIterator[int]:
    """An in-process daemon on a nats-server of its own and the fixture scripts written under `root`, its HTTP
    gateway on a free port of 127.0.0.1; yields that port. For module-scoped fixtures (`make_daemon` is per test)."""
    scripts, libs = write_fixtures(root)
    port = free_port()
    async with (
        run_nats_server() as server,
        running(fixture_settings(server.url, scripts, libs, http_port=port, **overrides)),
    ):
        yield port


@pytest.fixture
async def daemon(make_daemon: DaemonFactory) -> AsyncIterator[Dispatcher]:
    async with make_daemon() as dispatcher:
        yield dispatcher


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
