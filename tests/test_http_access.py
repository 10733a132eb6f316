"""Who may use the gateway, over real sockets: browse modes by client address, the bearer token, /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from msgscript.http.access import is_loopback_address
from tests.conftest import DaemonFactory
from tests.processes import command_env, daemon_running, run_msgscript
from tests.servers import free_port, missing, run_nats_server

EXAMPLES = Path(__file__).parent.parent / "examples"
TOKEN = "s3cret-Token_42"
DUMMY_INTERFACE = "msgscript-t0"
DUMMY_ADDRESS = "198.51.100.77"  # TEST-NET-2: never routed, safe to put on a test interface

# What the browse modes govern: the pages (with the README) and the internal subjects over HTTP.
PAGES = ["/", "/_/", "/_/list", "/_/subject/funcs.hello", "/_/info/funcs.hello/hello"]
INTERNAL = [
    ("/__listScripts", b""),
    ("/__listNamesForScript", b"funcs.hello"),
    ("/__infoNamedScript", b"funcs.hello,hello"),
]


def _usable(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return not is_loopback_address(address)


def _host_addresses() -> list[str]:
    """The machine's IPv4 addresses as `hostname -I` lists them."""
    hostname = shutil.which("hostname")
    if hostname is None:
        return []
    try:
        out = subprocess.run([hostname, "-I"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [a for a in out.split() if "." in a]


@pytest.fixture(scope="module")
def outside_address() -> Iterator[str]:
    """A non-loopback address of this machine; a dummy interface carries one when the machine has none."""
    for address in _host_addresses():
        if _usable(address):
            yield address
            return
    ip = shutil.which("ip")
    if ip is None or os.geteuid() != 0:
        missing("a non-loopback address (or root and `ip` to create one)")
    steps = [
        [ip, "link", "add", DUMMY_INTERFACE, "type", "dummy"],
        [ip, "addr", "add", f"{DUMMY_ADDRESS}/32", "dev", DUMMY_INTERFACE],
        [ip, "link", "set", DUMMY_INTERFACE, "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield DUMMY_ADDRESS
    except subprocess.CalledProcessError as exc:
        missing(f"a dummy interface ({exc.stderr.decode().strip()})")
    finally:
        subprocess.run([ip, "link", "del", DUMMY_INTERFACE], capture_output=True, timeout=10, check=False)


SiteFactory = Callable[..., contextlib.AbstractAsyncContextManager[int]]


@pytest.fixture
def start_site(make_daemon: DaemonFactory) -> SiteFactory:
    """Start a daemon listening on `host` (default all IPv4 addresses); yields its port."""

    @contextlib.asynccontextmanager
    async def start(host: str = "0.0.0.0", **overrides: Any) -> AsyncIterator[int]:
        port = free_port()
        async with make_daemon(http_port=port, http_host=host, **overrides):
            yield port

    return start


@contextlib.asynccontextmanager
async def session_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections leave from `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def visible(session: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The status of every page and internal subject, by path."""
    statuses = {}
    for path in PAGES:
        async with session.get(base + path) as resp:
            statuses[path] = resp.status
            assert resp.status == 404 or "funcs.hello" in await resp.text() or path in ("/", "/_/")
    for path, data in INTERNAL:
        async with session.post(base + path, data=data) as resp:
            statuses[path] = resp.status
    return statuses


async def gateway_answers(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.post(base + "/funcs.hello", data=b"John") as resp:
        return resp.status == 200 and b"UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxv" in await resp.read()


def test_loopback_addresses() -> None:
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::ffff:127.1.2.3"):
        assert is_loopback_address(address), address
    for address in ("192.0.2.2", "::ffff:192.0.2.2", "fd00::2", "0.0.0.0", "::", "", "localhost", "not an address"):
        assert not is_loopback_address(address), address


async def test_browse_local_by_default_answers_only_loopback_clients(
    start_site: SiteFactory, outside_address: str
) -> None:
    async with start_site() as port:
        async with session_from("127.0.0.1") as local:
            assert set((await visible(local, f"http://127.0.0.1:{port}")).values()) == {200}
        outside = f"http://{outside_address}:{port}"
        async with session_from(outside_address) as remote:
            # As if the pages did not exist; the functions themselves are served to everyone.
            assert set((await visible(remote, outside)).values()) == {404}
            assert await gateway_answers(remote, outside)
            async with remote.get(outside + "/_/info/funcs.hello/hello") as resp:
                assert "OnMessage" not in await resp.text()


async def test_browse_public_answers_every_client(start_site: SiteFactory, outside_address: str) -> None:
    async with start_site(browse="public") as port, session_from(outside_address) as remote:
        assert set((await visible(remote, f"http://{outside_address}:{port}")).values()) == {200}


async def test_browse_off_answers_no_client(start_site: SiteFactory, outside_address: str) -> None:
    async with start_site(browse="off") as port:
        for address in ("127.0.0.1", outside_address):
            async with session_from(address) as session:
                base = f"http://{address}:{port}"
                assert set((await visible(session, base)).values()) == {404}
                assert await gateway_answers(session, base)


async def test_ipv6_loopback_is_local(start_site: SiteFactory) -> None:
    if not socket.has_ipv6 or not _can_bind_ipv6_loopback():
        missing("IPv6 loopback")
    async with start_site(host="::1") as port, aiohttp.ClientSession() as session:
        assert set((await visible(session, f"http://[::1]:{port}")).values()) == {200}


def _can_bind_ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


async def test_healthz_answers_ok(start_site: SiteFactory) -> None:
    async with start_site(host="127.0.0.1") as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
            assert await resp.text() == "ok"


async def test_a_token_guards_every_route_but_healthz(start_site: SiteFactory, outside_address: str) -> None:
    async with start_site(http_token=TOKEN, browse="public") as port, session_from(outside_address) as session:
        base = f"http://{outside_address}:{port}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for path in ("/funcs.hello", "/_/list", "/", "/favicon.ico", "/__listScripts", "/nothing.here"):
                async with session.post(base + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "OnMessage" not in await resp.text()
        async with session.get(base + "/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")
        for scheme in ("Bearer", "bearer"):
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            async with session.post(base + "/funcs.hello", data=b"John", headers=headers) as resp:
                assert resp.status == 200
            async with session.get(base + "/_/list", headers=headers) as resp:
                assert resp.status == 200


# --- The command line -----------------------------------------------------------------------------


@pytest.fixture
async def nats_url() -> AsyncIterator[str]:
    async with run_nats_server() as server:
        yield server.url


async def get_when_listening(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    """GET a URL of a daemon that has just started, retrying until it listens."""
    for _ in range(100):
        try:
            async with session.get(url, **kwargs) as resp:
                return resp.status, await resp.text()
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens at {url}")


@pytest.mark.parametrize("source", ["file", "env"])
async def test_http_token_from_a_file_or_the_environment(nats_url: str, tmp_path: Path, source: str) -> None:
    env = command_env()
    if source == "file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        spec = str(tmp_path / "token")
    else:
        env["MSGSCRIPT_TEST_TOKEN"] = TOKEN
        spec = "env:MSGSCRIPT_TEST_TOKEN"
    port = free_port()
    args = ("-natsurl", nats_url, "-script", str(EXAMPLES), "-port", str(port), "-http-token", spec, "-log", "debug")
    async with daemon_running(*args, env=env) as daemon, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"
        assert await get_when_listening(session, base + "/healthz") == (200, "ok")
        assert (await get_when_listening(session, base + "/funcs.hello"))[0] == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await get_when_listening(session, base + "/funcs.hello", headers=auth))[0] == 200
    assert TOKEN not in daemon.log


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("missing-file", None, "-http-token: cannot read"),
        ("token", "\n", "is empty or not set"),
        ("token", "two words", "holds whitespace or control characters"),
        (
            "env:MSGSCRIPT_TEST_UNSET",
            None,
            "-http-token: environment variable MSGSCRIPT_TEST_UNSET is empty or not set",
        ),
    ],
)
async def test_an_unusable_http_token_stops_the_start(
    nats_url: str, tmp_path: Path, spec: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / spec).write_text(content)
    if not spec.startswith("env:"):
        spec = str(tmp_path / spec)
    code, _, err = await run_msgscript("-natsurl", nats_url, "-script", str(EXAMPLES), "-http-token", spec)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


async def test_no_browse_is_browse_off_and_browse_takes_three_values(nats_url: str) -> None:
    code, _, err = await run_msgscript("-browse", "everyone")
    assert code == 2
    assert "'everyone' is not one of 'local', 'public', 'off'" in err
    for flags, status in ((("-no-browse",), 404), (("-browse", "off"), 404), ((), 200)):
        port = free_port()
        args = ("-natsurl", nats_url, "-script", str(EXAMPLES), "-port", str(port), *flags)
        async with daemon_running(*args), aiohttp.ClientSession() as session:
            assert (await get_when_listening(session, f"http://127.0.0.1:{port}/_/list"))[0] == status, flags
