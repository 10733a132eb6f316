"""Throughput of the msgscript daemon with 1 and 2 workers, over NATS and HTTP, and a soak for memory growth.

Starts a private nats-server, the bare nats-py echo responder and, for each worker count in turn, the daemon
(`-workers N`) on `examples/hello.lua`. Per worker count it measures, alternating echo and daemon round by round:
sequential p50/p99, pipelined throughput at 64 and 256 in flight, the CPU per request of each side's process
group, and the idle RSS of every daemon process. HTTP: `POST /funcs.hello` on the daemon against a bare aiohttp
handler answering the same bytes, driven by `wrk` (several Python client processes when wrk is not installed).
`--soak N` then sends N hello requests at about 80% of the measured maximum and reports the daemon's RSS (its
whole process group) at the start and the end. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from _measure import (
    TargetStats,
    http_call,
    measure_latency,
    measure_throughput,
    median,
    nats_call,
    percentile,
    run_window,
)
from _services import (
    BenchError,
    NatsServer,
    Service,
    alive_check,
    free_port,
    group_stats,
    probe_http,
    read_cpu_seconds,
    run_main,
    run_nats_server,
    run_service,
    wait_for_nats_target,
)
from nats.aio.client import Client

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SUBJECT = "funcs.hello"
ECHO_SUBJECT = "bench.echo"
PAYLOAD = b"John"
WINDOWS = (64, 256)
READY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0
IDLE_SETTLE_S = 1.0
WRK_THREADS = 2
HTTP_CONNECTIONS = 64
HTTP_CLIENT_PROCESSES = 2
SOAK_SHARE = 0.8
SOAK_WINDOW = 256
SOAK_PROGRESS_S = 10.0


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much one run sends."""

    rounds: int
    latency_requests: int
    throughput_requests: int
    warmup: int
    http_seconds: float


FULL = Sizes(rounds=4, latency_requests=2000, throughput_requests=20000, warmup=5000, http_seconds=5.0)
QUICK = Sizes(rounds=2, latency_requests=500, throughput_requests=5000, warmup=1000, http_seconds=2.0)


@dataclass(slots=True)
class Side:
    """Echo or daemon over NATS: its subject, process groups, and what was measured per window."""

    key: str
    subject: str
    groups: list[int]
    latency: TargetStats = field(default_factory=TargetStats)
    windows: dict[int, TargetStats] = field(default_factory=lambda: {w: TargetStats() for w in WINDOWS})


@dataclass(slots=True)
class HttpResult:
    """Requests per second and CPU per request of one HTTP target."""

    rps: float
    cpu_us: float | None
    errors: int


@dataclass(slots=True)
class WorkerResult:
    """Everything measured with one `-workers` count."""

    workers: int
    echo: Side
    daemon: Side
    idle_rss_mb: list[tuple[str, float]]
    threads: tuple[int, int] = (0, 0)
    http: tuple[HttpResult, HttpResult] | None = None


def rss_by_process(group: int) -> list[tuple[str, float]]:
    """(role, RSS in MB) of every process in the process group `group`, the group leader first."""
    stats = group_stats([group]) or []
    page = os.sysconf("SC_PAGE_SIZE")
    rows = []
    for fields in stats:
        role = "supervisor" if int(fields[1]) == os.getpid() else "worker"
        rows.append((role, int(fields[21]) * page / 1e6))
    return sorted(rows, key=lambda row: row[0] != "supervisor")


def thread_count(group: int) -> int:
    """Threads of all processes in the process group `group` (the daemon moves hello off its event loop to Lua
    threads when one execution outlasts the inline budget, which costs CPU per request)."""
    return sum(int(fields[17]) for fields in group_stats([group]) or [])


def group_rss_mb(group: int) -> float:
    """Total RSS of the process group `group` in MB."""
    return sum(mb for _, mb in rss_by_process(group))


async def nats_rounds(nc: Client, sides: Sequence[Side], sizes: Sizes) -> None:
    """Warm up, then per round: sequential latency and every window, on each side, the order flipping."""
    for side in sides:
        call = nats_call(nc, side.subject, PAYLOAD, REQUEST_TIMEOUT_S)
        await run_window(call, sizes.warmup, max(WINDOWS))
        await run_window(call, min(sizes.warmup, 500), 1)
    for index in range(sizes.rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        for side in order:
            call = nats_call(nc, side.subject, PAYLOAD, REQUEST_TIMEOUT_S)
            await measure_latency(call, sizes.latency_requests, side.latency)
            for window in WINDOWS:
                await measure_throughput(call, sizes.throughput_requests, window, side.groups, side.windows[window])
        parts = [
            f"{s.key} p50 {s.latency.round_p50_us[-1]:,.0f} µs, "
            + ", ".join(f"{s.windows[w].throughputs_rps[-1]:,.0f}" for w in WINDOWS)
            + " req/s"
            for s in sides
        ]
        print(f"    round {index + 1}/{sizes.rounds}: " + " | ".join(parts), flush=True)


WRK_SCRIPT = 'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "text/plain"\n'


async def run_wrk(url: str, seconds: float, work_dir: Path) -> tuple[float, int]:
    """Requests/s and failed requests (socket errors and non-2xx answers) of a wrk run against `url`."""
    script = work_dir / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=PAYLOAD.decode()))
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{HTTP_CONNECTIONS}", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(f"wrk did not finish within {seconds + 30:g}s") from None
    text = out.decode(errors="replace")
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if process.returncode != 0 or match is None:
        raise BenchError(f"wrk failed (exit {process.returncode}):\n{text}")
    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|read|write|timeout|connect)\s*:?\s+(\d+)", text)
    )
    return float(match.group(1)), errors


async def client_process(url: str, seconds: float, connections: int) -> None:
    """The fallback load generator's child: POST to `url` for `seconds`, print `requests errors` on stdout."""
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        call = http_call(session, url, PAYLOAD)
        deadline = time.perf_counter() + seconds
        done = errors = 0
        while time.perf_counter() < deadline:
            errors += await run_window(call, connections * 20, connections)
            done += connections * 20
    print(done, errors, flush=True)


async def run_clients(url: str, seconds: float) -> tuple[float, int]:
    """Requests/s and failures of HTTP_CLIENT_PROCESSES Python client processes against `url` (no wrk)."""
    per_process = max(1, HTTP_CONNECTIONS // HTTP_CLIENT_PROCESSES)
    argv = [sys.executable, __file__, "--client", url, str(seconds), str(per_process)]
    start = time.perf_counter()
    processes = [
        await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, cwd=REPO_DIR)
        for _ in range(HTTP_CLIENT_PROCESSES)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), seconds * 4 + 30)
    elapsed = time.perf_counter() - start
    done = errors = 0
    for out, _ in outputs:
        fields = out.split()
        if len(fields) != 2:
            raise BenchError(f"an HTTP client process printed {out!r}")
        done, errors = done + int(fields[0]), errors + int(fields[1])
    return (done - errors) / elapsed, errors


async def http_load(url: str, seconds: float, groups: Sequence[int], work_dir: Path) -> HttpResult:
    """Load `url` for about `seconds`; rate and CPU per request of the target's process groups."""
    cpu_before = await asyncio.to_thread(read_cpu_seconds, groups)
    start = time.perf_counter()
    if shutil.which("wrk"):
        rps, errors = await run_wrk(url, seconds, work_dir)
    else:
        rps, errors = await run_clients(url, seconds)
    elapsed = time.perf_counter() - start
    cpu_after = await asyncio.to_thread(read_cpu_seconds, groups)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and rps > 0:
        cpu_us = (cpu_after - cpu_before) * 1e6 / (rps * elapsed)
    return HttpResult(rps, cpu_us, errors)


async def measure_http(
    stack: contextlib.AsyncExitStack, daemon: Service, port: int, sizes: Sizes, work_dir: Path
) -> tuple[HttpResult, HttpResult] | None:
    """The bare aiohttp handler (answering the daemon's bytes) and the daemon's gateway, each loaded in turn."""
    daemon_url = f"http://127.0.0.1:{port}/{SUBJECT}"
    async with aiohttp.ClientSession() as session:
        answer = await probe_http(session, daemon_url, PAYLOAD, READY_TIMEOUT_S, alive_check([daemon]))
        if answer.status != 200:
            print(f"    HTTP: the daemon answered {answer.status}, skipped", flush=True)
            return None
        body_file = work_dir / "http-body"
        body_file.write_bytes(answer.body)
        echo_port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "http_echo.py"), "--port", str(echo_port)]
        argv += ["--body-file", str(body_file), "--content-type", answer.content_type or "application/octet-stream"]
        echo = await stack.enter_async_context(run_service(f"http-echo-{port}", argv, work_dir, REPO_DIR))
        echo_url = f"http://127.0.0.1:{echo_port}/{SUBJECT}"
        await probe_http(session, echo_url, PAYLOAD, READY_TIMEOUT_S, alive_check([echo]))
    tool = "wrk" if shutil.which("wrk") else f"{HTTP_CLIENT_PROCESSES} client processes"
    print(f"    HTTP: {tool}, {HTTP_CONNECTIONS} connections, {sizes.http_seconds:g}s per target", flush=True)
    warm = max(1.0, sizes.http_seconds / 4)
    await http_load(echo_url, warm, [echo.pid], work_dir)
    await http_load(daemon_url, warm, [daemon.pid], work_dir)
    bare = await http_load(echo_url, sizes.http_seconds, [echo.pid], work_dir)
    gateway = await http_load(daemon_url, sizes.http_seconds, [daemon.pid], work_dir)
    return bare, gateway


async def start_daemon(
    stack: contextlib.AsyncExitStack, server: NatsServer, workers: int, work_dir: Path
) -> tuple[Service, int]:
    port = free_port()
    argv = [sys.executable, "-m", "msgscript", "-natsurl", server.url, "-script", str(REPO_DIR / "examples")]
    argv += ["-port", str(port), "-workers", str(workers)]
    daemon = await stack.enter_async_context(run_service(f"daemon-w{workers}", argv, work_dir, REPO_DIR))
    return daemon, port


async def measure_workers(
    nc: Client, server: NatsServer, echo: Service, workers: int, sizes: Sizes, http: bool, work_dir: Path
) -> WorkerResult:
    """Start the daemon with `workers` workers, measure it against the echo responder, stop it."""
    print(f"  -workers {workers}", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        daemon, port = await start_daemon(stack, server, workers, work_dir)
        await wait_for_nats_target(nc, server, SUBJECT, PAYLOAD, workers, [daemon], READY_TIMEOUT_S)
        await asyncio.sleep(IDLE_SETTLE_S)
        idle = await asyncio.to_thread(rss_by_process, daemon.pid)
        result = WorkerResult(
            workers, Side("echo", ECHO_SUBJECT, [echo.pid]), Side("daemon", SUBJECT, [daemon.pid]), idle
        )
        threads_idle = await asyncio.to_thread(thread_count, daemon.pid)
        await nats_rounds(nc, [result.echo, result.daemon], sizes)
        result.threads = (threads_idle, await asyncio.to_thread(thread_count, daemon.pid))
        if http:
            result.http = await measure_http(stack, daemon, port, sizes, work_dir)
        return result


async def soak(
    nc: Client, server: NatsServer, workers: int, requests: int, rate: float, work_dir: Path
) -> dict[str, float]:
    """`requests` hello requests paced at `rate` per second on a `workers`-worker daemon; its RSS at the start,
    after the first tenth (an allocator settling shows up as growth before it, a leak also after it) and the end."""
    async with contextlib.AsyncExitStack() as stack:
        daemon, _ = await start_daemon(stack, server, workers, work_dir)
        await wait_for_nats_target(nc, server, SUBJECT, PAYLOAD, workers, [daemon], READY_TIMEOUT_S)
        call = nats_call(nc, SUBJECT, PAYLOAD, REQUEST_TIMEOUT_S)
        await run_window(call, min(requests, 20000), SOAK_WINDOW)  # warm the caches before the first RSS reading
        start_mb = await asyncio.to_thread(group_rss_mb, daemon.pid)
        print(f"  soak: {requests:,} requests at {rate:,.0f} req/s, RSS at start {start_mb:.1f} MB", flush=True)
        sent = errors = 0
        tenth_mb: float | None = None
        start = time.perf_counter()
        next_report = start + SOAK_PROGRESS_S

        async def sender() -> None:
            nonlocal sent, errors, next_report, tenth_mb
            while sent < requests:
                due = start + sent / rate
                sent += 1
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await call()
                except (nats.errors.Error, TimeoutError):
                    errors += 1
                if tenth_mb is None and sent >= requests // 10:
                    tenth_mb = -1.0  # claimed: only one sender reads it
                    tenth_mb = await asyncio.to_thread(group_rss_mb, daemon.pid)
                now = time.perf_counter()
                if now >= next_report:
                    next_report = now + SOAK_PROGRESS_S
                    rss = await asyncio.to_thread(group_rss_mb, daemon.pid)
                    print(f"    {sent:,}/{requests:,} sent, RSS {rss:.1f} MB", flush=True)

        async with asyncio.TaskGroup() as group:
            for _ in range(SOAK_WINDOW):
                group.create_task(sender())
        elapsed = time.perf_counter() - start
        await alive_check([daemon])()
        end_mb = await asyncio.to_thread(group_rss_mb, daemon.pid)
    return {
        "workers": workers,
        "requests": requests,
        "target_rps": rate,
        "achieved_rps": requests / elapsed,
        "errors": errors,
        "rss_start_mb": start_mb,
        "rss_tenth_mb": tenth_mb or math.nan,
        "rss_end_mb": end_mb,
        "growth_pct": (end_mb - start_mb) * 100 / start_mb,
        "growth_after_tenth_pct": (end_mb - tenth_mb) * 100 / tenth_mb if tenth_mb else math.nan,
    }


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_table(results: Sequence[WorkerResult], soak_doc: dict[str, float] | None) -> None:
    width = 34
    print()
    header = f"{'':{width}}"
    for r in results:
        header += f"{f'echo (w{r.workers})':>13}{f'daemon (w{r.workers})':>15}{'ratio':>7}"
    print(header)

    def row(label: str, pairs: Sequence[tuple[float | None, float | None]], spec: str = ",.0f") -> None:
        line = f"{label:{width}}"
        for echo, daemon in pairs:
            ratio = daemon / echo if echo and daemon is not None else None
            line += f"{fmt(echo, spec):>13}{fmt(daemon, spec):>15}{fmt(ratio, '.2f'):>7}"
        print(line)

    def lat(side: Side, fraction: float) -> float:
        return percentile(sorted(side.latency.latencies_ns), fraction) / 1000

    row("NATS p50 (µs)", [(lat(r.echo, 0.5), lat(r.daemon, 0.5)) for r in results])
    row("NATS p99 (µs)", [(lat(r.echo, 0.99), lat(r.daemon, 0.99)) for r in results])
    for w in WINDOWS:
        row(
            f"NATS {w} in flight (req/s, median)",
            [(median(r.echo.windows[w].throughputs_rps), median(r.daemon.windows[w].throughputs_rps)) for r in results],
        )
        row(
            "  CPU per request (µs, median)",
            [
                (median(r.echo.windows[w].cpu_us_per_request), median(r.daemon.windows[w].cpu_us_per_request))
                for r in results
            ],
            ",.1f",
        )
    if all(r.http is not None for r in results):
        row("HTTP POST (req/s, aiohttp/daemon)", [(r.http[0].rps, r.http[1].rps) for r in results if r.http])
        row("  CPU per request (µs)", [(r.http[0].cpu_us, r.http[1].cpu_us) for r in results if r.http], ",.1f")
        row("  failed requests", [(r.http[0].errors, r.http[1].errors) for r in results if r.http])
    errors = [
        (
            r.echo.latency.errors + sum(s.errors for s in r.echo.windows.values()),
            r.daemon.latency.errors + sum(s.errors for s in r.daemon.windows.values()),
        )
        for r in results
    ]
    row("NATS failed requests", errors)
    for r in results:
        idle = ", ".join(f"{role} {mb:.1f}" for role, mb in r.idle_rss_mb)
        threads = f"daemon threads {r.threads[0]} idle, {r.threads[1]} after the NATS rounds"
        print(f"-workers {r.workers}: idle RSS (MB) {idle}; {threads}")
    if soak_doc is not None:
        s = soak_doc
        print(
            f"soak, -workers {s['workers']:.0f}: {s['requests']:,.0f} requests at {s['achieved_rps']:,.0f} req/s "
            f"(target {s['target_rps']:,.0f}), {s['errors']:,.0f} failed; RSS {s['rss_start_mb']:.1f} MB at the "
            f"start, {s['rss_tenth_mb']:.1f} after 10%, {s['rss_end_mb']:.1f} at the end: {s['growth_pct']:+.1f}% "
            f"({s['growth_after_tenth_pct']:+.1f}% after the first 10%)"
        )


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    sizes = QUICK if args.quick else FULL
    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"throughput bench: {cpus} CPUs, load average {load:.1f}, workers {args.workers}", flush=True)
    with tempfile.TemporaryDirectory(prefix="msgscript-throughput-") as tmp:
        work_dir = args.log_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(run_nats_server(work_dir))
            echo_argv = [sys.executable, str(BENCH_DIR / "echo_responder.py"), "--url", server.url]
            echo_argv += ["--subject", ECHO_SUBJECT]
            echo = await stack.enter_async_context(run_service("echo-responder", echo_argv, work_dir, REPO_DIR))
            nc = await nats.connect(server.url, name="bench-throughput", allow_reconnect=False)
            stack.push_async_callback(nc.close)
            await wait_for_nats_target(nc, server, ECHO_SUBJECT, PAYLOAD, 1, [echo], READY_TIMEOUT_S)
            results = []
            for workers in args.workers:
                results.append(await measure_workers(nc, server, echo, workers, sizes, not args.no_http, work_dir))
            soak_doc = None
            if args.soak:
                best = max(median(results[0].daemon.windows[w].throughputs_rps) for w in WINDOWS)
                soak_doc = await soak(nc, server, results[0].workers, args.soak, best * SOAK_SHARE, work_dir)
            print_table(results, soak_doc)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s on 2 cores)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="daemon -workers counts (default: %(default)s)"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP comparison")
    parser.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=1_000_000,
        default=0,
        metavar="N",
        help="after the rounds, N hello requests (default 1,000,000) at 80%% of the measured maximum, on the first "
        "--workers count",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the logs of the started processes here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 when it ran, 1 when it could not, 130 when interrupted."""
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw[:1] == ["--client"]:
        return run_main(_client(raw[1:]))
    return run_main(main_async(parse_args(raw)))


async def _client(argv: Sequence[str]) -> int:
    await client_process(argv[0], float(argv[1]), int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
