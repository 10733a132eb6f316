"""The cluster-wide Lock on etcd (msgscript.locks has the protocol), used with the etcd backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from msgscript.errors import EtcdError, LockError
from msgscript.etcd_client import EtcdClient

log = logging.getLogger(__name__)

LOCK_TTL_S = 3
"""The TTL of a lock's lease (Go's session TTL): how long a dead holder keeps others waiting at most."""
_REQUEST_TIMEOUT_S = 5.0
_RELEASE_TIMEOUT_S = 2.0


class EtcdLock:
    """A cluster-wide mutex on etcd with the key layout of etcd's concurrency mutex (and so of the Go msgscript).

    Taking `key`:

    1. grant a lease with a TTL of `ttl_s` (3 s), renewed every ttl_s/3 while the lock is wanted or held;
    2. create `<key>/<lease ID in lowercase hex>` attached to the lease: its create revision is our place
       in line;
    3. the holder is the key under `<key>/` with the lowest create revision. While an older key exists,
       watch the newest of them (our predecessor) until it is deleted, then look again;
    4. on leaving the context, revoke the lease: etcd deletes our key and the next waiter proceeds.

    Waiting is bounded by `timeout_s`: past it the context yields False (holding nothing). Waiters are
    served in arrival order. A holder that dies stops renewing its lease, etcd expires it within ttl_s,
    and the next waiter proceeds.

    Mutual exclusion holds while holders can reach etcd. A holder cut off from etcd for longer than
    ttl_s loses its lease, and with it the lock, while its script may still be running; this is logged
    (`lock <key> lost: ...`) but the script is not stopped.

    Raises (from entering the context):
        LockError: etcd could not be reached or refused (`failed to get lock on key <key>: <reason>`).
    """

    def __init__(self, etcd: EtcdClient, *, ttl_s: int = LOCK_TTL_S) -> None:
        self._etcd = etcd
        self._ttl_s = ttl_s

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout_s: float) -> AsyncIterator[bool]:
        """Hold `key` for the duration of the context; yields False when it could not be had within timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            lease_id = await self._etcd.grant_lease(self._ttl_s, timeout_s=self._budget(deadline))
        except EtcdError as exc:
            if loop.time() < deadline:
                raise LockError(f"failed to get lock on key {key}: {exc}") from exc
            lease_id = 0
        if not lease_id:
            yield False
            return
        keeper = _LeaseKeeper(self._etcd, lease_id, self._ttl_s, key)
        try:
            try:
                acquired = await self._acquire(key, lease_id, keeper, deadline)
            except EtcdError as exc:
                if loop.time() < deadline:
                    raise LockError(f"failed to get lock on key {key}: {exc}") from exc
                acquired = False
            if acquired:
                log.debug("lock %s taken: %s/%x", key, key, lease_id)
            yield acquired
        finally:
            await keeper.stop()
            await self._release(key, lease_id)

    async def _acquire(self, key: str, lease_id: int, keeper: _LeaseKeeper, deadline: float) -> bool:
        prefix = f"{key}/"
        my_revision = await self._etcd.put(
            f"{prefix}{lease_id:x}", b"", lease=lease_id, timeout_s=self._budget(deadline)
        )
        loop = asyncio.get_running_loop()
        while True:
            if keeper.lost:
                raise EtcdError("its lease expired while waiting")
            if loop.time() >= deadline:
                return False
            older = await self._etcd.range(
                prefix,
                prefix=True,
                sort_by="create",
                descending=True,
                limit=1,
                max_create_revision=my_revision - 1,
                timeout_s=self._budget(deadline),
            )
            if not older.kvs:
                return True
            if not await self._wait_deleted(older.kvs[0].key, older.revision + 1, deadline):
                return False

    async def _wait_deleted(self, key: bytes, from_revision: int, deadline: float) -> bool:
        """True once `key` is deleted (at or after from_revision), False at the deadline."""
        watch = await self._etcd.watch(key, start_revision=from_revision, timeout_s=self._budget(deadline))
        async with watch:
            try:
                async with asyncio.timeout_at(deadline):
                    while True:
                        batch = await watch.next()
                        if any(event.deleted for event in batch.events):
                            return True
            except TimeoutError:
                return False

    async def _release(self, key: str, lease_id: int) -> None:
        try:
            await self._etcd.revoke_lease(lease_id, timeout_s=_RELEASE_TIMEOUT_S)
        except EtcdError as exc:
            log.warning("lock %s: could not release it (%s); etcd frees it within %ds", key, exc, self._ttl_s)

    @staticmethod
    def _budget(deadline: float) -> float:
        """The timeout of one request: what is left of the wait, at most _REQUEST_TIMEOUT_S."""
        return max(0.0, min(deadline - asyncio.get_running_loop().time(), _REQUEST_TIMEOUT_S))


class _LeaseKeeper:
    """Renews a lock's lease every ttl/3 seconds until stopped; `lost` tells when the lease is gone."""

    def __init__(self, etcd: EtcdClient, lease_id: int, ttl_s: int, key: str) -> None:
        self._etcd = etcd
        self._lease_id = lease_id
        self._ttl_s = ttl_s
        self._key = key
        self.lost = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"msgscript:lock-lease:{key}")

    async def stop(self) -> None:
        """Stop renewing (the lease itself is left alone)."""
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._ttl_s / 3
        renewed = loop.time()
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                ttl = await self._etcd.keep_alive(self._lease_id, timeout_s=interval)
            except EtcdError as exc:
                if loop.time() - renewed >= self._ttl_s:
                    self._lose(f"its lease could not be renewed for {self._ttl_s}s: {exc}")
                    return
                if not failing:
                    failing = True
                    log.warning("lock %s: cannot renew its lease: %s", self._key, exc)
                continue
            if ttl <= 0:
                self._lose("its lease expired or was revoked")
                return
            renewed, failing = loop.time(), False

    def _lose(self, reason: str) -> None:
        self.lost = True
        log.warning("lock %s lost: %s", self._key, reason)
