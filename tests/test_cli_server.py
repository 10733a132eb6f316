"""The `msgscript` command as a user runs it: flags, startup errors, logs, signals, embedded NATS."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from tests.processes import command_env, run_msgscript, start_daemon
from tests.servers import free_port, run_nats_server

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
async def nats_url() -> AsyncIterator[str]:
    async with run_nats_server() as server:
        yield server.url


async def test_help_lists_the_upstream_flags_with_their_defaults() -> None:
    code, out, _ = await run_msgscript("-h")
    assert code == 0
    blocks = [" ".join(block.split()) for block in out.split("\n  -")[1:]]
    lines = {"-" + block.split()[0].rstrip(","): block for block in blocks}
    for flag, default in [
        ("-backend", "file"),
        ("-etcdurl", "localhost:2379"),
        ("-log", "info"),
        ("-port", "7643"),
        ("-script", "."),
        ("-queue-group", "msgscript"),
        ("-timeout", "2m"),
    ]:
        assert f"default: {default}" in lines[flag]
    for flag in ("-natsurl", "-plugin", "-library"):
        assert flag in lines


async def test_unknown_flag_is_a_usage_error() -> None:
    code, _, err = await run_msgscript("--nope")
    assert code == 2
    assert "No such option '--nope'" in err


async def test_unknown_backend_is_one_clear_line(nats_url: str) -> None:
    code, _, err = await run_msgscript(
        "-backend", "sqlite", "-natsurl", nats_url, "-script", str(EXAMPLES), "-port", str(free_port())
    )
    assert code == 1
    assert "failed to initialize the script store: Unknown backend: sqlite" in err
    assert "Traceback" not in err


async def test_startup_failures_are_one_bare_line(nats_url: str, tmp_path: Path) -> None:
    # Said by the command itself, by the supervisor and by the worker: the message alone, as msgscriptcli does.
    for args, message in [
        (("-log", "bogus"), "Invalid log level: bogus"),
        (("-http-token", "env:MSGSCRIPT_NO_SUCH_TOKEN"), "-http-token: environment variable MSGSCRIPT_NO_SUCH_TOKEN"),
        (("-backend", "sqlite"), "failed to initialize the script store: Unknown backend: sqlite"),
    ]:
        code, out, err = await run_msgscript(
            *args, "-natsurl", nats_url, "-script", str(tmp_path), "-http-host", "127.0.0.1", "-port", str(free_port())
        )
        assert code == 1
        failures = [line for line in err.splitlines() if not line.startswith("time=")]
        assert len(failures) == 1 and failures[0].startswith(message), err
        assert message not in out


async def test_unreachable_nats_stops_the_start() -> None:
    code, _, err = await run_msgscript(
        "-natsurl", f"nats://127.0.0.1:{free_port()}", "-script", str(EXAMPLES), "-port", str(free_port())
    )
    assert code == 1
    assert "Failed to connect to NATS: no server answered at nats://127.0.0.1:" in err
    assert "Traceback" not in err


async def test_a_signal_while_starting_stops_the_start() -> None:
    daemon = await start_daemon("-natsurl", f"nats://127.0.0.1:{free_port()}", "-script", str(EXAMPLES), ready=None)
    await daemon.wait_for_log("NATS error")  # still trying to connect
    assert await daemon.stop() == 0
    assert "Received shutdown signal" in daemon.log
    assert "Failed to connect" not in daemon.log


async def test_invalid_log_level(nats_url: str) -> None:
    code, _, err = await run_msgscript("-log", "bogus", "-natsurl", nats_url)
    assert code == 1
    assert "Invalid log level: bogus" in err


async def test_unreadable_script_dir(nats_url: str, tmp_path: Path) -> None:
    code, _, err = await run_msgscript(
        "-natsurl", nats_url, "-script", str(tmp_path / "missing"), "-port", str(free_port())
    )
    assert code == 1
    assert "failed to read directory" in err and "missing" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
async def test_serves_with_go_style_flags_and_stops_on_signal(nats_url: str, sig: int) -> None:
    daemon = await start_daemon(f"-natsurl={nats_url}", "--script", str(EXAMPLES), "-port", str(free_port()))
    assert f"loaded {len(list(EXAMPLES.glob('*.lua')))} scripts from {EXAMPLES.resolve()}" in daemon.log
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.request("funcs.hello", b"John", timeout=5)
        assert b"UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxvIHdpdGggcGF5bG9hZDogSm9obg==" in msg.data
    finally:
        await nc.close()
    assert await daemon.stop(sig) == 0
    assert "Received shutdown signal, stopping server..." in daemon.log


async def test_nats_url_from_environment(nats_url: str) -> None:
    daemon = await start_daemon("-script", str(EXAMPLES), "-port", str(free_port()), env=command_env(NATS_URL=nats_url))
    assert "embeded" not in daemon.log
    nc = await nats.connect(nats_url)
    try:
        assert (await nc.request("funcs.hello", b"x", timeout=5)).data.startswith(b'{"script_result":[')
    finally:
        await nc.close()
    assert await daemon.stop() == 0


async def test_embedded_nats_is_started_when_no_url_is_given() -> None:
    port = free_port()
    daemon = await start_daemon("-script", str(EXAMPLES), "-embedded-nats-port", str(port), "-port", str(free_port()))
    assert f"Starting embeded NATS server... on 127.0.0.1:{port}" in daemon.log
    assert "NATS server started" in daemon.log
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        assert (await nc.request("funcs.hello", b"x", timeout=5)).data.startswith(b'{"script_result":[')
    finally:
        await nc.close()
    assert await daemon.stop() == 0
    # The embedded server goes away with the daemon.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_embedded_nats_reuses_a_server_that_already_answers() -> None:
    async with run_nats_server() as server:
        daemon = await start_daemon(
            "-script", str(EXAMPLES), "-embedded-nats-port", str(server.port), "-port", str(free_port())
        )
        assert f"a NATS server already answers on 127.0.0.1:{server.port}, using it" in daemon.log
        assert "Starting embeded" not in daemon.log
        assert await daemon.stop() == 0


async def test_reconnects_after_nats_restarts() -> None:
    port = free_port()
    async with run_nats_server(port=port) as first:
        daemon = await start_daemon("-natsurl", first.url, "-script", str(EXAMPLES), "-port", str(free_port()))
    # NATS is gone; bring it back on the same port and the daemon serves again.
    async with run_nats_server(port=port) as second:
        await daemon.wait_for_log("reconnected to NATS", timeout=20)
        nc = await nats.connect(second.url)
        try:
            msg = await nc.request("funcs.hello", b"again", timeout=5)
            assert b'"error":""' in msg.data
        finally:
            await nc.close()
        assert await daemon.stop() == 0
