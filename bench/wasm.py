"""What a wasm script costs per call once its module is compiled and cached.

Two measurements, each in rounds:
- the executor alone, in this process: `run()` of a hello module (the thread hand-off included), one call
  after the other (latency) and with --window calls in flight (calls per second). Modules: a hello written
  in WAT, and the C example `examples/wasm/c/hello.c` when clang for wasm32-wasi is installed. The first
  call of each module, which compiles it, is reported on its own. Target: p50 <= 1 ms per call.
- end to end (unless --no-daemon): a private nats-server and one daemon serving the WAT hello and
  `examples/hello.lua`; sequential NATS requests to each, for the cost of a wasm call next to a Lua one.

    .venv/bin/python bench/wasm.py [--calls 2000] [--rounds 3] [--window 8] [--no-daemon]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import wasmtime
from _measure import Call, Side, alternate_rounds, percentile, warm_up
from _services import BenchError, free_port, run_main, run_nats_server, run_service, wait_for_nats_target

from msgscript.config import Settings
from msgscript.executors.base import Executor, RunContext
from msgscript.executors.wasm import WasmExecutor, open_wasm_executor
from msgscript.message import Message, Result
from msgscript.script import Script

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"John"
TARGET_P50_MS = 1.0
CALL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0

# Prints "Hello, <PAYLOAD>" without libc: the smallest module that reads its message.
HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "Hello, ")
  (func (export "_start") (local $i i32) (local $count i32) (local $entry i32) (local $n i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (local.set $count (i32.load (i32.const 0)))
    (drop (call $get (i32.const 1024) (i32.const 2048)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $entry (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
        ;; "PAYLOAD=" is the only variable starting with the bytes P, A (SUBJECT, METHOD, URL do not).
        (if (i32.eq (i32.load16_u (local.get $entry)) (i32.const 0x4150))
          (then
            (local.set $entry (i32.add (local.get $entry) (i32.const 8)))
            (block $end
              (loop $more
                (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $entry) (local.get $n)))))
                (local.set $n (i32.add (local.get $n) (i32.const 1)))
                (br $more)))
            (i32.store (i32.const 8) (i32.const 32)) (i32.store (i32.const 12) (i32.const 7))
            (i32.store (i32.const 16) (local.get $entry)) (i32.store (i32.const 20) (local.get $n))
            (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 2) (i32.const 24)))
            (br $done)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))"""


def executor_call(executor: Executor, module: Path, expected: bytes) -> Call:
    """One run of `module`; fails unless it prints `expected`."""
    script = Script(subject="bench.wasm", name="bench", content=str(module), executor_header="wasm")
    message = Message(subject="bench.wasm", payload=PAYLOAD)

    async def call() -> None:
        ctx = RunContext(deadline=time.monotonic() + CALL_TIMEOUT_S, timeout_s=CALL_TIMEOUT_S)
        result = await executor.run(script, message, ctx)
        if result != Result(payload=expected):
            raise BenchError(f"unexpected result from {module.name}: {result}")

    return call


def nats_call(nc: nats.NATS, subject: str) -> Call:
    """One NATS request; fails when the result carries an error."""

    async def call() -> None:
        msg = await nc.request(subject, PAYLOAD, timeout=CALL_TIMEOUT_S)
        result = json.loads(msg.data)["script_result"][0]
        if result["error"]:
            raise BenchError(f"{subject} answered an error: {result['error']}")

    return call


def build_modules(work_dir: Path) -> list[tuple[str, Path, bytes]]:
    """(label, module, expected output) of each hello module that can be built here."""
    wat = work_dir / "wat-hello.wasm"
    wat.write_bytes(wasmtime.wat2wasm(HELLO_WAT))
    modules = [("WAT hello", wat, b"Hello, " + PAYLOAD)]
    if shutil.which("clang") and Path("/usr/lib/wasm32-wasi/libc.a").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "wasm"), f"OUT={work_dir}"], check=True)
        expected = b"Hello from C, " + PAYLOAD + b"! (subject bench.wasm)"
        modules.append(("C hello (wasi-libc)", work_dir / "hello.wasm", expected))
    else:
        print("clang for wasm32-wasi not found: the C hello is left out", flush=True)
    return modules


def describe_round(side: Side, median_s: float) -> str:
    return f"{side.label} {median_s * 1e6:,.0f} µs"


async def measure(sides: list[Side], rounds: int, calls: int, window: int | None) -> None:
    await warm_up(sides, min(200, calls))  # the first call compiles the module
    await alternate_rounds(sides, rounds, calls, window, describe_round)


def report(sides: list[Side], window: int | None) -> None:
    print(
        f"\n  {'':<30}{'first':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}"
        + (f"{'calls/s':>12}" if window else "")
    )
    for side in sides:
        ordered = sorted(side.latencies_s)
        cells = [side.first_call_s * 1e6] + [percentile(ordered, f) * 1e6 for f in (0.5, 0.9, 0.99)]
        cells.append(statistics.fmean(ordered) * 1e6)
        line = f"  {side.label:<30}" + "".join(f"{cell:>10,.0f}" for cell in cells)
        if window:
            line += f"{statistics.median(side.rates):>12,.0f}"
        print(line)
    print("  (µs per call; `first` compiles the module)" + (f"; calls/s with {window} in flight" if window else ""))


async def bench_executor(args: argparse.Namespace, work_dir: Path) -> list[Side]:
    modules = build_modules(work_dir)
    print(f"\nexecutor in this process: {args.rounds} rounds of {args.calls} calls per module", flush=True)
    async with open_wasm_executor(Settings()) as executor:
        if not isinstance(executor, WasmExecutor):
            raise BenchError("wasmtime is not available to msgscript")
        sides = [Side(label, executor_call(executor, path, expected)) for label, path, expected in modules]
        await measure(sides, args.rounds, args.calls, args.window)
    report(sides, args.window)
    return sides


async def bench_daemon(args: argparse.Namespace, work_dir: Path) -> None:
    scripts = work_dir / "scripts"
    scripts.mkdir()
    (scripts / "hello.lua").write_text((ROOT / "examples" / "hello.lua").read_text())
    module = work_dir / "daemon-hello.wasm"
    module.write_bytes(wasmtime.wat2wasm(HELLO_WAT))
    (scripts / "wasm.lua").write_text(f"--* subject: bench.wasm\n--* name: bench\n--* executor: wasm\n{module}\n")
    calls = max(1, args.calls // 4)
    print(f"\nend to end over NATS: {args.rounds} rounds of {calls} sequential requests per script", flush=True)
    async with run_nats_server(work_dir) as server:
        argv = [sys.executable, "-m", "msgscript", "-natsurl", server.url, "-script", str(scripts)]
        argv += ["-port", str(free_port())]
        async with run_service("daemon", argv, work_dir, ROOT) as daemon:
            nc = await nats.connect(server.url, name="bench-wasm", allow_reconnect=False)
            try:
                for subject in ("bench.wasm", "funcs.hello"):
                    await wait_for_nats_target(nc, server, subject, PAYLOAD, 1, [daemon], READY_TIMEOUT_S)
                sides = [Side("WAT hello over NATS", nats_call(nc, "bench.wasm"))]
                sides.append(Side("hello.lua over NATS", nats_call(nc, "funcs.hello")))
                await measure(sides, args.rounds, calls, None)
            finally:
                await nc.close()
    report(sides, None)
    wasm, lua = (statistics.median(s.latencies_s) for s in sides)
    print(f"  wasm adds {(wasm - lua) * 1e6:,.0f} µs per request over the Lua hello (p50 {wasm / lua:.2f}x)")


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="msgscript-bench-wasm-") as tmp:
        work_dir = Path(tmp)
        sides = await bench_executor(args, work_dir)
        if not args.no_daemon:
            await bench_daemon(args, work_dir)
    print()
    for side in sides:
        p50_ms = statistics.median(side.latencies_s) * 1000
        verdict = "PASS" if p50_ms <= TARGET_P50_MS else "MISS"
        print(f"{verdict}  {side.label}: p50 {p50_ms:.3f} ms per call (target <= {TARGET_P50_MS:g} ms)")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per module and round (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating which goes first (%(default)s)")
    parser.add_argument("--window", type=int, default=8, help="calls in flight in the windowed phase (%(default)s)")
    parser.add_argument("--no-daemon", action="store_true", help="measure the executor only")
    return run_main(main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(cli())
