"""The daemon and msgscriptcli on a secured etcd: TLS, client certificates, users and passwords, each against a
real etcd configured that way. The store, the cluster lock and the Lua `etcd` module all go through the one
secured client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import grpc.aio
import nats
import pytest
from aetcd import rpc

from msgscript.app import running
from msgscript.config import Settings
from msgscript.errors import ConfigError, EtcdError
from msgscript.etcd_client import EtcdClient, EtcdCredentials, etcd_credentials
from msgscript.message import Reply
from tests.credentials import Pki, make_pki
from tests.processes import command_env, daemon_running, run_msgscript, run_msgscriptcli
from tests.servers import EtcdTls, NatsServer, enable_etcd_auth, free_port, run_etcd

HELLO = Path(__file__).parent.parent / "examples" / "hello.lua"
GREETING = b"Processed subject: funcs.hello with payload: John"
PASSWORD = "s3cret-Pa55word"
ROOT_PASSWORD = "r00t-Pa55word"
T = 5.0
# Runs under the cluster lock and writes and reads through the Lua etcd module: all three need the user.
COUNTER = """--* subject: funcs.remember
--* name: remember
--* lock: true
local etcd = require("etcd")
function OnMessage(subject, payload)
    local err = etcd.put("remembered/" .. payload, "yes")
    if err then return "put failed: " .. err end
    local kvs, get_err = etcd.get("remembered/", true)
    if get_err then return "get failed: " .. get_err end
    return "remembered " .. kvs[1]:getKey()
end
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


async def ask(url: str, subject: str, payload: bytes) -> bytes | None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        msg = await nc.request(subject, payload, timeout=10)
    finally:
        await nc.close()
    reply = Reply.from_json(msg.data)
    assert reply.error == "" and reply.results, reply
    assert reply.results[0].error == "", reply
    return reply.results[0].payload


def daemon_args(etcd_url: str, nats_url: str, *flags: str | Path) -> tuple[str, ...]:
    return ("-backend", "etcd", "-etcdurl", etcd_url, "-natsurl", nats_url, "-port", str(free_port()), *map(str, flags))


def one_line(err: str, text: str) -> bool:
    """True when text is said on exactly one line of err, and err holds no traceback."""
    return "Traceback" not in err and sum(text in line for line in err.splitlines()) == 1


async def test_tls_etcd_serves_the_cli_and_the_daemon(pki: Pki, nats_server: NatsServer) -> None:
    async with run_etcd(tls=EtcdTls(pki.ca, pki.server_cert, pki.server_key)) as etcd:
        assert etcd.url.startswith("https://")
        cli = ("-e", etcd.url, "--etcd-ca", pki.ca)
        code, _, err = await run_msgscriptcli(*cli, "add", HELLO)
        assert code == 0, err
        code, out, err = await run_msgscriptcli(*cli, "list")
        assert (code, out.split()) == (0, ["SUBJECT", "NAME", "funcs.hello", "hello"]), err
        # etcd's certificate is not signed by a CA the system trusts.
        code, _, err = await run_msgscriptcli("-e", etcd.url, "list")
        assert code == 1
        assert err.startswith(f"failed to get script store: etcd at {etcd.endpoint} is unreachable: ")
        assert "CERTIFICATE_VERIFY_FAILED" in err
        async with daemon_running(*daemon_args(etcd.url, nats_server.url, "-etcd-ca", pki.ca)):
            assert await ask(nats_server.url, "funcs.hello", b"John") == GREETING


async def test_etcd_that_wants_client_certificates(pki: Pki, nats_server: NatsServer) -> None:
    tls = EtcdTls(
        pki.ca,
        pki.server_cert,
        pki.server_key,
        client_cert_auth=True,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
    )
    async with run_etcd(tls=tls) as etcd:
        env = command_env(
            ETCDCTL_CACERT=str(pki.ca), ETCDCTL_CERT=str(pki.client_cert), ETCDCTL_KEY=str(pki.client_key)
        )
        code, _, err = await run_msgscriptcli("-e", etcd.url, "add", HELLO, env=env)
        assert code == 0, err
        settings = Settings(
            backend="etcd",
            etcd_endpoints=(etcd.url,),
            etcd_tls_ca_file=str(pki.ca),
            etcd_tls_cert_file=str(pki.client_cert),
            etcd_tls_key_file=str(pki.client_key),
            nats_url=nats_server.url,
            http_host="127.0.0.1",
            http_port=0,
            grace_period_s=5.0,
        )
        async with running(settings):
            assert await ask(nats_server.url, "funcs.hello", b"John") == GREETING
        with pytest.raises(ConfigError, match=f"^failed to initialize the script store: etcd at {etcd.endpoint} is "):
            async with running(replace(settings, etcd_tls_cert_file="", etcd_tls_key_file="")):
                pass


async def test_etcd_with_users_and_passwords(nats_server: NatsServer, tmp_path: Path) -> None:
    script = tmp_path / "remember.lua"
    script.write_text(COUNTER)
    async with run_etcd() as etcd:
        await enable_etcd_auth(etcd, user="fn", password=PASSWORD, root_password=ROOT_PASSWORD)
        cli = ("-e", etcd.url, "--etcd-user", "fn", "--etcd-password", PASSWORD)
        code, _, err = await run_msgscriptcli(*cli, "add", script)
        assert code == 0, err
        code, out, err = await run_msgscriptcli(*cli, "list")
        assert (code, out.split()) == (0, ["SUBJECT", "NAME", "funcs.remember", "remember"]), err

        refused = "etcdserver: authentication failed, invalid user ID or password"
        wrong = command_env(ETCDCTL_USER="fn:wr0ng-Pa55word")
        code, _, err = await run_msgscriptcli("-e", etcd.url, "list", env=wrong)
        assert (code, err.strip()) == (1, f"failed to get script store: {refused}")
        code, _, err = await run_msgscriptcli("-e", etcd.url, "list")
        assert (code, err.strip()) == (1, "failed to get script store: etcdserver: user name is empty")

        # etcdctl's user:password form, from the environment.
        env = command_env(ETCDCTL_USER=f"fn:{PASSWORD}")
        async with daemon_running(*daemon_args(etcd.url, nats_server.url), env=env):
            assert await ask(nats_server.url, "funcs.remember", b"tuesday") == b"remembered remembered/tuesday"

        code, out, err = await run_msgscript(*daemon_args(etcd.url, nats_server.url), env=wrong)
        assert code == 1
        assert one_line(err, f"failed to initialize the script store: {refused}")
        assert "wr0ng" not in out + err


async def test_a_forgotten_token_is_renewed() -> None:
    async with run_etcd(extra=("--auth-token-ttl", "1")) as etcd:
        await enable_etcd_auth(etcd, user="fn", password=PASSWORD, root_password=ROOT_PASSWORD)
        async with EtcdClient([etcd.url], credentials=EtcdCredentials(user="fn", password=PASSWORD)) as client:
            await client.put("k", "v", timeout_s=T)
            async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
                request = rpc.AuthenticateRequest(name="fn", password=PASSWORD)
                token = (await rpc.AuthStub(channel).Authenticate(request)).token
                await asyncio.sleep(2.5)
                # etcd has forgotten the tokens of that time, ours included.
                with pytest.raises(grpc.aio.AioRpcError) as forgotten:
                    await rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"k"), metadata=(("token", token),))
                assert forgotten.value.code() == grpc.StatusCode.UNAUTHENTICATED
            found = await client.get("k", timeout_s=T)
            assert found is not None and found.value == b"v"


def test_credentials_from_settings(pki: Pki) -> None:
    assert etcd_credentials(Settings(etcd_user="fn:pa:ss")) == EtcdCredentials(user="fn", password="pa:ss")
    assert etcd_credentials(Settings(etcd_user="fn:x", etcd_password="pw")) == EtcdCredentials(
        user="fn:x", password="pw"
    )
    found = etcd_credentials(
        Settings(
            etcd_tls_ca_file=str(pki.ca), etcd_tls_cert_file=str(pki.client_cert), etcd_tls_key_file=str(pki.client_key)
        )
    )
    assert found.ca_pem == pki.ca.read_bytes() and found.cert_pem == pki.client_cert.read_bytes()
    assert found.has_tls_files and not EtcdCredentials(user="fn", password="pw").has_tls_files
    assert PASSWORD not in repr(EtcdCredentials(user="fn", password=PASSWORD))


def test_unusable_credentials_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases: list[tuple[Settings, str]] = [
        (Settings(etcd_user="fn"), r"^-etcd-user \(ETCDCTL_USER\) needs a password: user:password, -etcd-password"),
        (Settings(etcd_password=PASSWORD), r"^-etcd-password \(ETCDCTL_PASSWORD\) needs -etcd-user \(ETCDCTL_USER\)$"),
        (Settings(etcd_tls_key_file=str(pki.client_key)), r"^-etcd-cert \(ETCDCTL_CERT\) and -etcd-key"),
        (
            Settings(etcd_tls_ca_file=str(tmp_path / "nope.pem")),
            "^cannot use the etcd CA file .*nope.pem: No such file",
        ),
        (
            Settings(etcd_tls_ca_file=str(not_pem)),
            "^cannot use the etcd CA file .*not.pem: no certificate or crl found$",
        ),
        (
            Settings(etcd_tls_cert_file=str(pki.client_cert), etcd_tls_key_file=str(not_pem)),
            "^cannot use the etcd client certificate .* with the key .*not.pem: not a PEM certificate and its private",
        ),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            etcd_credentials(settings)


async def test_a_plain_endpoint_is_refused_when_tls_is_on(pki: Pki) -> None:
    credentials = EtcdCredentials(ca_pem=pki.ca.read_bytes())
    async with EtcdClient(["http://127.0.0.1:2379"], credentials=credentials) as client:
        with pytest.raises(EtcdError, match="^etcd endpoint http://127.0.0.1:2379 is http:// while TLS is on"):
            await client.get("k", timeout_s=T)


async def test_a_bad_etcd_setting_stops_the_daemon_in_one_line(nats_server: NatsServer) -> None:
    code, _, err = await run_msgscript(*daemon_args("127.0.0.1:1", nats_server.url, "-etcd-password", PASSWORD))
    assert code == 1
    assert one_line(err, "-etcd-password (ETCDCTL_PASSWORD) needs -etcd-user (ETCDCTL_USER)")
    assert PASSWORD not in err
