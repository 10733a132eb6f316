"""The shared in-flight bound: refusing, waiting in order, and never losing a slot to a cancelled wait."""

from __future__ import annotations

import asyncio

import pytest

from msgscript.inflight import InFlightLimit


async def test_try_acquire_refuses_when_every_slot_is_taken() -> None:
    limit = InFlightLimit(2)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    assert limit.in_use == 2
    limit.release()
    assert limit.try_acquire()


async def test_a_released_slot_goes_to_the_longest_waiter_before_any_newcomer() -> None:
    limit = InFlightLimit(1)
    assert limit.try_acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        await limit.acquire()
        order.append(n)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    limit.release()
    assert not limit.try_acquire()  # the slot is already promised to the first waiter
    await asyncio.sleep(0)
    assert order == [0]
    limit.release()
    limit.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert limit.in_use == 1


async def test_a_cancelled_wait_loses_no_slot() -> None:
    limit = InFlightLimit(1)
    assert limit.try_acquire()
    gone = asyncio.ensure_future(limit.acquire())
    handed_over = asyncio.ensure_future(limit.acquire())
    after = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(0)
    gone.cancel()  # cancelled while waiting: skipped by the next release
    await asyncio.sleep(0)
    limit.release()  # goes to `handed_over`...
    handed_over.cancel()  # ...which is cancelled before it runs: the slot passes on to `after`
    with pytest.raises(asyncio.CancelledError):
        await handed_over
    await asyncio.wait_for(after, 1)
    assert limit.in_use == 1
    limit.release()
    assert limit.in_use == 0


def test_the_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError):
        InFlightLimit(0)
