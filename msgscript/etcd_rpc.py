"""The gRPC side of the etcd client: the connection to one endpoint and the requests made on it.

`msgscript.etcd_client` keeps what does not depend on gRPC (the endpoints, the credentials, the failover
between endpoints, the values it returns) and imports this module when it first talks to etcd: gRPC,
protobuf and aetcd weigh about 12 MB of memory, which a daemon that never talks to etcd does not carry.

`EndpointClient.call` runs one request and reports its failure in the client's terms: TimeoutError when the
endpoint gave no answer in time, EtcdUnavailable (with the reason) when it could not be reached, EtcdError
(with etcd's own text) when etcd refused the request. A user's token that etcd has forgotten is renewed on
the way, once per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aetcd
import grpc
import grpc.aio
from aetcd import rpc

from msgscript.errors import EtcdError, EtcdUnavailable
from msgscript.etcd_client import Endpoint, EtcdCredentials, KeyValue, RangeResult
from msgscript.etcd_watch import Watch

log = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC waits up to two minutes between reconnection attempts by default: after an etcd restart the
# daemon would keep failing long after etcd is back. Range answers may exceed gRPC's 4 MiB default.
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 500,
}


class EndpointClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on one endpoint, over TLS when asked, authenticated when a user is given.

    aetcd dials in plain text only, so the channel is opened here. etcd forgets a token after a while
    without use (`--auth-token-ttl`) and when it restarts: `authenticate` gets a fresh one.

    The requests (`kv_*`, `watch_open`, `lease_*`, named after etcd's RPCs) connect first and answer plain
    values; run them through `call`.
    """

    def __init__(self, endpoint: Endpoint, credentials: EtcdCredentials, *, tls: bool) -> None:
        super().__init__(host=endpoint.host, port=endpoint.port, options=_CHANNEL_OPTIONS)
        self.endpoint = endpoint
        self._tls = (
            grpc.ssl_channel_credentials(credentials.ca_pem, credentials.key_pem, credentials.cert_pem) if tls else None
        )
        self._credentials = credentials
        self._connect_lock = asyncio.Lock()

    @property
    def is_connected(self) -> bool:
        """True when the channel is open and ready (a request will not wait for a connection)."""
        channel = self.channel
        return channel is not None and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

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

    async def call(self, operation: Callable[[EndpointClient], Awaitable[T]]) -> T:
        """Run operation on this endpoint.

        Raises:
            TimeoutError: the endpoint gave no answer in time.
            EtcdUnavailable: the endpoint could not be reached; the text says why.
            EtcdError: etcd refused the request; the text is etcd's.
        """
        try:
            return await self._with_fresh_token(operation)
        except aetcd.ConnectionTimeoutError as exc:
            raise TimeoutError from exc
        except aetcd.ConnectionFailedError as exc:
            raise self._unreachable(str(exc) or "connection failed") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError from exc
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unreachable(exc.details() or "connection failed") from exc
            raise EtcdError(exc.details() or exc.code().name) from exc
        except aetcd.ClientError as exc:
            raise EtcdError(str(exc) or type(exc).__name__) from exc

    async def kv_put(self, key: bytes, value: bytes, lease: int) -> int:
        """Set key to value, attached to `lease` when not 0; the revision of the change."""
        done = await self.put(key, value, lease=lease or None)
        return int(done.header.revision)

    async def kv_get(self, key: bytes) -> KeyValue | None:
        """The key, or None if it does not exist."""
        found = await self.get(key)
        return None if found is None else KeyValue.from_aetcd(found)

    async def kv_range(
        self,
        start: bytes,
        end: bytes,
        *,
        sort_by: str,
        descending: bool,
        limit: int,
        max_create_revision: int,
        count_only: bool,
    ) -> RangeResult:
        """Read [start, end) (only start when end is empty); the arguments are EtcdClient.range's."""
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            limit=limit,
            sort_target=rpc.RangeRequest.SortTarget.Value(sort_by.upper()),
            sort_order=rpc.RangeRequest.SortOrder.Value("DESCEND" if descending else "ASCEND"),
            max_create_revision=max_create_revision,
            count_only=count_only,
        )
        await self.connect()
        found = await self.kvstub.Range(request, metadata=self.metadata)
        return RangeResult(
            kvs=tuple(KeyValue.from_aetcd(kv) for kv in found.kvs),
            revision=int(found.header.revision),
            cluster_id=int(found.header.cluster_id),
            count=int(found.count),
        )

    async def kv_delete(self, key: bytes) -> int | None:
        """Delete key; the revision of the deletion, or None if the key did not exist."""
        request = rpc.DeleteRangeRequest(key=key)
        await self.connect()
        deleted = await self.kvstub.DeleteRange(request, metadata=self.metadata)
        return int(deleted.header.revision) if deleted.deleted else None

    async def kv_delete_range(self, start: bytes, end: bytes) -> int:
        """Delete every key in [start, end); how many were deleted."""
        deleted = await self.delete_range(start, end)
        return int(deleted.deleted)

    async def watch_open(
        self, start: bytes, end: bytes, start_revision: int, *, idle_s: float, timeout_s: float
    ) -> Watch:
        """Watch [start, end) (only start when end is empty) from start_revision, once etcd has confirmed it."""
        await self.connect()
        call = rpc.WatchStub(self.channel).Watch(metadata=self.metadata)
        watch = Watch(call, str(self.endpoint), idle_s=idle_s, timeout_s=timeout_s)
        try:
            await watch.start(start, end, start_revision)
        except BaseException:
            await watch.close()
            raise
        return watch

    async def lease_grant(self, ttl_s: int) -> tuple[int, str]:
        """A new lease of ttl_s seconds: its ID, and etcd's error text (empty when granted)."""
        request = rpc.LeaseGrantRequest(TTL=ttl_s)
        await self.connect()
        granted = await self.leasestub.LeaseGrant(request, metadata=self.metadata)
        return int(granted.ID), str(granted.error)

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Renew a lease; its new time to live in seconds, 0 when it no longer exists."""
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)
        await self.connect()
        call = self.leasestub.LeaseKeepAlive(metadata=self.metadata)
        try:
            await call.write(request)
            await call.done_writing()
            answer = await call.read()
        finally:
            call.cancel()
        return 0 if answer is grpc.aio.EOF else int(answer.TTL)

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease, deleting the keys attached to it; False when it no longer existed."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        await self.connect()
        try:
            await self.leasestub.LeaseRevoke(request, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _with_fresh_token(self, operation: Callable[[EndpointClient], Awaitable[T]]) -> T:
        """Run operation; when etcd no longer knows the token, authenticate again and run it once more."""
        try:
            return await operation(self)
        except (grpc.aio.AioRpcError, aetcd.exceptions.UnauthenticatedError) as exc:
            if not (self.authenticates and _is_unauthenticated(exc)):
                raise
            log.debug("etcd: token refused (%s), authenticating again", exc)
        await self.authenticate()
        return await operation(self)

    def _unreachable(self, reason: str) -> EtcdUnavailable:
        return EtcdUnavailable([(str(self.endpoint), reason)])


def _is_unauthenticated(exc: Exception) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return isinstance(exc, aetcd.exceptions.UnauthenticatedError)
