"""`msgscriptcli devhttp` as a user runs it: a subprocess serving one script file on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.http_wire import exchange, exchange_then_closed
from tests.servers import free_port

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
STARTUP_TIMEOUT_S = 20.0
ENTRY = "from msgscript.cli.main import main; main()"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DEBUG", "ETCD_ENDPOINTS")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class DevServer:
    url: str
    proc: asyncio.subprocess.Process

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`; the exit status and everything written to stderr."""
        self.proc.send_signal(sig)
        _, err = await asyncio.wait_for(self.proc.communicate(), 20)
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


@contextlib.asynccontextmanager
async def devhttp(*args: str) -> AsyncIterator[DevServer]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENTRY,
        "devhttp",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    server = DevServer(f"http://127.0.0.1:{port}", proc)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while True:
            if proc.returncode is not None:
                _, err = await proc.communicate()
                raise AssertionError(f"devhttp exited with {proc.returncode}: {err.decode()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    raise AssertionError("devhttp did not start listening") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_serves_the_script_as_plain_text_and_rereads_it(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    script = tmp_path / "hello.lua"
    script.write_text((EXAMPLES / "hello.lua").read_text())
    async with devhttp(str(script)) as server:
        async with client.post(server.url + "/anything", data=b"John") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain"
            assert await resp.read() == b"Processed subject: anything with payload: John"
        script.write_text(script.read_text().replace("Processed subject: ", "Edited: "))
        async with client.post(server.url + "/other/path", data=b"Jane") as resp:
            assert resp.status == 200
            assert await resp.read() == b"Edited: other with payload: Jane"
        status, err = await server.stop(signal.SIGTERM)
    assert status == 0
    assert "Received shutdown signal, stopping server..." in err
    assert "Starting HTTP server on port" in err


async def test_html_script_gets_the_url_and_answers_like_the_gateway(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    script = tmp_path / "page.lua"
    script.write_text(
        """--* subject: web.dev
--* name: page
--* html: true
function GET(url, body) return "<i>" .. url .. "</i>" end
function POST(url, body) return "made " .. body, 201, {["X-Made"] = "yes"} end
function PUT(url, body) error("nope") end
"""
    )
    async with devhttp(str(script)) as server:
        async with client.get(server.url + "/web.dev") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html"
            # An empty url becomes "/".
            assert await resp.read() == b"<i>/</i>"
        async with client.get(server.url + "/web.dev/a/b?x=1") as resp:
            assert await resp.read() == b"<i>/a/b?x=1</i>"
        async with client.post(server.url + "/web.dev", data=b"it") as resp:
            assert resp.status == 201
            assert resp.headers["X-Made"] == "yes"
            assert await resp.read() == b"made it"
        async with client.put(server.url + "/web.dev") as resp:
            assert resp.status == 500
            assert (await resp.text()).startswith("Error: failed to call PUT function: ")
        status, _ = await server.stop(signal.SIGINT)
    assert status == 0


async def test_script_error_is_a_500_and_libraries_come_from_the_directory(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "greeting.lua").write_text('--* name: greet\nfunction Greet(n) return "hi " .. n end\n')
    script = tmp_path / "lib.lua"
    script.write_text(
        "--* subject: funcs.lib\n--* name: lib\n--* require: greet\nfunction OnMessage(_, p) return Greet(p) end\n"
    )
    failing = tmp_path / "fail.lua"
    failing.write_text((EXAMPLES / "fail.lua").read_text())
    async with devhttp("-l", str(libs), str(script)) as server:
        async with client.post(server.url + "/funcs.lib", data=b"John") as resp:
            assert resp.status == 200
            assert await resp.read() == b"hi John"
        await server.stop()
    async with devhttp(str(failing)) as server:
        async with client.post(server.url + "/funcs.fail") as resp:
            assert resp.status == 500
            assert (await resp.text()).startswith("Error: failed to call OnMessage function: ")
        # A script file that disappears is a clear error, and the server keeps serving.
        failing.unlink()
        async with client.post(server.url + "/funcs.fail") as resp:
            assert resp.status == 500
            assert (await resp.text()).startswith("Error: failed to read the script file")
        status, _ = await server.stop()
    assert status == 0


async def test_requests_get_the_gateways_checks_and_body_decoding(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    script = tmp_path / "hello.lua"
    script.write_text((EXAMPLES / "hello.lua").read_text())
    async with devhttp(str(script)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        answer, closed = await exchange_then_closed(port, b"GET /funcs.hello HTTP/2.0\r\nHost: x\r\n\r\n")
        assert (answer.status, closed) == (505, True)
        for refused, reason in (
            (b"GET /funcs.hello HTTP/1.1\r\nHost: a b\r\n\r\n", b"invalid Host header"),
            (b"GET /funcs.hello\r\nHost: x\r\n\r\n", b"HTTP/0.9 is not supported"),
            (
                b"CONNECT funcs.hello:80 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"CONNECT is not supported, this server is not a proxy",
            ),
        ):
            answer, closed = await exchange_then_closed(port, refused)
            assert (answer.status, answer.body, closed) == (400, b"Error: bad request: " + reason, True)
        answer = await exchange(port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (answer.status, answer.body) == (200, b"")
        answer = await exchange(port, b"GET //funcs.hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (answer.status, answer.headers["Location"]) == (301, "/funcs.hello")
        for body, coding in (
            (gzip.compress(b"John"), "gzip"),
            (zlib.compress(gzip.compress(b"John")), "gzip, deflate"),
        ):
            async with client.post(
                server.url + "/funcs.hello", data=body, headers={"Content-Encoding": coding}
            ) as resp:
                assert resp.status == 200
                assert await resp.read() == b"Processed subject: funcs.hello with payload: John"
        headers = {"Content-Encoding": "gzip"}
        async with client.post(server.url + "/funcs.hello", data=gzip.compress(b"John")[:-8], headers=headers) as resp:
            assert (resp.status, await resp.read()) == (400, b"Error: bad request body: the gzip stream is cut short")
        async with client.post(server.url + "/funcs.hello", data=b"John", headers={"Content-Encoding": "zstd"}) as resp:
            assert resp.status == 415
            assert resp.headers["Accept-Encoding"].startswith("gzip, deflate")
        status, _ = await server.stop()
    assert status == 0


async def test_default_port_is_7634() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, "devhttp", "--help", stdout=asyncio.subprocess.PIPE, env=cli_env()
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert "7634" in out.decode()


async def test_missing_library_directory_fails_at_start(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENTRY,
        "devhttp",
        "-l",
        str(tmp_path / "nope"),
        str(EXAMPLES / "hello.lua"),
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "failed to read librairies" in err.decode()
