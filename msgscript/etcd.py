"""The daemon's etcd client: one shared connection for the `etcd` Lua module and the etcd script store.

Built on aetcd (etcd v3 over gRPC). Nothing is dialled when the client is opened, so a daemon whose
etcd is down (or unused) starts; the first request connects. Every request carries its own timeout.

Several endpoints give failover: a request goes to the endpoint that answered last (the first one at
the start); when it cannot connect, the next endpoint is tried, within the same timeout. An endpoint
that is not connected yet gets at most `connect_timeout_s` of it, so an address that swallows packets
does not eat the whole budget while another endpoint may answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc

from msgscript.config import Settings
from msgscript.durations import format_duration
from msgscript.errors import MsgscriptError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
CONNECT_TIMEOUT_S = 3.0
"""How long an endpoint that is not connected yet may take before the next one is tried (Go's dial timeout)."""
# gRPC waits up to two minutes between reconnection attempts by default: after an etcd restart the
# daemon would keep failing long after etcd is back. Range answers may exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2000,
}


class EtcdError(MsgscriptError):
    """Raised when etcd answers a request with an error, or the client cannot be used."""


class EtcdUnavailable(EtcdError):
    """Raised when no etcd endpoint could be reached (refused, unresolvable or silent) in time."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.endpoints = tuple(endpoint for endpoint, _ in failures)
        if len(failures) == 1:
            endpoint, reason = failures[0]
            message = f"etcd at {endpoint} is unreachable: {reason}"
        else:
            message = "no etcd endpoint is reachable: " + "; ".join(f"{e}: {r}" for e, r in failures)
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd client address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Read `host:port`, `host`, `http://host:port` or `[v6]:port` (the forms ETCD_ENDPOINTS takes).

    Raises:
        ValueError: the text is not a plain-text etcd address (TLS endpoints are not supported).
    """
    value = text.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme != "http":
            raise ValueError(f"invalid etcd endpoint {text!r}: only http:// endpoints are supported")
    else:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid etcd endpoint {text!r}: {exc}") from exc
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid etcd endpoint {text!r}")
    return Endpoint(parts.hostname, DEFAULT_PORT if port is None else port)


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


def _is_connected(client: Any) -> bool:
    channel = client.channel
    return channel is not None and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


class EtcdClient:
    """The daemon's etcd client, shared by every user; open with `open_etcd` or `async with`.

    Every request takes `timeout_s` and raises EtcdUnavailable when no endpoint answered in that time,
    or EtcdError when etcd refused the request (its own text, e.g. `etcdserver: key is not provided`).
    Requests must be made on the event loop the client was opened on.
    """

    def __init__(self, endpoints: Sequence[str], *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._texts = tuple(endpoints)
        self._connect_timeout_s = connect_timeout_s
        self._endpoints: tuple[Endpoint, ...] | None = None
        self._clients: dict[int, Any] = {}
        self._current = 0
        self._reachable = True
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

    async def put(self, key: bytes | str, value: bytes | str, *, timeout_s: float) -> None:
        """Set key to value."""
        key_b, value_b = _as_bytes(key), _as_bytes(value)
        await self._request(lambda client: client.put(key_b, value_b), timeout_s)

    async def get(self, key: bytes | str, *, timeout_s: float) -> KeyValue | None:
        """The key, or None if it does not exist."""
        key_b = _as_bytes(key)
        found = await self._request(lambda client: client.get(key_b), timeout_s)
        return None if found is None else KeyValue.from_aetcd(found)

    async def get_prefix(self, prefix: bytes | str, *, timeout_s: float) -> list[KeyValue]:
        """Every key starting with prefix, in key order (the empty prefix is the whole keyspace)."""
        start, end = prefix_range(_as_bytes(prefix))
        found = await self._request(
            lambda client: client.get_range(start, end, sort_order="ascend", sort_target="key"), timeout_s
        )
        return [KeyValue.from_aetcd(kv) for kv in found.kvs]

    async def delete(self, key: bytes | str, *, timeout_s: float) -> bool:
        """Delete key; False if it did not exist."""
        key_b = _as_bytes(key)
        deleted = await self._request(lambda client: client.delete(key_b), timeout_s)
        return deleted is not None

    async def delete_prefix(self, prefix: bytes | str, *, timeout_s: float) -> int:
        """Delete every key starting with prefix; returns how many were deleted."""
        start, end = prefix_range(_as_bytes(prefix))
        deleted = await self._request(lambda client: client.delete_range(start, end), timeout_s)
        return int(deleted.deleted)

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
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append((name, f"no answer within {format_duration(timeout_s)}"))
                break
            client = self._client(index)
            # An endpoint that is not connected yet may not use up the time the next one could answer in.
            connecting = step < len(endpoints) - 1 and not _is_connected(client) and self._connect_timeout_s < remaining
            limit = self._connect_timeout_s if connecting else remaining
            try:
                async with asyncio.timeout(limit):
                    result = await operation(client)
            except (TimeoutError, aetcd.ConnectionTimeoutError):
                waited = self._connect_timeout_s if connecting else timeout_s
                failures.append((name, f"no answer within {format_duration(waited)}"))
                continue
            except aetcd.ConnectionFailedError as exc:
                failures.append((name, str(exc) or "connection failed"))
                continue
            except aetcd.ClientError as exc:
                raise EtcdError(str(exc) or type(exc).__name__) from exc
            if index != self._current or not self._reachable:
                log.info("etcd: using endpoint %s", name)
                self._current, self._reachable = index, True
            return result
        error = EtcdUnavailable(failures)
        # Logged once per outage, not once per request.
        if self._reachable:
            log.error("%s", error)
            self._reachable = False
        raise error

    def _parsed(self) -> tuple[Endpoint, ...]:
        # Parsed on first use: a bad endpoint must not stop a daemon that never talks to etcd.
        if self._endpoints is None:
            try:
                self._endpoints = parse_endpoints(self._texts)
            except ValueError as exc:
                raise EtcdError(str(exc)) from exc
        return self._endpoints

    def _client(self, index: int) -> Any:
        client = self._clients.get(index)
        if client is None:
            endpoint = self._parsed()[index]
            client = aetcd.Client(host=endpoint.host, port=endpoint.port, options=_CHANNEL_OPTIONS)
            self._clients[index] = client
        return client


@contextlib.asynccontextmanager
async def open_etcd(settings: Settings) -> AsyncIterator[EtcdClient]:
    """The daemon's etcd client for `settings.etcd_endpoints`; it connects on first use, closes on exit."""
    async with EtcdClient(settings.etcd_endpoints) as client:
        yield client
