"""How the daemon authenticates to NATS and encrypts the connection.

`nats_connect_options` turns the settings (credentials file, NKey seed, user and password, token, TLS files)
into nats.connect keyword arguments, reading and checking every file at startup. `connect_client` makes the
first connection: a server that refuses the credentials or the certificate ends the start at once with one
clear line, while a server that is not up yet is waited for. After that, nats-py reconnects by itself.
`connect_nats` holds the daemon's connection for its lifetime and drains it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats import errors
from nats.aio.client import RawCredentials

from msgscript.config import NATS_CONNECT_TIMEOUT_S, Settings
from msgscript.errors import ConfigError
from msgscript.nats_client import NatsClient
from msgscript.tls import client_tls_context, describe_os_error, read_text_file

log = logging.getLogger(__name__)

REDACTED = "xxxxx"

_CREDS_JWT = re.compile(r"-{3,}\s*BEGIN NATS USER JWT\s*-{3,}\s*(\S+)")
_CREDS_SEED = re.compile(r"-{3,}\s*BEGIN USER NKEY SEED\s*-{3,}\s*(\S+)")


def _check_user_seed(seed: str, where: str) -> None:
    """Refuse anything but a NATS user's NKey seed (`SU…`); the seed itself never appears in the message."""
    # Imported here, as nats-py does: nkeys and PyNaCl weigh about 1 MB that a daemon without NKeys never needs.
    import nkeys

    try:
        role, _ = nkeys.decode_seed(seed.encode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise ConfigError(f"{where} holds no valid NKey seed") from exc
    if role != nkeys.PREFIX_BYTE_USER:
        raise ConfigError(f"{where} holds an NKey seed that is not a user's (a user seed starts with SU)")


def _read_creds(path: str) -> RawCredentials:
    """The user JWT and seed of a `.creds` file, checked, in the layout nats-py reads."""
    text = read_text_file(path, "NATS credentials file")
    jwt = _CREDS_JWT.search(text)
    seed = _CREDS_SEED.search(text)
    where = f"the NATS credentials file {path}"
    if jwt is None or seed is None:
        raise ConfigError(f"{where} is not a credentials file (a user JWT followed by the user's NKey seed)")
    _check_user_seed(seed.group(1), where)
    return RawCredentials(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt.group(1)}\n"
        "------END NATS USER JWT------\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.group(1)}\n"
        "------END USER NKEY SEED------\n"
    )


def _read_nkey_seed(path: str) -> str:
    seed = read_text_file(path, "NATS NKey seed file").strip()
    _check_user_seed(seed, f"the NATS NKey seed file {path}")
    return seed


def _servers(url: str) -> list[str]:
    return [part.strip() for part in url.split(",") if part.strip()]


def url_has_credentials(url: str) -> bool:
    """True when a NATS URL (or comma-separated list) carries a user, password or token."""
    return any("@" in urlsplit(part).netloc for part in _servers(url))


def redact_url(url: str) -> str:
    """The URL with its password (or, for `nats://token@host`, its token) replaced by `xxxxx`."""
    parts = []
    for server in _servers(url):
        split = urlsplit(server)
        if "@" not in split.netloc:
            parts.append(server)
            continue
        userinfo, _, host = split.netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        userinfo = f"{user}:{REDACTED}" if has_password else REDACTED
        parts.append(urlunsplit(split._replace(netloc=f"{userinfo}@{host}")))
    return ",".join(parts)


def wants_tls(settings: Settings) -> bool:
    """True when the connection must be encrypted: a `tls://` URL or any TLS file."""
    if settings.nats_tls_ca_file or settings.nats_tls_cert_file or settings.nats_tls_key_file:
        return True
    return any(server.lower().startswith("tls://") for server in _servers(settings.nats_url))


def nats_connect_options(settings: Settings) -> dict[str, Any]:
    """The nats.connect keyword arguments that authenticate and encrypt the daemon's connection.

    At most one way to authenticate: a credentials file (user JWT and NKey seed), an NKey seed file, a user
    and password, a token, or credentials in the URL. With TLS (a `tls://` URL or any TLS file), `tls` holds
    a context that verifies the server against the CA file, or the system's CAs without one. The files are
    read here, so a missing or malformed one stops the start.

    Raises:
        ConfigError: options that do not go together, or a file that cannot be read or used.
    """
    methods = [
        name
        for name, given in (
            ("-natscreds", settings.nats_creds_file),
            ("-nats-nkey", settings.nats_nkey_file),
            ("-nats-user/-nats-password", settings.nats_user or settings.nats_password),
            ("-nats-token", settings.nats_token),
            ("credentials in the NATS URL", url_has_credentials(settings.nats_url)),
        )
        if given
    ]
    if len(methods) > 1:
        raise ConfigError(f"give one way to authenticate to NATS, not {' and '.join(methods)}")
    if settings.nats_user and not settings.nats_password:
        raise ConfigError("-nats-user (NATS_USER) needs -nats-password (NATS_PASSWORD)")
    if settings.nats_password and not settings.nats_user:
        raise ConfigError("-nats-password (NATS_PASSWORD) needs -nats-user (NATS_USER)")
    if bool(settings.nats_tls_cert_file) != bool(settings.nats_tls_key_file):
        raise ConfigError("-nats-tls-cert (NATS_CERT) and -nats-tls-key (NATS_KEY) go together")

    options: dict[str, Any] = {}
    if settings.nats_creds_file:
        options["user_credentials"] = _read_creds(settings.nats_creds_file)
    elif settings.nats_nkey_file:
        options["nkeys_seed_str"] = _read_nkey_seed(settings.nats_nkey_file)
    elif settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    elif settings.nats_token:
        options["token"] = settings.nats_token
    if wants_tls(settings):
        options["tls"] = client_tls_context(
            "NATS", settings.nats_tls_ca_file, settings.nats_tls_cert_file, settings.nats_tls_key_file
        )
    return options


def _is_refusal(exc: Exception) -> bool:
    """True for a failure that trying again cannot mend: credentials or certificate refused, no TLS."""
    if isinstance(exc, ssl.SSLError | errors.AuthorizationError | errors.SecureConnWantedError):
        return True
    text = str(exc).lower()
    return isinstance(exc, errors.Error) and ("authorization" in text or "authentication" in text)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed: {describe_os_error(exc)}"
    if isinstance(exc, errors.SecureConnWantedError):
        return "the server does not offer TLS, which the settings ask for"
    return str(exc).removeprefix("nats: ").strip("'").lower()


ErrorCallback = Callable[[Exception], Awaitable[None]]


async def connect_client(url: str, *, error_cb: ErrorCallback | None = None, **options: Any) -> NatsClient:
    """Connect to url within NATS_CONNECT_TIMEOUT_S with nats.connect's keyword `options`.

    While nothing answers (refused, unreachable), the attempt goes on until the time is up; errors seen
    meanwhile go to error_cb. A server that refuses the credentials or the TLS certificate, or that does
    not offer TLS when `tls` is given, ends it at once. Passwords and tokens in url never appear in errors.

    Raises:
        ConfigError: no connection; one line saying why.
    """
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[Exception] = loop.create_future()
    connected = False

    async def on_error(exc: Exception) -> None:
        if not connected and _is_refusal(exc):
            if not refused.done():
                refused.set_result(exc)
            return
        if error_cb is not None:
            await error_cb(exc)

    nc = NatsClient()
    attempt = asyncio.ensure_future(nc.connect(url, error_cb=on_error, **options))
    try:
        either: set[asyncio.Future[Any]] = {attempt, refused}
        await asyncio.wait(either, timeout=NATS_CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if attempt.done():
            exc = attempt.exception()
            if exc is None:
                connected = True
                return nc
            raise ConfigError(f"Failed to connect to NATS at {redact_url(url)}: {exc}") from exc
        if refused.done():
            raise ConfigError(f"Failed to connect to NATS at {redact_url(url)}: {_describe(refused.result())}")
        raise ConfigError(
            f"Failed to connect to NATS: no server answered at {redact_url(url)} within {NATS_CONNECT_TIMEOUT_S:g}s"
        )
    finally:
        if not connected:
            attempt.cancel()
            await asyncio.wait({attempt})
            if not attempt.cancelled():
                attempt.exception()  # retrieved: the ConfigError above tells the story
            with contextlib.suppress(Exception):
                await nc.close()


@contextlib.asynccontextmanager
async def connect_nats(settings: Settings) -> AsyncIterator[NatsClient]:
    """Connect to `settings.nats_url` with automatic reconnection; drain on exit.

    The embedded server (no URL given) is the supervisor's to start; it hands the worker its URL.
    """
    closing = False

    async def on_error(exc: Exception) -> None:
        log.error("NATS error: %s", exc)

    async def on_disconnected() -> None:
        if not closing:
            log.warning("disconnected from NATS, reconnecting")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS")

    # Credentials and TLS files are read (and checked) before anything starts.
    security = await asyncio.to_thread(nats_connect_options, settings)
    url = settings.nats_url
    if not url:
        raise ConfigError("no NATS URL given")
    # Reconnecting is for later outages: the first connection gets one bounded try.
    nc = await connect_client(
        url,
        name="msgscript",
        connect_timeout=NATS_CONNECT_TIMEOUT_S,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **security,
    )
    try:
        yield nc
    finally:
        closing = True
        try:
            await asyncio.wait_for(nc.drain(), settings.grace_period_s)
        except Exception as exc:
            log.warning("NATS drain did not finish: %s", exc)
            await nc.close()
