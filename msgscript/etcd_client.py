"""The daemon's etcd client: one shared connection for the `etcd` Lua module, the etcd script store and the
cluster lock.

Built on aetcd (etcd v3 over gRPC). Nothing is dialled when the client is opened, so a daemon whose
etcd is down (or unused) starts; the first request connects. Every request carries its own timeout.

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

import aetcd
import grpc
import grpc.aio
from aetcd import rpc

from msgscript.config import DEFAULT_ETCD_PORT, Settings
from msgscript.durations import format_duration
from msgscript.errors import ConfigError, EtcdError, EtcdUnavailable
from msgscript.tls import client_tls_context, read_file

if TYPE_CHECKING:
    from msgscript.etcd_watch import Watch

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
"""How long an endpoint that is not connected yet may take before the next one is tried (Go's dial timeout)."""
WATCH_IDLE_S = 5.0
"""How long a watch may stay quiet before it asks etcd whether the stream is still alive."""
# gRPC waits up to two minutes between reconnection attempts by default: after an etcd restart the
# daemon would keep failing long after etcd is back. Range answers may exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 500,
}


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


def _is_connected(client: Any) -> bool:
    channel = client.channel
    return channel is not None and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


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


class _AetcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on one endpoint, over TLS when asked, authenticated when a user is given.

    aetcd dials in plain text only, so the channel is opened here. etcd forgets a token after a while
    without use (`--auth-token-ttl`) and when it restarts: `authenticate` gets a fresh one.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        tls: grpc.ChannelCredentials | None,
        credentials: EtcdCredentials,
        options: dict[str, Any],
    ) -> None:
        super().__init__(host=endpoint.host, port=endpoint.port, options=options)
        self._tls = tls
        self._credentials = credentials
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the channel and, with a user, authenticate; the stubs use the channel from then on."""
        if self._connected.is_set():
            return
        async with self._connect_lock:
            if self._connected.is_set():
                return
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            if self._tls is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, self._tls, options=options)
            self.channel = channel
            self.kvstub = rpc.KVStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            try:
                await self.authenticate()
            except BaseException:
                await channel.close()
                self._init_channel_attrs()
                raise
            self._connected.set()

    @property
    def authenticates(self) -> bool:
        """True when requests carry a user's token."""
        return bool(self._credentials.user)

    async def authenticate(self) -> None:
        """Get a (new) token for the user; every later request carries it. Nothing to do without a user."""
        if not self.authenticates:
            return
        request = rpc.AuthenticateRequest(name=self._credentials.user, password=self._credentials.password)
        response = await rpc.AuthStub(self.channel).Authenticate(request)
        self.metadata = (("token", response.token),)


def _is_unauthenticated(exc: Exception) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return isinstance(exc, aetcd.exceptions.UnauthenticatedError)


async def _with_fresh_token(client: _AetcdClient, operation: Callable[[Any], Awaitable[T]]) -> T:
    """Run operation; when etcd no longer knows the token, authenticate again and run it once more."""
    try:
        return await operation(client)
    except (grpc.aio.AioRpcError, aetcd.exceptions.UnauthenticatedError) as exc:
        if not (client.authenticates and _is_unauthenticated(exc)):
            raise
        log.debug("etcd: token refused (%s), authenticating again", exc)
    await client.authenticate()
    return await operation(client)


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
        self._tls: grpc.ChannelCredentials | None = None
        self._connect_timeout_s = connect_timeout_s
        self._endpoints: tuple[Endpoint, ...] | None = None
        self._clients: dict[int, _AetcdClient] = {}
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
        done = await self._request(lambda client: client.put(key_b, value_b, lease=lease or None), timeout_s)
        return int(done.header.revision)

    async def get(self, key: bytes | str, *, timeout_s: float) -> KeyValue | None:
        """The key, or None if it does not exist."""
        key_b = _as_bytes(key)
        found = await self._request(lambda client: client.get(key_b), timeout_s)
        return None if found is None else KeyValue.from_aetcd(found)

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
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            limit=limit,
            sort_target=rpc.RangeRequest.SortTarget.Value(sort_by.upper()),
            sort_order=rpc.RangeRequest.SortOrder.Value("DESCEND" if descending else "ASCEND"),
            max_create_revision=max_create_revision,
            count_only=count_only,
        )

        async def read(client: Any) -> Any:
            await client.connect()
            return await client.kvstub.Range(request, metadata=client.metadata)

        found = await self._request(read, timeout_s)
        return RangeResult(
            kvs=tuple(KeyValue.from_aetcd(kv) for kv in found.kvs),
            revision=int(found.header.revision),
            cluster_id=int(found.header.cluster_id),
            count=int(found.count),
        )

    async def delete(self, key: bytes | str, *, timeout_s: float) -> int | None:
        """Delete key; the revision of the deletion, or None if the key did not exist."""
        key_b = _as_bytes(key)
        request = rpc.DeleteRangeRequest(key=key_b)

        async def delete(client: Any) -> Any:
            await client.connect()
            return await client.kvstub.DeleteRange(request, metadata=client.metadata)

        deleted = await self._request(delete, timeout_s)
        return int(deleted.header.revision) if deleted.deleted else None

    async def delete_prefix(self, prefix: bytes | str, *, timeout_s: float) -> int:
        """Delete every key starting with prefix; returns how many were deleted."""
        start, end = prefix_range(_as_bytes(prefix))
        deleted = await self._request(lambda client: client.delete_range(start, end), timeout_s)
        return int(deleted.deleted)

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
        # msgscript.etcd_watch builds its events from this module's KeyValue: imported here, not at the top.
        from msgscript.etcd_watch import Watch

        start = _as_bytes(key)
        end = b""
        if prefix:
            start, end = prefix_range(start)

        async def open_watch(client: Any) -> Watch:
            await client.connect()
            call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
            watch = Watch(call, self._name_of(client), idle_s=idle_s, timeout_s=timeout_s)
            try:
                await watch.start(start, end, start_revision)
            except BaseException:
                await watch.close()
                raise
            return watch

        return await self._request(open_watch, timeout_s)

    async def grant_lease(self, ttl_s: int, *, timeout_s: float) -> int:
        """A new lease that expires ttl_s seconds after its last keep-alive; returns its ID."""
        request = rpc.LeaseGrantRequest(TTL=ttl_s)

        async def grant(client: Any) -> Any:
            await client.connect()
            return await client.leasestub.LeaseGrant(request, metadata=client.metadata)

        granted = await self._request(grant, timeout_s)
        if granted.error:
            raise EtcdError(granted.error)
        return int(granted.ID)

    async def keep_alive(self, lease_id: int, *, timeout_s: float) -> int:
        """Renew a lease; returns its new time to live in seconds, 0 when it no longer exists (expired, revoked)."""
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)

        async def renew(client: Any) -> Any:
            await client.connect()
            call = client.leasestub.LeaseKeepAlive(metadata=client.metadata)
            try:
                await call.write(request)
                await call.done_writing()
                return await call.read()
            finally:
                call.cancel()

        answer = await self._request(renew, timeout_s)
        return 0 if answer is grpc.aio.EOF else int(answer.TTL)

    async def revoke_lease(self, lease_id: int, *, timeout_s: float) -> bool:
        """Revoke a lease, deleting the keys attached to it; False when it no longer existed."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)

        async def revoke(client: Any) -> bool:
            await client.connect()
            try:
                await client.leasestub.LeaseRevoke(request, metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return await self._request(revoke, timeout_s)

    async def _request(self, operation: Callable[[Any], Awaitable[T]], timeout_s: float) -> T:
        """Run operation on an aetcd client, moving to the next endpoint when one cannot be reached."""
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
            connecting = (
                step < len(endpoints) - 1 and not _is_connected(client) and self._connect_timeout_s < remaining_s
            )
            limit_s = self._connect_timeout_s if connecting else remaining_s
            waited_s = self._connect_timeout_s if connecting else timeout_s
            try:
                async with asyncio.timeout(limit_s):
                    result = await _with_fresh_token(client, operation)
            except (TimeoutError, aetcd.ConnectionTimeoutError):
                failures.append((name, f"no answer within {format_duration(waited_s)}"))
                continue
            except aetcd.ConnectionFailedError as exc:
                failures.append((name, str(exc) or "connection failed"))
                continue
            except EtcdUnavailable as exc:
                failures.append((name, str(exc).removeprefix(f"etcd at {name} is unreachable: ")))
                continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    failures.append((name, f"no answer within {format_duration(waited_s)}"))
                    continue
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    failures.append((name, exc.details() or "connection failed"))
                    continue
                raise EtcdError(exc.details() or exc.code().name) from exc
            except aetcd.ClientError as exc:
                raise EtcdError(str(exc) or type(exc).__name__) from exc
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
                credentials = self._credentials
                self._tls = grpc.ssl_channel_credentials(credentials.ca_pem, credentials.key_pem, credentials.cert_pem)
            self._endpoints = endpoints
        return self._endpoints

    def _client(self, index: int) -> _AetcdClient:
        client = self._clients.get(index)
        if client is None:
            endpoint = self._parsed()[index]
            client = _AetcdClient(endpoint, self._tls, self._credentials, _CHANNEL_OPTIONS)
            self._clients[index] = client
        return client

    def _name_of(self, client: Any) -> str:
        endpoints = self._parsed()
        return next((str(endpoints[i]) for i, c in self._clients.items() if c is client), "etcd")


@contextlib.asynccontextmanager
async def open_etcd(settings: Settings) -> AsyncIterator[EtcdClient]:
    """The daemon's etcd client for `settings.etcd_endpoints`; it connects on first use, closes on exit.

    Raises:
        ConfigError: the TLS or user settings are unusable (see `etcd_credentials`).
    """
    credentials = await asyncio.to_thread(etcd_credentials, settings)
    async with EtcdClient(settings.etcd_endpoints, credentials=credentials) as client:
        yield client
