"""Two daemons side by side: what a change costs on the hello path, measured in one run.

Starts a private nats-server and two daemons, A and B, each from its own command line (by default both
this checkout's `msgscript`; point `--a-cmd` at another checkout to compare a change against it). Each
serves `examples/hello.lua` under its own subject (the subject is rewritten in a copy of the script), so
one NATS server carries both. Rounds alternate A and B, and flip their order each round, so that noise
lands on both; each round measures sequential latency, windowed throughput, and the daemon's CPU per
request (its whole process group: a supervisor and its workers).

    .venv/bin/python bench/ab.py --a-cmd "{python} ../base/cmd/msgscript" --rounds 8

`--a-cmd` and `--b-cmd` get `-natsurl URL -script DIR -port PORT` appended; `{python}` is this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
from _measure import TargetStats, measure_latency, measure_throughput, median, nats_call, percentile
from _services import Service, free_port, run_main, run_nats_server, run_service, wait_for_nats_target

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.lua"
PAYLOAD = b"John"
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0


@dataclass
class Side:
    """One daemon under test."""

    key: str
    argv: list[str]
    subject: str
    groups: list[int] = field(default_factory=list)
    stats: TargetStats = field(default_factory=TargetStats)
    service: Service | None = None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-cmd", default="{python} -m msgscript", help="daemon A (default: this checkout)")
    parser.add_argument("--b-cmd", default="{python} -m msgscript", help="daemon B (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency-requests", type=int, default=3000)
    parser.add_argument("--throughput-requests", type=int, default=20000)
    parser.add_argument("--window", type=int, default=64)
    return parser.parse_args(argv)


def write_hello(directory: Path, subject: str) -> None:
    directory.mkdir()
    text = HELLO.read_text().replace("funcs.hello", subject)
    (directory / "hello.lua").write_text(text)


def report(sides: Sequence[Side]) -> None:
    print(f"{'':34}{'A':>14}{'B':>14}{'B/A':>8}")
    rows = [
        ("latency p50 (µs)", lambda s: percentile(sorted(s.stats.latencies_ns), 0.5) / 1000),
        ("latency p99 (µs)", lambda s: percentile(sorted(s.stats.latencies_ns), 0.99) / 1000),
        ("throughput (req/s, median)", lambda s: median(s.stats.throughputs_rps)),
        ("daemon CPU per request (µs, median)", lambda s: median(s.stats.cpu_us_per_request)),
    ]
    for label, value in rows:
        a, b = (value(side) for side in sides)
        print(f"{label:34}{a:14,.1f}{b:14,.1f}{b / a:8.2f}")
    for side in sides:
        cpu = ", ".join(f"{v:.1f}" for v in side.stats.cpu_us_per_request)
        rps = ", ".join(f"{v:,.0f}" for v in side.stats.throughputs_rps)
        print(f"  {side.key}: CPU per request by round {cpu}; req/s by round {rps}")
    spread = statistics.pstdev(sides[0].stats.cpu_us_per_request) if len(sides[0].stats.cpu_us_per_request) > 1 else 0
    print(f"  (A's CPU per request varies by {spread:.1f} µs between rounds)")


async def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    sides = [Side("A", [], "bench.a"), Side("B", [], "bench.b")]
    with tempfile.TemporaryDirectory(prefix="msgscript-ab-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(run_nats_server(work))
            for side, template in zip(sides, (args.a_cmd, args.b_cmd), strict=True):
                scripts = work / side.key
                write_hello(scripts, side.subject)
                side.argv = [part.replace("{python}", sys.executable) for part in shlex.split(template)]
                side.argv += ["-natsurl", server.url, "-script", str(scripts), "-port", str(free_port())]
                service = await stack.enter_async_context(run_service(f"daemon-{side.key}", side.argv, work, ROOT))
                side.groups = [service.pid]
                side.service = service
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            for side in sides:
                await wait_for_nats_target(nc, server, side.subject, PAYLOAD, 1, [side.service], START_TIMEOUT_S)
            for number in range(args.rounds):
                for side in sides if number % 2 == 0 else sides[::-1]:
                    call = nats_call(nc, side.subject, PAYLOAD, REQUEST_TIMEOUT_S)
                    await measure_latency(call, args.latency_requests, side.stats)
                    await measure_throughput(call, args.throughput_requests, args.window, side.groups, side.stats)
                print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    for side in sides:
        print(f"{side.key}: {shlex.join(side.argv[:-6])}")
    report(sides)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main(sys.argv[1:])))
