"""A bare nats-py JetStream pull consumer that acks every message: the baseline of the durable benchmark.

Creates the stream (file storage, capturing one subject) and a durable pull consumer on it when they do
not exist, then loops: fetch a batch, ack each message. No other work per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from msgscript.cli.server import run_async

FLUSH_TIMEOUT_S = 2
FETCH_TIMEOUT_S = 2.0
ACK_WAIT_S = 30.0
DUPLICATE_WINDOW_S = 120.0


async def consume(url: str, stream: str, subject: str, durable: str, batch: int, max_ack_pending: int) -> None:
    """Fetch and ack until SIGTERM or SIGINT."""
    nc = await nats.connect(url, name=f"bench-js-consumer {durable}")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S)
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(durable, stream)

    async def loop() -> None:
        while True:
            try:
                messages = await sub.fetch(batch, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in messages:
                await msg.ack()

    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(loop(), name=f"bench-js-consumer-{durable}")
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # No drain: a pull subscription's drain waits for fetches that will not come; the acks are already sent.
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    await nc.close()


def main() -> None:
    """Parse the command line and consume."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="NATS server URL")
    parser.add_argument("--stream", default="BENCH_BARE", help="stream to consume (default: %(default)s)")
    parser.add_argument("--subject", default="bench.durable.bare", help="subject of the stream and consumer")
    parser.add_argument("--durable", default="bench_bare", help="durable consumer name (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="messages per fetch (default: %(default)s)")
    parser.add_argument(
        "--max-ack-pending", type=int, default=256, help="the consumer's max ack pending (default: %(default)s)"
    )
    args = parser.parse_args()
    run_async(consume(args.url, args.stream, args.subject, args.durable, args.batch, args.max_ack_pending))


if __name__ == "__main__":
    main()
