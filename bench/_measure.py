"""The measurements: sequential latency and windowed throughput, over NATS and over HTTP."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import nats.errors
from _services import read_cpu_seconds
from nats.aio.client import Client

Call = Callable[[], Awaitable[None]]


class RequestFailed(Exception):
    """Raised by a call when the target answered, but not with success (e.g. an HTTP error status)."""


@dataclass(slots=True)
class TargetStats:
    """Everything measured on one target across all rounds."""

    latencies_ns: list[int] = field(default_factory=list)
    round_p50_us: list[float] = field(default_factory=list)
    throughputs_rps: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    client_cpu_fractions: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def median(values: Sequence[float]) -> float:
    """Median; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def nats_call(nc: Client, subject: str, payload: bytes, timeout_s: float) -> Call:
    """One NATS request/reply."""

    async def call() -> None:
        await nc.request(subject, payload, timeout=timeout_s)

    return call


def http_call(session: aiohttp.ClientSession, url: str, payload: bytes) -> Call:
    """One HTTP POST whose full response body is read; a non-200 status is a failure."""

    async def call() -> None:
        async with session.post(url, data=payload) as response:
            await response.read()
            if response.status != 200:
                raise RequestFailed(f"HTTP {response.status}")

    return call


CALL_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    aiohttp.ClientError,
    RequestFailed,
    TimeoutError,
)


async def measure_latency(call: Call, count: int, stats: TargetStats) -> None:
    """`count` calls one after the other; each successful call's duration goes into `stats`."""
    round_ns: list[int] = []
    gc.collect()
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        try:
            await call()
        except CALL_ERRORS:
            stats.errors += 1
            continue
        round_ns.append(clock() - start)
    stats.requests += count
    stats.latencies_ns.extend(round_ns)
    stats.round_p50_us.append(percentile(sorted(round_ns), 0.50) / 1000)


async def run_window(call: Call, count: int, window: int) -> int:
    """`count` calls with up to `window` of them in flight; returns how many failed."""
    remaining = count
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except CALL_ERRORS:
                errors += 1

    async with asyncio.TaskGroup() as group:
        for index in range(min(window, count)):
            group.create_task(worker(), name=f"bench-window-{index}")
    return errors


async def measure_throughput(
    call: Call, count: int, window: int, target_groups: Sequence[int], stats: TargetStats
) -> float:
    """`count` calls with `window` in flight; records requests/s, target CPU per request and client CPU share."""
    gc.collect()
    cpu_before = await asyncio.to_thread(read_cpu_seconds, target_groups)
    client_before = time.process_time()
    start = time.perf_counter()
    errors = await run_window(call, count, window)
    elapsed_s = time.perf_counter() - start
    client_s = time.process_time() - client_before
    cpu_after = await asyncio.to_thread(read_cpu_seconds, target_groups)

    rate = (count - errors) / elapsed_s
    stats.requests += count
    stats.errors += errors
    stats.throughputs_rps.append(rate)
    stats.client_cpu_fractions.append(client_s / elapsed_s)
    if cpu_before is not None and cpu_after is not None and count > errors:
        stats.cpu_us_per_request.append((cpu_after - cpu_before) * 1e6 / (count - errors))
    return rate


# Call by call, for the benches of one executor against something else (bench/podman.py, bench/wasm.py): a call
# that fails raises and ends the run, and every latency and rate is kept for the report.


@dataclass(slots=True)
class Side:
    """One thing measured call by call: how to call it, the first call's time, and every latency and rate."""

    label: str
    call: Call
    first_call_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


async def sequential(side: Side, calls: int) -> None:
    """`calls` calls one after the other, each one's latency recorded."""
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        await side.call()
        side.latencies_s.append(clock() - start)


async def windowed(side: Side, calls: int, window: int) -> float:
    """`calls` calls with up to `window` of them in flight; records and returns the calls per second."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await side.call()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(min(window, calls)):
            group.create_task(worker(), name=f"bench-window-{index}")
    rate = calls / (time.perf_counter() - start)
    side.rates.append(rate)
    return rate


async def warm_up(sides: Sequence[Side], calls: int) -> None:
    """Time each side's first call (it may compile a module or check an image), then make `calls` more; only
    the first call's time is kept."""
    for side in sides:
        start = time.perf_counter()
        await side.call()
        side.first_call_s = time.perf_counter() - start
        await sequential(side, calls)
        side.latencies_s.clear()


async def alternate_rounds(
    sides: Sequence[Side], rounds: int, calls: int, window: int | None, describe: Callable[[Side, float], str]
) -> None:
    """`rounds` rounds of `calls` sequential calls per side, then (with a `window`) as many windowed, the order of
    the sides flipping every round so that background noise lands on all of them.

    Prints a line per round: `describe(side, median_s)` of each side, median_s being its median latency in the
    round's sequential calls.
    """
    for index in range(rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        for side in order:
            await sequential(side, calls)
        if window:
            for side in order:
                await windowed(side, calls, window)
        parts = [describe(side, median(side.latencies_s[-calls:])) for side in sides]
        print(f"  round {index + 1}/{rounds}: " + " | ".join(parts), flush=True)
