"""Mutual exclusion of scripts across instances (`--* lock: true`): the Lock protocol and the single-node lock.

The dispatcher wraps each run of a script with `lock: true` in `Lock.hold(lock_key(name), timeout)`.
The daemon uses msgscript.etcd_lock.EtcdLock with the etcd backend and NoLock with the file backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Lock(Protocol):
    """A named cluster-wide mutex."""

    def hold(self, key: str, timeout_s: float) -> AbstractAsyncContextManager[bool]:
        """Hold `key` for the duration of the context; yields False when it could not be had in time."""
        ...


class NoLock:
    """The single-node lock: always granted at once."""

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout_s: float) -> AsyncIterator[bool]:
        """Grant the lock."""
        yield True


def lock_key(script_name: str) -> str:
    """The upstream lock prefix for a script: `<name>_lock` at the root of the etcd keyspace."""
    return f"{script_name}_lock"
