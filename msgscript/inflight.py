"""The one bound on work in flight (`-max-in-flight`), shared by NATS messages and HTTP requests."""

from __future__ import annotations

import asyncio
import collections


class InFlightLimit:
    """At most `limit` messages and requests handled at once, across NATS and the HTTP gateway.

    NATS waits for a slot with `acquire` (holding back its delivery queue is the back-pressure);
    the gateway takes one with `try_acquire` and answers 503 when none is free. A released slot goes
    to the longest waiter first, so a steady flow of HTTP requests cannot starve NATS messages.
    """

    __slots__ = ("_in_use", "_waiters", "limit")  # taken and given back for every message

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, not {limit}")
        self.limit = limit
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def in_use(self) -> int:
        """The slots taken now."""
        return self._in_use

    def try_acquire(self) -> bool:
        """Take a slot if one is free now; False (and nothing taken) otherwise."""
        if self._in_use >= self.limit:
            return False
        self._in_use += 1
        return True

    async def acquire(self) -> None:
        """Take a slot, waiting for one to be released when all are taken."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as the wait was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; `in_use` stays the same
                return
        self._in_use -= 1
