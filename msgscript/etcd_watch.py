"""Watching etcd keys: the changes to one key or key prefix, in revision order, from a chosen revision on.

`EtcdClient.watch` opens a `Watch` (with the client's endpoint failover); `Watch.next` then returns the
changes of each watch response as a `WatchBatch`. A watch notices a silent stream by itself: after a quiet
while it asks etcd for a progress report, and gives up with EtcdUnavailable when none comes in time. A watch
whose start revision etcd has compacted away raises WatchCompacted: its owner must read the current state
again and watch from there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from msgscript.durations import format_duration
from msgscript.errors import EtcdError, EtcdUnavailable
from msgscript.etcd_client import KeyValue

CLOSE_WAIT_S = 1.0
"""How long closing a watch waits for a read in progress to end with the cancelled stream."""
_PROGRESS_REQUEST = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())


class WatchCompacted(EtcdError):
    """Raised by a watch whose start revision etcd has compacted away: the changes since are lost.

    The watcher must read the current state again and watch from that read's revision.
    """

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd has compacted its history up to revision {compact_revision}")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch."""

    deleted: bool
    kv: KeyValue
    """For a deletion: the key, an empty value, and the revision of the deletion as `mod_revision`."""


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The changes of one watch response, in revision order."""

    events: tuple[WatchEvent, ...]

    @property
    def revision(self) -> int:
        """The revision of the last change in the batch: a watch resumed after it misses nothing."""
        return max(event.kv.mod_revision for event in self.events)


def _rpc_failure(exc: grpc.aio.AioRpcError, endpoint: str) -> EtcdError:
    """An RPC error as one of ours: unreachable for transport failures, etcd's own text otherwise."""
    details = exc.details() or exc.code().name
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return EtcdUnavailable([(endpoint, details)])
    return EtcdError(details)


class Watch:
    """An open watch on one key or key prefix (`EtcdClient.watch`); close it with `close` or `async with`.

    `next` returns the changes of the next watch response. While nothing happens, the watch asks etcd
    every `idle_s` to confirm the stream is alive (a progress request) and gives up with EtcdUnavailable
    when no answer comes within `timeout_s`, so a silent network failure ends the watch instead of
    leaving it waiting forever. A broken stream raises EtcdUnavailable, a start revision etcd no longer
    holds raises WatchCompacted; either way the watch is finished and a new one must be opened.
    """

    def __init__(self, call: Any, endpoint: str, *, idle_s: float, timeout_s: float) -> None:
        self._call = call
        self._endpoint = endpoint
        self._idle_s = idle_s
        self._timeout_s = timeout_s
        # A read in progress outlives a timed-out wait: cancelling a gRPC read would cancel the whole stream.
        self._pending: asyncio.Future[Any] | None = None
        self.watch_id: int | None = None

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self, key: bytes, range_end: bytes, start_revision: int) -> None:
        """Ask etcd to watch [key, range_end) (only key when range_end is empty) from start_revision (0: from
        now), and wait for it to confirm. RPC errors are left raw, for the client's endpoint failover."""
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        await self._call.write(rpc.WatchRequest(create_request=create))
        while self.watch_id is None:
            response = await self._read(None)
            if response is None:  # pragma: no cover - no timeout was given
                continue
            if response.created:
                self._check(response)
                self.watch_id = int(response.watch_id)

    async def next(self) -> WatchBatch:
        """The next changes.

        Raises:
            EtcdUnavailable: the stream broke, or etcd stopped answering on it.
            WatchCompacted: etcd no longer holds the history from the start revision.
            EtcdError: etcd cancelled the watch for another reason.
        """
        probing = False
        while True:
            try:
                response = await self._read(self._timeout_s if probing else self._idle_s)
            except grpc.aio.AioRpcError as exc:
                raise _rpc_failure(exc, self._endpoint) from exc
            if response is None:
                if probing:
                    reason = f"the watch stream got no answer within {format_duration(self._timeout_s)}"
                    raise EtcdUnavailable([(self._endpoint, reason)])
                await self._send(_PROGRESS_REQUEST)
                probing = True
                continue
            probing = False
            self._check(response)
            if response.events and response.watch_id == self.watch_id:
                return WatchBatch(tuple(_event(event) for event in response.events))

    async def close(self) -> None:
        """End the watch (cancels the stream); safe to call more than once."""
        self._call.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            await asyncio.wait({pending}, timeout=CLOSE_WAIT_S)
            if pending.done():
                if not pending.cancelled():
                    pending.exception()  # retrieved: the stream's end is expected here
            else:
                pending.cancel()

    async def _read(self, timeout_s: float | None) -> Any | None:
        """The next response, or None when none came within timeout_s."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call.read())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout_s)
        if not done:
            return None
        pending, self._pending = self._pending, None
        response = pending.result()
        if response is grpc.aio.EOF:
            raise EtcdUnavailable([(self._endpoint, "the watch stream was closed")])
        return response

    async def _send(self, request: Any) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._call.write(request)
        except TimeoutError:
            reason = f"the watch stream took no request within {format_duration(self._timeout_s)}"
            raise EtcdUnavailable([(self._endpoint, reason)]) from None
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc, self._endpoint) from exc
        except asyncio.InvalidStateError:
            pass  # the stream has ended: the next read says why

    @staticmethod
    def _check(response: Any) -> None:
        if response.compact_revision:
            raise WatchCompacted(int(response.compact_revision))
        if response.canceled:
            raise EtcdError(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")


def _event(event: Any) -> WatchEvent:
    return WatchEvent(deleted=event.type == rpc.Event.DELETE, kv=KeyValue.from_aetcd(event.kv))
