"""A bare nats-py responder that answers every request with its own payload: the baseline of the NATS benchmark."""

from __future__ import annotations

import argparse
import asyncio
import signal

import nats
from nats.aio.msg import Msg

from msgscript.cli.server import run_async

DRAIN_TIMEOUT_S = 5


async def serve(url: str, subject: str, queue: str) -> None:
    """Answer requests on `subject` until SIGTERM or SIGINT, then drain."""
    nc = await nats.connect(url, name=f"bench-echo {subject}")

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, queue=queue, cb=echo)
    await nc.flush(timeout=DRAIN_TIMEOUT_S)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    try:
        await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        await nc.close()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="NATS server URL")
    parser.add_argument("--subject", default="bench.echo", help="subject to answer (default: %(default)s)")
    parser.add_argument("--queue", default="bench", help="queue group (default: %(default)s)")
    args = parser.parse_args()
    run_async(serve(args.url, args.subject, args.queue))


if __name__ == "__main__":
    main()
