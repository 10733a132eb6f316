"""Benchmark the msgscript daemon against bare baselines on the same machine.

Starts a private nats-server, a bare nats-py echo responder and the daemon (N worker processes), then measures
sequential request/reply latency and pipelined throughput of both, alternating between them round by round.
With --http it also compares `POST /<subject>` on the daemon's HTTP gateway with a bare aiohttp handler.
Prints a table with the ratios daemon/baseline and PASS/MISS per target; --json writes the results to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from _config import Config, parse_args
from _loop import loop_name
from _measure import Call, TargetStats, http_call, measure_latency, measure_throughput, nats_call, run_window
from _report import Ratio, format_table, format_verdicts, http_ratio, nats_ratios, summarize, to_json
from _services import (
    BenchError,
    NatsServer,
    Service,
    alive_check,
    free_port,
    probe_http,
    run_nats_server,
    run_service,
    wait_for_nats_target,
)

from msgscript.cli.server import run_async

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GATEWAY_PROBE_TIMEOUT_S = 5.0
REPLY_PREVIEW_CHARS = 160
GIT_TIMEOUT_S = 5.0
SEQUENTIAL_WARMUP = 500


@dataclass(slots=True)
class Target:
    """One side of a comparison: how to call it, which processes serve it, what was measured."""

    key: str
    label: str
    call: Call
    process_groups: Sequence[int]
    stats: TargetStats = field(default_factory=TargetStats)


def daemon_argv(config: Config, url: str, port: int, worker: int) -> list[str]:
    """The command line of one daemon worker."""
    if config.daemon_cmd is None:
        return [sys.executable, "-m", "msgscript", "-natsurl", url, "-script", config.script_dir, "-port", str(port)]
    values = {"{python}": sys.executable, "{url}": url, "{port}": str(port), "{worker}": str(worker)}
    values.update({"{subject}": config.subject, "{bench}": str(BENCH_DIR)})
    argv = shlex.split(config.daemon_cmd)
    for placeholder, value in values.items():
        argv = [arg.replace(placeholder, value) for arg in argv]
    return argv


def reply_problem(data: bytes) -> str | None:
    """The error a daemon reply (a Reply object or a JSON array of results) carries, if any."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if isinstance(doc, dict):
        if doc.get("error"):
            return str(doc["error"])
        results = doc.get("script_result") or []
    elif isinstance(doc, list):
        results = doc
    else:
        return None
    for result in results:
        if isinstance(result, dict) and result.get("error"):
            return str(result["error"])
    return None


def show_reply(who: str, data: bytes) -> None:
    """Print what a target answered, so the reader sees what is being measured."""
    text = data.decode(errors="replace")
    if len(text) > REPLY_PREVIEW_CHARS:
        text = text[:REPLY_PREVIEW_CHARS] + "..."
    print(f"  {who} answers: {text}", flush=True)
    problem = reply_problem(data)
    if problem is not None:
        print(f"  warning: {who} answers with an error, so its error path is what gets measured: {problem}")


@contextlib.asynccontextmanager
async def bounded(what: str, timeout_s: float) -> AsyncIterator[None]:
    """Limit a measurement phase to `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise BenchError(
            f"{what} did not finish within {timeout_s:g}s (use fewer requests or a larger --phase-timeout)"
        ) from None


async def compare(config: Config, targets: list[Target], count: int, latency: bool, what: str) -> None:
    """Warm up, then measure every target in each round, alternating which goes first."""
    for target in targets:
        async with bounded(f"warm-up of {target.label}", config.phase_timeout_s):
            await run_window(target.call, config.warmup, config.window)
            await run_window(target.call, min(config.warmup, SEQUENTIAL_WARMUP), 1)
    for index in range(config.rounds):
        order = targets if index % 2 == 0 else targets[::-1]
        for target in order:
            if latency:
                async with bounded(f"{what} latency of {target.label}", config.phase_timeout_s):
                    await measure_latency(target.call, config.latency_requests, target.stats)
            async with bounded(f"{what} throughput of {target.label}", config.phase_timeout_s):
                await measure_throughput(target.call, count, config.window, target.process_groups, target.stats)
        parts = []
        for target in targets:
            p50 = f"p50 {target.stats.round_p50_us[-1]:,.0f} µs, " if latency else ""
            parts.append(f"{target.key} {p50}{target.stats.throughputs_rps[-1]:,.0f} req/s")
        print(f"  round {index + 1}/{config.rounds}: " + " | ".join(parts), flush=True)


@dataclass(frozen=True, slots=True)
class Processes:
    """What a run starts: nats-server, the echo responder and the daemon workers with their HTTP ports."""

    server: NatsServer
    echo: Service
    daemons: list[Service]
    http_ports: list[int]


async def start_processes(config: Config, stack: contextlib.AsyncExitStack, work_dir: Path) -> Processes:
    """Start nats-server, the echo responder and the daemon workers; `stack` stops them."""
    server = await stack.enter_async_context(run_nats_server(work_dir))
    kept = "" if config.log_dir is not None else ", removed at exit unless --log-dir is given"
    print(f"nats-server at {server.url} (process logs in {work_dir}{kept})", flush=True)
    echo_argv = [sys.executable, str(BENCH_DIR / "echo_responder.py"), "--url", server.url]
    echo_argv += ["--subject", config.echo_subject]
    echo = await stack.enter_async_context(run_service("echo-responder", echo_argv, work_dir, REPO_DIR))
    daemons: list[Service] = []
    http_ports: list[int] = []
    for worker in range(1, config.workers + 1):
        port = free_port()
        argv = daemon_argv(config, server.url, port, worker)
        if worker == 1:
            print(f"daemon: {shlex.join(argv)}", flush=True)
        daemons.append(await stack.enter_async_context(run_service(f"daemon-{worker}", argv, work_dir, REPO_DIR)))
        http_ports.append(port)
    return Processes(server, echo, daemons, http_ports)


async def run(config: Config, work_dir: Path) -> dict[str, Any]:
    """Start everything, measure, stop everything; return the results document."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    payload = config.payload
    async with contextlib.AsyncExitStack() as stack:
        processes = await start_processes(config, stack, work_dir)
        server = processes.server
        nc = await nats.connect(server.url, name="bench-client", allow_reconnect=False)
        stack.push_async_callback(nc.close)
        ready_s = config.ready_timeout_s
        echo_reply = await wait_for_nats_target(nc, server, config.echo_subject, payload, 1, [processes.echo], ready_s)
        daemon_reply = await wait_for_nats_target(
            nc, server, config.subject, payload, config.workers, processes.daemons, ready_s
        )
        show_reply("echo", echo_reply)
        show_reply("daemon", daemon_reply)

        timeout_s = config.request_timeout_s
        targets = [
            Target(
                "echo", "echo responder", nats_call(nc, config.echo_subject, payload, timeout_s), [processes.echo.pid]
            ),
            Target(
                "daemon",
                "daemon",
                nats_call(nc, config.subject, payload, timeout_s),
                [d.pid for d in processes.daemons],
            ),
        ]
        print(
            f"NATS: {config.rounds} rounds of {config.latency_requests} sequential + {config.throughput_requests} "
            f"pipelined requests (window {config.window})",
            flush=True,
        )
        await compare(config, targets, config.throughput_requests, True, "NATS")
        echo_doc, daemon_doc = summarize(targets[0].stats), summarize(targets[1].stats)
        ratios = nats_ratios(echo_doc, daemon_doc)
        document: dict[str, Any] = {
            "nats": {
                "echo": {"subject": config.echo_subject, **echo_doc},
                "daemon": {"subject": config.subject, **daemon_doc},
            },
            "reply_sample": daemon_reply.decode(errors="replace")[:REPLY_PREVIEW_CHARS],
        }
        by_name = {r.name: r for r in ratios}
        tables = [format_table("NATS request/reply", ("echo", "daemon"), echo_doc, daemon_doc, by_name)]

        if config.http:
            http_doc, http_table, ratio = await run_http(config, stack, processes, work_dir)
            document["http"] = http_doc
            if ratio is not None:
                ratios.append(ratio)
            tables.append(http_table)

        document["ratios"] = {r.name: r.to_doc() for r in ratios}
        print("\n" + "\n\n".join(tables) + "\n\n" + format_verdicts(ratios), flush=True)
        print("stopping...", flush=True)
    return document


async def run_http(
    config: Config, stack: contextlib.AsyncExitStack, processes: Processes, work_dir: Path
) -> tuple[dict[str, Any], str, Ratio | None]:
    """The HTTP comparison; reports the gateway as not available when the daemon does not answer HTTP."""
    payload = config.payload
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)

    async def new_session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=config.window)
        return await stack.enter_async_context(aiohttp.ClientSession(connector=connector, timeout=timeout))

    daemon_session = await new_session()
    daemons = processes.daemons
    daemon_url = f"http://127.0.0.1:{processes.http_ports[0]}/{config.subject}"
    try:
        answer = await probe_http(daemon_session, daemon_url, payload, GATEWAY_PROBE_TIMEOUT_S)
        reason = None if answer.status == 200 else f"HTTP {answer.status}: {answer.body[:100]!r}"
    except BenchError as exc:
        await alive_check(daemons)()
        reason = str(exc)
    if reason is not None:
        print(f"HTTP: gateway not available ({reason})", flush=True)
        return {"available": False, "reason": reason}, "HTTP POST: gateway not available", None
    show_reply("daemon over HTTP", answer.body)

    body_file = work_dir / "http-body"
    await asyncio.to_thread(body_file.write_bytes, answer.body)
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "http_echo.py"), "--port", str(port), "--body-file", str(body_file)]
    argv += ["--content-type", answer.content_type or "application/octet-stream"]
    echo = await stack.enter_async_context(run_service("http-echo", argv, work_dir, REPO_DIR))
    echo_session = await new_session()
    echo_url = f"http://127.0.0.1:{port}/{config.subject}"
    echo_answer = await probe_http(echo_session, echo_url, payload, config.ready_timeout_s, alive_check([echo]))
    if echo_answer.status != 200:
        raise BenchError(f"the bare HTTP handler answered {echo_answer.status}\n{await echo.describe_exit()}")

    targets = [
        Target("echo", "bare aiohttp handler", http_call(echo_session, echo_url, payload), [echo.pid]),
        Target("daemon", "daemon HTTP gateway", http_call(daemon_session, daemon_url, payload), [daemons[0].pid]),
    ]
    print(f"HTTP: {config.rounds} rounds of {config.http_requests} requests, {config.window} concurrent", flush=True)
    await compare(config, targets, config.http_requests, False, "HTTP")
    echo_doc, daemon_doc = summarize(targets[0].stats), summarize(targets[1].stats)
    ratio = http_ratio(echo_doc, daemon_doc)
    title = f"HTTP POST /{config.subject} (first daemon worker only)"
    table = format_table(title, ("aiohttp", "daemon"), echo_doc, daemon_doc, {ratio.name: ratio})
    return {"available": True, "echo": echo_doc, "daemon": daemon_doc}, table, ratio


async def git_commit() -> str | None:
    """The checked-out commit of the repository, when git can tell."""
    try:
        process = await asyncio.create_subprocess_exec(
            "git",
            "rev-parse",
            "--short",
            "HEAD",
            cwd=REPO_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), GIT_TIMEOUT_S)
        return None
    commit = stdout.decode().strip()
    return commit if process.returncode == 0 and commit else None


def environment() -> dict[str, Any]:
    """Where the numbers come from."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": cpus,
        "loop": loop_name(),
    }


async def run_all(config: Config, work_dir: Path) -> dict[str, Any]:
    """The whole run: environment, measurements, and the configuration they were taken with."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    env = environment()
    env["commit"] = await git_commit()
    print(
        f"msgscript bench: {env['cpus']} CPUs, Python {env['python']} on {env['loop']}, "
        f"{config.workers} daemon worker(s), payload {config.payload!r}",
        flush=True,
    )
    results = await run(config, work_dir)
    return {"started_at": started, "environment": env, "config": config.to_doc(), **results}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets met or not), 1 when it could not, 130 when interrupted."""
    config = parse_args(__doc__ or "", argv)
    with contextlib.ExitStack() as stack:
        if config.log_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msgscript-bench-")))
        else:
            work_dir = config.log_dir
            work_dir.mkdir(parents=True, exist_ok=True)
        try:
            document = run_async(run_all(config, work_dir))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
    if config.json_path is not None:
        config.json_path.write_text(to_json(document))
        print(f"results written to {config.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
