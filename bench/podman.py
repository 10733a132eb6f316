"""What a podman script costs per call, against running the same container with the podman CLI directly.

Starts a private nats-server and one daemon serving a podman script (the local busybox image, command `cat`),
then measures, round by round and alternating which goes first:
- `podman run --rm -i --pull=never <image> cat` started by this process, the payload on its stdin;
- a NATS request to the daemon's podman script with the same payload (the daemon runs the same container).
Both sequentially (latency per call), and with --window calls in flight (calls per second). The target is a
daemon/CLI ratio of at most 1.2 for the sequential p50.

    .venv/bin/python bench/podman.py [--calls 20] [--rounds 3] [--window 4] [--image IMAGE]

Needs podman and the image (.ci/setup-podman builds localhost/msgscript-busybox:latest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import nats
from _measure import Call, Side, alternate_rounds, percentile, warm_up
from _services import BenchError, free_port, run_main, run_nats_server, run_service, wait_for_nats_target

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "bench.podman"
PAYLOAD = b"John"
LATENCY_RATIO_MAX = 1.2
CALL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0


def cli_call(podman: str, image: str) -> Call:
    """One `podman run --rm` of the image, payload on stdin; fails unless it answers the payload."""

    async def call() -> None:
        process = await asyncio.create_subprocess_exec(
            podman,
            "run",
            "--rm",
            "-i",
            "--pull=never",
            image,
            "cat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(PAYLOAD), CALL_TIMEOUT_S)
        if process.returncode != 0 or stdout != PAYLOAD:
            raise BenchError(f"podman run failed ({process.returncode}): {stderr.decode(errors='replace')}")

    return call


def daemon_call(nc: nats.NATS) -> Call:
    """One NATS request to the podman script; fails unless the result carries the payload and no error."""

    async def call() -> None:
        msg = await nc.request(SUBJECT, PAYLOAD, timeout=CALL_TIMEOUT_S)
        result = json.loads(msg.data)["script_result"][0]
        if result["error"] or result["http_code"] != 0:
            raise BenchError(f"the daemon answered an error: {msg.data.decode(errors='replace')}")

    return call


def describe_round(side: Side, median_s: float) -> str:
    return f"{side.label} {median_s * 1000:,.0f} ms {side.rates[-1]:.2f}/s"


def script_text(image: str) -> str:
    config = {"image": image, "command": ["cat"]}
    return f"--* subject: {SUBJECT}\n--* name: bench_podman\n--* executor: podman\n{json.dumps(config)}\n"


def row(name: str, cli: float, daemon: float, unit: str, target: str = "") -> str:
    ratio = daemon / cli if cli else float("nan")
    return f"  {name:<28}{cli:>12,.1f}{daemon:>12,.1f}  {unit:<6}{ratio:>8.2f}  {target}".rstrip()


async def main(args: argparse.Namespace) -> int:
    podman = shutil.which("podman")
    if podman is None:
        raise BenchError("podman is not on PATH")
    exists = await asyncio.create_subprocess_exec(podman, "image", "exists", args.image)
    if await exists.wait() != 0:
        raise BenchError(f"image {args.image} is missing (.ci/setup-podman builds it)")
    with tempfile.TemporaryDirectory(prefix="msgscript-bench-podman-") as tmp:
        work_dir = Path(tmp)
        scripts = work_dir / "scripts"
        scripts.mkdir()
        (scripts / "podman.lua").write_text(script_text(args.image))
        async with run_nats_server(work_dir) as server:
            argv = [sys.executable, "-m", "msgscript", "-natsurl", server.url, "-script", str(scripts)]
            argv += ["-port", str(free_port())]
            async with run_service("daemon", argv, work_dir, ROOT) as daemon:
                nc = await nats.connect(server.url, name="bench-podman", allow_reconnect=False)
                try:
                    await wait_for_nats_target(nc, server, SUBJECT, PAYLOAD, 1, [daemon], READY_TIMEOUT_S)
                    sides = [Side("podman run", cli_call(podman, args.image)), Side("daemon", daemon_call(nc))]
                    # Warm-up: the page cache, podman's storage, the daemon's image check.
                    await warm_up(sides, 1)
                    print(
                        f"{args.rounds} rounds of {args.calls} sequential calls, then {args.calls} with "
                        f"{args.window} in flight, per side; image {args.image}",
                        flush=True,
                    )
                    await alternate_rounds(sides, args.rounds, args.calls, args.window, describe_round)
                finally:
                    await nc.close()
    cli, ours = sides
    p50 = [percentile(sorted(s.latencies_s), 0.5) * 1000 for s in sides]
    p90 = [percentile(sorted(s.latencies_s), 0.9) * 1000 for s in sides]
    mean = [statistics.fmean(s.latencies_s) * 1000 for s in sides]
    rate = [statistics.median(s.rates) for s in sides]
    ratio = p50[1] / p50[0]
    print(f"\n  {'':<28}{cli.label:>12}{ours.label:>12}  {'':<6}{'ratio':>8}")
    print(row("sequential p50", p50[0], p50[1], "ms", f"target <= {LATENCY_RATIO_MAX:g}"))
    print(row("sequential p90", p90[0], p90[1], "ms"))
    print(row("sequential mean", mean[0], mean[1], "ms"))
    print(row(f"{args.window} in flight (median)", rate[0], rate[1], "call/s"))
    verdict = "PASS" if ratio <= LATENCY_RATIO_MAX else "MISS"
    print(f"\n{verdict}  sequential p50 daemon/podman run = {ratio:.2f} (target <= {LATENCY_RATIO_MAX:g})")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per side and round, each phase (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating which side goes first (%(default)s)")
    parser.add_argument("--window", type=int, default=4, help="calls in flight in the second phase (%(default)s)")
    parser.add_argument("--image", default="localhost/msgscript-busybox:latest", help="image (%(default)s)")
    return run_main(main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(cli())
