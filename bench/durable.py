"""Durable hello on JetStream: the daemon against a bare nats-py pull consumer, measured in one run.

Starts a private nats-server with JetStream (file store in a temporary directory), a bare pull consumer
(`js_consumer.py`: fetch a batch, ack each message) on a stream of its own, and the daemon on a copy of
`examples/hello.lua` marked `--* durable: true`, whose stream (MSGSCRIPT) and consumer the daemon creates.

In each round, for each target (the order flips every round), the target's processes are stopped
(SIGSTOP), a backlog of messages is published into its stream, and the target goes on (SIGCONT): the time
until its consumer's ack floor reaches the last message gives messages per second, and the CPU time of the
target's process group over that time, per message, the cost of one delivery. The ratio daemon/bare is
checked against 0.5.

    .venv/bin/python bench/durable.py            # full run, about a minute on 2 cores
    .venv/bin/python bench/durable.py --quick    # smoke run, about 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
from _loop import loop_name
from _measure import median
from _report import Ratio, format_verdicts
from _services import (
    BenchError,
    Service,
    free_port,
    group_stats,
    read_cpu_seconds,
    run_main,
    run_nats_server,
    run_service,
)
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from nats.js.manager import JetStreamManager
from run import show_reply

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HELLO = ROOT / "examples" / "hello.lua"
PAYLOAD = b"John"
DAEMON_STREAM = "MSGSCRIPT"
DAEMON_SUBJECT = "bench.durable.hello"
BARE_STREAM = "BENCH_BARE"
BARE_SUBJECT = "bench.durable.bare"
BARE_DURABLE = "bench_bare"
DLQ_SUBJECTS = "msgscript.dlq.>"
RATIO_MIN = 0.5
START_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
API_TIMEOUT_S = 5
BACKLOG_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.01
PUBLISH_CHUNK = 1000
DEFAULT_DAEMON_CMD = "{python} -m msgscript -natsurl {url} -script {scripts} -port {port}"
DAEMON_CMD_HELP = """\
the daemon's command line (split like a shell would); placeholders: {python} this interpreter, {url} the
NATS URL, {scripts} the directory holding the durable hello, {port} a free HTTP port, {batch} the --batch,
{subject} and {stream} where the daemon's messages go, {bench} the bench/ directory. To check the harness
against a second bare consumer:
  --daemon-cmd "{python} {bench}/js_consumer.py --url {url} --stream {stream} --subject {subject} --durable twin"
"""
# Sizes of a full run (about a minute on 2 cores) and of --quick (about 15 s).
FULL_SIZES = {"rounds": 6, "messages": 60000, "warmup": 5000}
QUICK_SIZES = {"rounds": 2, "messages": 30000, "warmup": 2000}


@dataclass
class Target:
    """One consumer under test: where its messages go, which processes serve them, what was measured."""

    key: str
    stream: str
    subject: str
    service: Service
    consumer: str = ""
    rates: list[float] = field(default_factory=list)
    cpu_us_per_message: list[float] = field(default_factory=list)
    redelivered: int = 0
    threads: list[int] = field(default_factory=list)

    @property
    def groups(self) -> list[int]:
        """The process groups whose CPU counts for this target."""
        return [self.service.pid]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: " + _sizes(QUICK_SIZES))
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_SIZES['rounds']})")
    parser.add_argument(
        "--messages", type=int, help=f"messages per target per round (default {FULL_SIZES['messages']})"
    )
    parser.add_argument(
        "--warmup", type=int, help=f"unmeasured messages per target first (default {FULL_SIZES['warmup']})"
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="messages per fetch of the bare consumer (default 64, as the daemon)"
    )
    parser.add_argument(
        "--max-ack-pending",
        type=int,
        default=256,
        help="the bare consumer's max ack pending (default 256, the daemon's -max-in-flight)",
    )
    parser.add_argument("--daemon-cmd", default=DEFAULT_DAEMON_CMD, help=DAEMON_CMD_HELP)
    parser.add_argument("--phase-timeout", type=float, default=120.0, help="limit of one drain in seconds")
    parser.add_argument("--log-dir", type=Path, help="keep the logs of the started processes here")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sizes.items())


def write_durable_hello(directory: Path, subject: str) -> None:
    """examples/hello.lua on `subject`, marked durable."""
    directory.mkdir(exist_ok=True)
    text = HELLO.read_text().replace("funcs.hello", subject)
    (directory / "hello.lua").write_text("--* durable: true\n" + text)


def daemon_argv(template: str, values: dict[str, str]) -> list[str]:
    argv = shlex.split(template)
    for placeholder, value in values.items():
        argv = [arg.replace("{" + placeholder + "}", value) for arg in argv]
    return argv


async def find_consumer(jsm: JetStreamManager, stream: str, subject: str, service: Service) -> str:
    """The name of the consumer on `stream` filtering `subject`, once the target has created it."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if service.process.returncode is not None:
                    raise BenchError(await service.describe_exit())
                with contextlib.suppress(nats.js.errors.NotFoundError, nats.errors.TimeoutError):
                    for info in await jsm.consumers_info(stream):
                        config = info.config
                        if config.filter_subject == subject or subject in (config.filter_subjects or []):
                            return info.name
                await asyncio.sleep(POLL_INTERVAL_S * 10)
    except TimeoutError:
        raise BenchError(
            f"no consumer of {subject!r} on stream {stream} within {START_TIMEOUT_S:g}s\n"
            f"{await service.describe_exit()}"
        ) from None


async def probe_reply(nc: Client, target: Target) -> None:
    """Send one message asking for its Reply (Msgscript-Reply-To) and show what the target answers."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.jetstream().publish(target.subject, PAYLOAD, headers={"Msgscript-Reply-To": inbox})
        try:
            msg = await sub.next_msg(timeout=PROBE_TIMEOUT_S)
        except nats.errors.TimeoutError:
            print(f"  {target.key} published no Reply within {PROBE_TIMEOUT_S:g}s", flush=True)
            return
        show_reply(target.key, msg.data)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def publish_backlog(nc: Client, subject: str, count: int) -> int:
    """Publish `count` messages into the stream capturing `subject`; the stream sequence of the last one.

    All but the last are plain publishes, flushed in chunks; the last is a JetStream publish, whose
    acknowledgement comes once the stream has stored everything this connection sent before it.
    """
    for index in range(count - 1):
        await nc.publish(subject, PAYLOAD)
        if index % PUBLISH_CHUNK == PUBLISH_CHUNK - 1:
            await nc.flush(timeout=API_TIMEOUT_S)
    ack = await nc.jetstream().publish(subject, PAYLOAD, timeout=API_TIMEOUT_S)
    return ack.seq


async def consumer_info(jsm: JetStreamManager, target: Target) -> ConsumerInfo:
    info: ConsumerInfo = await jsm.consumer_info(target.stream, target.consumer, timeout=API_TIMEOUT_S)
    return info


def describe(info: ConsumerInfo) -> str:
    floor = info.ack_floor.stream_seq if info.ack_floor else None
    return (
        f"pending {info.num_pending}, ack pending {info.num_ack_pending}, "
        f"redelivered {info.num_redelivered}, ack floor {floor}"
    )


def count_threads(groups: Sequence[int]) -> int | None:
    """Threads of every process in the process groups `groups`, from /proc; None without /proc."""
    stats = group_stats(groups)
    return None if stats is None else sum(int(fields[17]) for fields in stats)


async def record_threads(target: Target) -> None:
    threads = await asyncio.to_thread(count_threads, target.groups)
    if threads is not None:
        target.threads.append(threads)


async def wait_for_backlog(jsm: JetStreamManager, target: Target, count: int) -> None:
    """Until the target's consumer counts `count` messages not yet acknowledged.

    Up to one batch is already delivered, to the stopped target's socket. The server updates the
    consumer's count a little after the stream stored the messages.
    """
    info = await consumer_info(jsm, target)
    try:
        async with asyncio.timeout(BACKLOG_TIMEOUT_S):
            while (info.num_pending or 0) + (info.num_ack_pending or 0) != count:
                await asyncio.sleep(POLL_INTERVAL_S)
                info = await consumer_info(jsm, target)
    except TimeoutError:
        raise BenchError(
            f"{target.key}: expected a backlog of {count} messages, {describe(info)} after {BACKLOG_TIMEOUT_S:g}s"
        ) from None


def signal_target(target: Target, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(target.service.pid, sig)


async def prepare(nc: Client, jsm: JetStreamManager, target: Target, count: int) -> int:
    """Stop the target's processes and publish a backlog of `count` into its stream; the last sequence.

    The target stays stopped (SIGSTOP); `drain` lets it go on. A consumer paused on the server would be
    simpler, but nats-server serves a pull request that waited through a pause only when it expires.
    """
    signal_target(target, signal.SIGSTOP)
    try:
        await jsm.purge_stream(target.stream)
        last_seq = await publish_backlog(nc, target.subject, count)
        await wait_for_backlog(jsm, target, count)
    except BaseException:
        signal_target(target, signal.SIGCONT)
        raise
    return last_seq


async def drain(jsm: JetStreamManager, target: Target, last_seq: int, timeout_s: float) -> tuple[float, float | None]:
    """Let the stopped target go on; seconds until its ack floor reaches `last_seq`, and its CPU seconds meanwhile."""
    try:
        before = await consumer_info(jsm, target)
        gc.collect()
        cpu_before = await asyncio.to_thread(read_cpu_seconds, target.groups)
    finally:
        start = time.perf_counter()
        signal_target(target, signal.SIGCONT)
    info = before
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                info = await consumer_info(jsm, target)
                if info.ack_floor is not None and info.ack_floor.stream_seq >= last_seq and not info.num_ack_pending:
                    break
                if target.service.process.returncode is not None:
                    raise BenchError(await target.service.describe_exit())
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise BenchError(
            f"{target.key} did not ack all messages up to sequence {last_seq} within {timeout_s:g}s "
            f"({describe(info)})\n{await target.service.describe_exit()}"
        ) from None
    elapsed_s = time.perf_counter() - start
    cpu_after = await asyncio.to_thread(read_cpu_seconds, target.groups)
    target.redelivered += (info.num_redelivered or 0) - (before.num_redelivered or 0)
    cpu_s = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return elapsed_s, cpu_s


async def measure(nc: Client, jsm: JetStreamManager, target: Target, count: int, timeout_s: float) -> None:
    """One backlog of `count` messages; records messages/s and the target's CPU per message."""
    last_seq = await prepare(nc, jsm, target, count)
    elapsed_s, cpu_s = await drain(jsm, target, last_seq, timeout_s)
    target.rates.append(count / elapsed_s)
    if cpu_s is not None:
        target.cpu_us_per_message.append(cpu_s * 1e6 / count)
    await record_threads(target)


def round_summary(target: Target) -> str:
    cpu = f"{target.cpu_us_per_message[-1]:.1f} µs CPU" if target.cpu_us_per_message else "CPU unknown"
    count = target.threads[-1] if target.threads else 0
    threads = f", {count} thread{'' if count == 1 else 's'}" if target.threads else ""
    return f"{target.key} {target.rates[-1]:,.0f} msg/s, {cpu}{threads}"


def threads(target: Target) -> str:
    return f"{target.threads[0]}, {target.threads[-1]}" if target.threads else "-"


def spread(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if values else "-"


def report(bare: Target, daemon: Target, dead_letters: int) -> Ratio:
    ratio = Ratio(
        "durable_throughput", "durable throughput", median(daemon.rates) / median(bare.rates), RATIO_MIN, False
    )
    verdict = "PASS" if ratio.passed else "MISS"
    rows = [
        ("throughput (msg/s, median)", f"{median(bare.rates):,.0f}", f"{median(daemon.rates):,.0f}"),
        ("  per round (msg/s)", spread(bare.rates), spread(daemon.rates)),
        (
            "target CPU per message (µs)",
            f"{median(bare.cpu_us_per_message):.1f}",
            f"{median(daemon.cpu_us_per_message):.1f}",
        ),
        ("threads (after warm-up, at the end)", threads(bare), threads(daemon)),
        ("redelivered messages", f"{bare.redelivered:,}", f"{daemon.redelivered:,}"),
        ("dead letters", "-", f"{dead_letters:,}"),
    ]
    print(f"\nDurable hello on JetStream\n  {'':36}{'bare':>16}{'daemon':>16}{'ratio':>8}   target")
    for index, (label, a, b) in enumerate(rows):
        tail = f"{ratio.value:8.2f}   >= {RATIO_MIN:g}   {verdict}" if index == 0 else ""
        print(f"  {label:36}{a:>16}{b:>16}{tail}")
    if daemon.threads and daemon.threads[-1] > daemon.threads[0]:
        print(
            "  warning: the daemon started threads during the rounds; hello has probably moved from the event loop\n"
            "  to the Lua worker threads (an execution outlasted the inline budget, e.g. when preempted), and the\n"
            "  rounds after that measure the worker-thread path"
        )
    return ratio


async def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as dirs:
        if args.log_dir is None:
            work = Path(dirs.enter_context(tempfile.TemporaryDirectory(prefix="msgscript-bench-durable-")))
        else:
            work = args.log_dir
            work.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(run_nats_server(work, jetstream=True))
            print(f"nats-server with JetStream at {server.url}, on {loop_name()}", flush=True)
            bare_argv = [sys.executable, str(BENCH_DIR / "js_consumer.py"), "--url", server.url]
            bare_argv += ["--stream", BARE_STREAM, "--subject", BARE_SUBJECT, "--durable", BARE_DURABLE]
            bare_argv += ["--batch", str(args.batch), "--max-ack-pending", str(args.max_ack_pending)]
            bare_service = await stack.enter_async_context(run_service("js-consumer", bare_argv, work, ROOT))
            scripts = work / "scripts"
            write_durable_hello(scripts, DAEMON_SUBJECT)
            values = {"python": sys.executable, "url": server.url, "scripts": str(scripts), "port": str(free_port())}
            values.update(batch=str(args.batch), subject=DAEMON_SUBJECT, stream=DAEMON_STREAM, bench=str(BENCH_DIR))
            argv = daemon_argv(args.daemon_cmd, values)
            print(f"daemon: {shlex.join(argv)}", flush=True)
            daemon_service = await stack.enter_async_context(run_service("daemon", argv, work, ROOT))

            nc = await nats.connect(server.url, name="bench-durable", allow_reconnect=False)
            stack.push_async_callback(nc.close)
            jsm = nc.jsm()
            dead_letters = 0

            async def count_dead_letter(msg: Msg) -> None:
                nonlocal dead_letters
                dead_letters += 1

            await nc.subscribe(DLQ_SUBJECTS, cb=count_dead_letter)
            bare = Target("bare", BARE_STREAM, BARE_SUBJECT, bare_service)
            daemon = Target("daemon", DAEMON_STREAM, DAEMON_SUBJECT, daemon_service)
            targets = [bare, daemon]
            for target in targets:
                target.consumer = await find_consumer(jsm, target.stream, target.subject, target.service)
                print(f"  {target.key}: consumer {target.consumer} on stream {target.stream}", flush=True)
            await probe_reply(nc, daemon)
            for target in targets:
                last_seq = await prepare(nc, jsm, target, args.warmup)
                await drain(jsm, target, last_seq, args.phase_timeout)
                target.redelivered = 0
                await record_threads(target)
            print(
                f"{args.rounds} rounds of {args.messages:,} messages per target (bare batch {args.batch})", flush=True
            )
            for number in range(args.rounds):
                for target in targets if number % 2 == 0 else targets[::-1]:
                    await measure(nc, jsm, target, args.messages, args.phase_timeout)
                summary = " | ".join(round_summary(target) for target in targets)
                print(f"  round {number + 1}/{args.rounds}: {summary}", flush=True)
            ratio = report(bare, daemon, dead_letters)
            print("\n" + format_verdicts([ratio]), flush=True)
            print("stopping...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main(sys.argv[1:])))
