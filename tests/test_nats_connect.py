"""The daemon on a secured NATS: TLS (server verified, mutual), user and password, token, NKey and operator-mode
`.creds`, each against a real nats-server configured that way, asked through a client secured the same way."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from msgscript.app import running
from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.message import Reply
from msgscript.nats_connect import nats_connect_options, redact_url
from tests.credentials import Pki, make_operator, make_pki, new_nkey, public_key, seed
from tests.processes import command_env, daemon_running, run_msgscript
from tests.servers import free_port, run_nats_server

HELLO = Path(__file__).parent.parent / "examples" / "hello.lua"
GREETING = b"Processed subject: funcs.hello with payload: John"
PASSWORD = "s3cret-Pa55word"
TOKEN = "t0ken-4-msgscript"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    directory = tmp_path / "scripts"
    directory.mkdir()
    shutil.copy(HELLO, directory)
    return directory


def daemon_settings(url: str, scripts: Path, **security: Any) -> Settings:
    return Settings(
        nats_url=url, script_dir=str(scripts), http_host="127.0.0.1", http_port=0, grace_period_s=5.0, **security
    )


def daemon_args(url: str, scripts: Path, *flags: str | Path) -> tuple[str, ...]:
    return ("-natsurl", url, "-script", str(scripts), "-port", str(free_port()), *map(str, flags))


def client_tls(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


async def ask_hello(url: str, **client: Any) -> bytes | None:
    """Request funcs.hello as a client connected with `client` (nats.connect options); the first result's payload."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, **client)
    try:
        msg = await nc.request("funcs.hello", b"John", timeout=5)
    finally:
        await nc.close()
    reply = Reply.from_json(msg.data)
    assert reply.error == "" and reply.results, reply
    return reply.results[0].payload


def failure_lines(err: str, text: str) -> list[str]:
    """The log lines mentioning text; a startup failure must say it once, without a traceback."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if text in line]


def tls_server_flags(pki: Pki, *, verify_clients: bool = False) -> tuple[str, ...]:
    flags = ("--tls", "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key))
    if verify_clients:
        flags += ("--tlsverify", "--tlscacert", str(pki.ca))
    return flags


# TLS --------------------------------------------------------------------------------------------------------


async def test_daemon_verifies_the_tls_server_with_the_given_ca(pki: Pki, scripts: Path) -> None:
    async with run_nats_server(*tls_server_flags(pki)) as server:
        assert server.url.startswith("tls://")
        async with daemon_running(*daemon_args(server.url, scripts, "-nats-tls-ca", pki.ca)):
            assert await ask_hello(server.url, tls=client_tls(pki)) == GREETING


async def test_tls_server_not_signed_by_a_known_ca_stops_the_start(pki: Pki, scripts: Path) -> None:
    async with run_nats_server(*tls_server_flags(pki)) as server:
        code, _, err = await run_msgscript(*daemon_args(server.url, scripts))
    assert code == 1
    reason = "the server's TLS certificate was not accepted: unable to get local issuer certificate"
    assert len(failure_lines(err, f"Failed to connect to NATS at {server.url}: {reason}")) == 1
    assert "NATS error" not in err  # a refusal is not retried


async def test_mutual_tls_shows_the_client_certificate(pki: Pki, scripts: Path) -> None:
    async with run_nats_server(*tls_server_flags(pki, verify_clients=True)) as server:
        security = {
            "nats_tls_ca_file": str(pki.ca),
            "nats_tls_cert_file": str(pki.client_cert),
            "nats_tls_key_file": str(pki.client_key),
        }
        async with running(daemon_settings(server.url, scripts, **security)):
            assert await ask_hello(server.url, tls=client_tls(pki, with_cert=True)) == GREETING
        with pytest.raises(ConfigError, match="the TLS handshake failed: .*certificate required"):
            async with running(daemon_settings(server.url, scripts, nats_tls_ca_file=str(pki.ca))):
                pass


async def test_tls_settings_refuse_a_server_without_tls(pki: Pki, scripts: Path) -> None:
    async with run_nats_server("--user", "fn", "--pass", PASSWORD) as server:
        security = {"nats_tls_ca_file": str(pki.ca), "nats_user": "fn", "nats_password": PASSWORD}
        with pytest.raises(ConfigError, match="the server does not offer TLS, which the settings ask for"):
            async with running(daemon_settings(server.url, scripts, **security)):
                pass
        # A tls:// URL alone asks for TLS just the same.
        with pytest.raises(ConfigError, match="does not offer TLS"):
            async with running(daemon_settings(server.url.replace("nats://", "tls://"), scripts)):
                pass


# User and password, token -----------------------------------------------------------------------------------


async def test_user_and_password_from_the_environment(scripts: Path) -> None:
    async with run_nats_server("--user", "fn", "--pass", PASSWORD) as server:
        env = command_env(NATS_USER="fn", NATS_PASSWORD=PASSWORD)
        async with daemon_running(*daemon_args(server.url, scripts), env=env):
            assert await ask_hello(server.url, user="fn", password=PASSWORD) == GREETING


async def test_wrong_password_stops_the_start_without_showing_it(scripts: Path) -> None:
    wrong = "wr0ng-Pa55word"
    async with run_nats_server("--user", "fn", "--pass", PASSWORD) as server:
        args = daemon_args(server.url, scripts, "-log", "debug", "-nats-user", "fn", "-nats-password", wrong)
        code, out, err = await run_msgscript(*args)
    assert code == 1
    assert len(failure_lines(err, f"Failed to connect to NATS at {server.url}: authorization violation")) == 1
    assert wrong not in err + out


async def test_credentials_in_the_url_keep_working_and_are_never_shown(scripts: Path) -> None:
    async with run_nats_server("--user", "fn", "--pass", PASSWORD) as server:
        host = server.url.removeprefix("nats://")
        async with running(daemon_settings(f"nats://fn:{PASSWORD}@{host}", scripts)):
            assert await ask_hello(server.url, user="fn", password=PASSWORD) == GREETING
        with pytest.raises(ConfigError) as failure:
            async with running(daemon_settings(f"nats://fn:nope-{PASSWORD}@{host}", scripts)):
                pass
    assert str(failure.value) == f"Failed to connect to NATS at nats://fn:xxxxx@{host}: authorization violation"


async def test_token_flag_wins_over_the_environment(scripts: Path) -> None:
    async with run_nats_server("--auth", TOKEN) as server:
        env = command_env(NATS_TOKEN="not-the-token")
        async with daemon_running(*daemon_args(server.url, scripts, "-nats-token", TOKEN), env=env):
            assert await ask_hello(server.url, token=TOKEN) == GREETING
        with pytest.raises(ConfigError, match="authorization violation"):
            async with running(daemon_settings(server.url, scripts, nats_token="not-the-token")):
                pass


# NKey and operator-mode credentials -----------------------------------------------------------------------


async def test_nkey_user(scripts: Path, tmp_path: Path) -> None:
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_text(seed(user) + "\n")
    (tmp_path / "stranger.nk").write_text(seed(new_nkey(nkeys.PREFIX_BYTE_USER)))
    config = f'authorization {{ users: [ {{ nkey: "{public_key(user)}" }} ] }}\n'
    async with run_nats_server(config=config) as server:
        async with running(daemon_settings(server.url, scripts, nats_nkey_file=str(tmp_path / "user.nk"))):
            assert await ask_hello(server.url, nkeys_seed_str=seed(user)) == GREETING
        with pytest.raises(ConfigError, match="authorization violation"):
            async with running(daemon_settings(server.url, scripts, nats_nkey_file=str(tmp_path / "stranger.nk"))):
                pass


async def test_creds_file_in_operator_mode(scripts: Path, tmp_path: Path) -> None:
    operator = make_operator()
    creds = operator.user_creds(tmp_path / "functions.creds")
    client_creds = operator.user_creds(tmp_path / "client.creds", name="client")
    # A user of an account the server does not know.
    foreign = make_operator().user_creds(tmp_path / "foreign.creds")
    async with run_nats_server(config=operator.server_config(tmp_path / "operator.jwt")) as server:
        async with daemon_running(*daemon_args(server.url, scripts), env=command_env(NATS_CREDS=str(creds))):
            assert await ask_hello(server.url, user_credentials=str(client_creds)) == GREETING
        code, _, err = await run_msgscript(*daemon_args(server.url, scripts, "-natscreds", foreign))
    assert code == 1
    assert len(failure_lines(err, "authorization violation")) == 1


# Settings that cannot work --------------------------------------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_bad_combinations_and_files_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    account_seed = _write(tmp_path / "account.nk", seed(new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)))
    garbage = _write(tmp_path / "garbage.nk", "SUnot-a-seed")
    jwt_only = _write(tmp_path / "jwt-only.creds", "-----BEGIN NATS USER JWT-----\neyJ0.eyJ1.c2ln\n------END\n")
    not_pem = _write(tmp_path / "not.pem", "hello")
    cases: list[tuple[dict[str, str], str]] = [
        (
            {"nats_creds_file": "a.creds", "nats_token": TOKEN},
            "give one way to authenticate to NATS, not -natscreds and -nats-token",
        ),
        (
            {"nats_url": "nats://u:p@h:4222", "nats_user": "u", "nats_password": "p"},
            "not -nats-user/-nats-password and credentials in the NATS URL",
        ),
        ({"nats_user": "fn"}, r"^-nats-user \(NATS_USER\) needs -nats-password \(NATS_PASSWORD\)$"),
        ({"nats_password": PASSWORD}, r"^-nats-password \(NATS_PASSWORD\) needs -nats-user"),
        (
            {"nats_tls_cert_file": str(pki.client_cert)},
            r"-nats-tls-cert \(NATS_CERT\) and -nats-tls-key \(NATS_KEY\) go together",
        ),
        (
            {"nats_creds_file": str(tmp_path / "missing.creds")},
            "^cannot read the NATS credentials file .*missing.creds: No such file or directory$",
        ),
        ({"nats_creds_file": jwt_only}, "jwt-only.creds is not a credentials file"),
        ({"nats_nkey_file": account_seed}, "account.nk holds an NKey seed that is not a user's"),
        ({"nats_nkey_file": garbage}, "garbage.nk holds no valid NKey seed$"),
        ({"nats_tls_ca_file": not_pem}, "^cannot use the NATS CA file .*not.pem: no certificate or crl found$"),
        (
            {"nats_tls_cert_file": str(pki.client_cert), "nats_tls_key_file": str(pki.server_key)},
            "key values mismatch$",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=message) as failure:
            nats_connect_options(Settings(**fields))
        assert "not-a-seed" not in str(failure.value) and "\n" not in str(failure.value)


def test_options_carry_tls_only_when_asked(pki: Pki) -> None:
    assert nats_connect_options(Settings(nats_url="nats://127.0.0.1:4222")) == {}
    assert isinstance(nats_connect_options(Settings(nats_url="tls://127.0.0.1:4222"))["tls"], ssl.SSLContext)
    options = nats_connect_options(Settings(nats_user="fn", nats_password=PASSWORD, nats_tls_ca_file=str(pki.ca)))
    assert options["user"] == "fn" and options["password"] == PASSWORD
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED


def test_secrets_stay_out_of_settings_repr_and_urls() -> None:
    settings = Settings(nats_password=PASSWORD, nats_token=TOKEN, etcd_user=f"root:{PASSWORD}", etcd_password="x1")
    assert PASSWORD not in repr(settings) and TOKEN not in repr(settings)
    assert redact_url(f"nats://fn:{PASSWORD}@a:4222,tls://{TOKEN}@b:4222,nats://c") == (
        "nats://fn:xxxxx@a:4222,tls://xxxxx@b:4222,nats://c"
    )


async def test_a_bad_combination_stops_the_daemon_in_one_line(scripts: Path) -> None:
    code, _, err = await run_msgscript(*daemon_args("nats://127.0.0.1:1", scripts, "-nats-password", PASSWORD))
    assert code == 1
    assert len(failure_lines(err, "-nats-password (NATS_PASSWORD) needs -nats-user (NATS_USER)")) == 1
    assert PASSWORD not in err
