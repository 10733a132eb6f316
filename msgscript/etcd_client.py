"""The daemon's etcd client: one shared connection for the `etcd` Lua module, the etcd script store and the
cluster lock.

Built on aetcd (etcd v3 over gRPC), which `msgscript.etcd_rpc` wraps and this module imports on the first
request: a daemon that never talks to etcd does not load gRPC. Nothing is dialled when the client is opened,
so a daemon whose etcd is down (or unused) starts; the first request connects. Every request carries its own
timeout.

Several endpoints give failover: a request goes to the endpoint that answered last (the first one at
the start); when it cannot connect, the next endpoint is tried, within the same timeout. An endpoint
that is not connected yet gets at most `connect_timeout_s` of it, so an address that swallows packets
does not eat the whole budget while another endpoint may answer.

Besides plain key operations the client offers what the store and the lock need: ranges that report
the store revision they saw (`range`), watches that resume from a revision and notice a silent stream
(`watch`, which opens a `msgscript.etcd_watch.Watch`), and leases (`grant_lease`, `keep_alive`,
`revoke_lease`). gRPC reconnects a lost channel by itself (backoff capped at 2 s); a request made meanwhile
fails at once with EtcdUnavailable.

A secured etcd is reached with `EtcdCredentials`, built from the settings by `etcd_credentials`: TLS (a CA,
a client certificate) and a user whose token is renewed whenever etcd has forgotten it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from msgscript.config import DEFAULT_ETCD_PORT, Settings
from msgscript.durations import format_duration
from msgscript.errors import ConfigError, EtcdError, EtcdUnavailable
from msgscript.tls import client_tls_context, read_file

if TYPE_CHECKING:
    from msgscript.etcd_rpc import EndpointClient
    from msgscript.etcd_watch import Watch

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
"""How long an endpoint that is not connected yet may take before the next one is tried (Go's dial timeout)."""
WATCH_IDLE_S = 5.0
"""How long a watch may stay quiet before it asks etcd whether the stream is still alive."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd client address."""

    host: str
    port: int
    secure: bool = False
    """Written `https://`: the client speaks TLS (to every endpoint, see EtcdClient)."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Read `host:port`, `host`, `http://host:port`, `https://host:port` or `[v6]:port` (the forms
    ETCD_ENDPOINTS takes).

    Raises:
        ValueError: the text is not an etcd address.
    """
    value = text.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"invalid etcd endpoint {text!r}: only http:// and https:// endpoints are supported")
    else:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid etcd endpoint {text!r}: {exc}") from exc
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid etcd endpoint {text!r}")
    return Endpoint(parts.hostname, DEFAULT_ETCD_PORT if port is None else port, secure=parts.scheme.lower() == "https")


def parse_endpoints(values: Iterable[str]) -> tuple[Endpoint, ...]:
    """Parse endpoints, each value possibly a comma-separated list; empty entries are skipped.

    Raises:
        ValueError: an entry is invalid, or there is none.
    """
    endpoints = tuple(parse_endpoint(part) for value in values for part in value.split(",") if part.strip())
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    return endpoints


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int
    """The ID of the lease the key is attached to, 0 for none."""

    @classmethod
    def from_aetcd(cls, kv: Any) -> KeyValue:
        """Copy aetcd's (protobuf-backed) key-value."""
        return cls(
            key=bytes(kv.key),
            value=bytes(kv.value),
            create_revision=int(kv.create_revision),
            mod_revision=int(kv.mod_revision),
            version=int(kv.version),
            lease=int(kv.lease),
        )


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The [start, end) key range holding every key that starts with prefix (etcd's convention).

    The empty prefix, and a prefix of only 0xff bytes, range to the end of the keyspace (end = b"\\0").
    """
    if not prefix:
        return b"\0", b"\0"
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return prefix, b"\0"
    end[-1] += 1
    return prefix, bytes(end)


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The answer to a range read."""

    kvs: tuple[KeyValue, ...]
    revision: int
    """The store revision the read saw: every change up to it is reflected in `kvs`."""
    cluster_id: int
    """The ID of the etcd cluster that answered (a cluster rebuilt from scratch may have another)."""
    count: int
    """How many keys matched (more than len(kvs) with a limit or `count_only`)."""


@dataclass(frozen=True, slots=True)
class EtcdCredentials:
    """How the client checks etcd's identity and proves its own: TLS files (PEM) and a user and password.

    With any TLS file, or an https:// endpoint, every endpoint is reached over TLS; without a CA the
    server is checked against gRPC's default roots. With a user, each connection authenticates first.
    """

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def has_tls_files(self) -> bool:
        """True when a CA, a certificate or a key was given."""
        return any(pem is not None for pem in (self.ca_pem, self.cert_pem, self.key_pem))


NO_CREDENTIALS = EtcdCredentials()


def etcd_credentials(settings: Settings) -> EtcdCredentials:
    """The credentials the settings ask for, their files read and checked.

    `etcd_user` may be `user:password` (etcdctl's form), used when no `etcd_password` is given; with one,
    the whole `etcd_user` is the name.

    Raises:
        ConfigError: a user without a password (or the reverse), a certificate without its key (or the
            reverse), a file that cannot be read, or TLS files that are not a usable PEM CA, certificate, key.
    """
    user, password = settings.etcd_user, settings.etcd_password
    if user and not password and ":" in user:
        user, password = user.split(":", 1)
    if user and not password:
        raise ConfigError(
            "-etcd-user (ETCDCTL_USER) needs a password: user:password, -etcd-password or ETCDCTL_PASSWORD"
        )
    if password and not user:
        raise ConfigError("-etcd-password (ETCDCTL_PASSWORD) needs -etcd-user (ETCDCTL_USER)")
    ca, cert, key = settings.etcd_tls_ca_file, settings.etcd_tls_cert_file, settings.etcd_tls_key_file
    if bool(cert) != bool(key):
        raise ConfigError("-etcd-cert (ETCDCTL_CERT) and -etcd-key (ETCDCTL_KEY) go together")
    if ca or cert:
        # gRPC only says "handshake failed" about a bad file, at every request: check them now.
        client_tls_context("etcd", ca, cert, key)
    return EtcdCredentials(
        ca_pem=read_file(ca, "etcd CA file") if ca else None,
        cert_pem=read_file(cert, "etcd client certificate") if cert else None,
        key_pem=read_file(key, "etcd client key") if key else None,
        user=user,
        password=password,
    )


class EtcdClient:
    """The daemon's etcd client, shared by every user; open with `open_etcd` or `async with`.

    Every request takes `timeout_s` and raises EtcdUnavailable when no endpoint answered in that time,
    or EtcdError when etcd refused the request (its own text, e.g. `etcdserver: key is not provided`).
    Requests must be made on the event loop the client was opened on.

    `credentials` secure every connection (see EtcdCredentials): TLS for all endpoints when any endpoint
    is https:// or TLS files are given, and a user's token on every request, renewed when etcd drops it.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: EtcdCredentials = NO_CREDENTIALS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._texts = tuple(endpoints)
        self._credentials = credentials
        self._tls = False
        self._connect_timeout_s = connect_timeout_s
        self._endpoints: tuple[Endpoint, ...] | None = None
        self._clients: dict[int, EndpointClient] = {}
        self._current = 0
        self._reachable = True
        self._answered = False
        self._closed = False

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints as configured."""
        return self._texts

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; later requests raise EtcdError."""
        self._closed = True
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0, timeout_s: float) -> int:
        """Set key to value, attached to `lease` when not 0; returns the revision of the change."""
        key_b, value_b = _as_bytes(key), _as_bytes(value)
        return await self._request(lambda client: client.kv_put(key_b, value_b, lease), timeout_s)

    async def get(self, key: bytes | str, *, timeout_s: float) -> KeyValue | None:
        """The key, or None if it does not exist."""
        key_b = _as_bytes(key)
        return await self._request(lambda client: client.kv_get(key_b), timeout_s)

    async def get_prefix(self, prefix: bytes | str, *, timeout_s: float) -> list[KeyValue]:
        """Every key starting with prefix, in key order (the empty prefix is the whole keyspace)."""
        return list((await self.range(prefix, prefix=True, timeout_s=timeout_s)).kvs)

    async def range(
        self,
        key: bytes | str,
        *,
        prefix: bool = False,
        timeout_s: float,
        sort_by: str = "key",
        descending: bool = False,
        limit: int = 0,
        max_create_revision: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """Read one key, or every key starting with it when `prefix`, with the revision the read saw.

        `sort_by` is `key`, `create` (creation revision), `mod`, `version` or `value`; `limit` 0 means no
        limit; `max_create_revision` (when not 0) keeps only keys created at or before that revision;
        `count_only` returns no keys, only the count and the revision.
        """
        start = _as_bytes(key)
        end = b""
        if prefix:
            start, end = prefix_range(start)
        return await self._request(
            lambda client: client.kv_range(
                start,
                end,
                sort_by=sort_by,
                descending=descending,
                limit=limit,
                max_create_revision=max_create_revision,
                count_only=count_only,
            ),
            timeout_s,
        )

    async def delete(self, key: bytes | str, *, timeout_s: float) -> int | None:
        """Delete key; the revision of the deletion, or None if the key did not exist."""
        key_b = _as_bytes(key)
        return await self._request(lambda client: client.kv_delete(key_b), timeout_s)

    async def delete_prefix(self, prefix: bytes | str, *, timeout_s: float) -> int:
        """Delete every key starting with prefix; returns how many were deleted."""
        start, end = prefix_range(_as_bytes(prefix))
        return await self._request(lambda client: client.kv_delete_range(start, end), timeout_s)

    async def watch(
        self,
        key: bytes | str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        timeout_s: float,
        idle_s: float = WATCH_IDLE_S,
    ) -> Watch:
        """Watch one key, or every key starting with it when `prefix`, from `start_revision` (0: from now).

        Returns once etcd has confirmed the watch (within timeout_s); changes from the start revision on
        are then delivered in order by `Watch.next`, which also uses timeout_s for its liveness checks.
        A start revision newer than etcd's current one is legal: the watch waits for it.
        """
        start = _as_bytes(key)
        end = b""
        if prefix:
            start, end = prefix_range(start)
        return await self._request(
            lambda client: client.watch_open(start, end, start_revision, idle_s=idle_s, timeout_s=timeout_s),
            timeout_s,
        )

    async def grant_lease(self, ttl_s: int, *, timeout_s: float) -> int:
        """A new lease that expires ttl_s seconds after its last keep-alive; returns its ID."""
        lease_id, error = await self._request(lambda client: client.lease_grant(ttl_s), timeout_s)
        if error:
            raise EtcdError(error)
        return lease_id

    async def keep_alive(self, lease_id: int, *, timeout_s: float) -> int:
        """Renew a lease; returns its new time to live in seconds, 0 when it no longer exists (expired, revoked)."""
        return await self._request(lambda client: client.lease_keep_alive(lease_id), timeout_s)

    async def revoke_lease(self, lease_id: int, *, timeout_s: float) -> bool:
        """Revoke a lease, deleting the keys attached to it; False when it no longer existed."""
        return await self._request(lambda client: client.lease_revoke(lease_id), timeout_s)

    async def _request(self, operation: Callable[[EndpointClient], Awaitable[T]], timeout_s: float) -> T:
        """Run operation on an endpoint's client, moving to the next endpoint when one cannot be reached."""
        if self._closed:
            raise EtcdError("the etcd client is closed")
        endpoints = self._parsed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failures: list[tuple[str, str]] = []
        for step in range(len(endpoints)):
            index = (self._current + step) % len(endpoints)
            name = str(endpoints[index])
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                failures.append((name, f"no answer within {format_duration(timeout_s)}"))
                break
            client = self._client(index)
            # An endpoint that is not connected yet may not use up the time the next one could answer in.
            connecting = step < len(endpoints) - 1 and not client.is_connected and self._connect_timeout_s < remaining_s
            limit_s = self._connect_timeout_s if connecting else remaining_s
            waited_s = self._connect_timeout_s if connecting else timeout_s
            try:
                async with asyncio.timeout(limit_s):
                    result = await client.call(operation)
            except TimeoutError:
                failures.append((name, f"no answer within {format_duration(waited_s)}"))
                continue
            except EtcdUnavailable as exc:
                failures.append((name, str(exc).removeprefix(f"etcd at {name} is unreachable: ")))
                continue
            if index != self._current or not self._reachable:
                log.info("etcd: using endpoint %s", name)
                self._current, self._reachable = index, True
            self._answered = True
            return result
        error = EtcdUnavailable(failures)
        # Logged once per outage, not once per request; before etcd ever answered, the caller reports it
        # (a daemon that cannot load its etcd store says so in one line).
        if self._reachable and self._answered:
            log.error("%s", error)
        self._reachable = False
        raise error

    def _parsed(self) -> tuple[Endpoint, ...]:
        # Parsed on first use: a bad endpoint must not stop a daemon that never talks to etcd.
        if self._endpoints is None:
            try:
                endpoints = parse_endpoints(self._texts)
            except ValueError as exc:
                raise EtcdError(str(exc)) from exc
            if self._credentials.has_tls_files or any(e.secure for e in endpoints):
                texts = (part.strip() for text in self._texts for part in text.split(","))
                plain = next((text for text in texts if text.lower().startswith("http://")), None)
                if plain is not None:
                    raise EtcdError(f"etcd endpoint {plain} is http:// while TLS is on; write https:// or host:port")
                self._tls = True
            self._endpoints = endpoints
        return self._endpoints

    def _client(self, index: int) -> EndpointClient:
        client = self._clients.get(index)
        if client is None:
            # Imported on first use: gRPC and aetcd weigh about 12 MB that a daemon without etcd never needs.
            from msgscript.etcd_rpc import EndpointClient

            client = EndpointClient(self._parsed()[index], self._credentials, tls=self._tls)
            self._clients[index] = client
        return client


@contextlib.asynccontextmanager
async def open_etcd(settings: Settings) -> AsyncIterator[EtcdClient]:
    """The daemon's etcd client for `settings.etcd_endpoints`; it connects on first use, closes on exit.

    Raises:
        ConfigError: the TLS or user settings are unusable (see `etcd_credentials`).
    """
    credentials = await asyncio.to_thread(etcd_credentials, settings)
    async with EtcdClient(settings.etcd_endpoints, credentials=credentials) as client:
        yield client
