"""What `--* lock: true` costs: request/reply latency of the same script with and without the cluster lock.

Starts a private nats-server and etcd, stores two copies of an echo script in etcd with `msgscriptcli`
(one with `--* lock: true`), starts one daemon on `-backend etcd`, and measures sequential requests to
each, alternating round by round. The locked run pays for the etcd lease, key, range and revoke.

    .venv/bin/python bench/lock.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from _measure import percentile
from _services import BenchError, free_port, run_main, run_nats_server, run_service, wait_for_nats_target

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "bench.plain": "--* subject: bench.plain\n--* name: plain\nfunction OnMessage(s, p) return p end\n",
    "bench.locked": "--* subject: bench.locked\n--* name: locked\n--* lock: true\n"
    "function OnMessage(s, p) return p end\n",
}
START_TIMEOUT_S = 20.0


async def wait_for_etcd(url: str) -> None:
    """Until etcd answers a request, via msgscriptcli (it exits 0 on an empty store)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if await msgscriptcli(url, "list", check=False) == 0:
            return
        await asyncio.sleep(0.2)
    raise BenchError(f"etcd at {url} did not answer within {START_TIMEOUT_S:g}s")


async def msgscriptcli(etcd_url: str, *args: str, check: bool = True) -> int:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "msgscriptcli"),
        "-e",
        etcd_url,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    _, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise BenchError(f"msgscriptcli {' '.join(args)} failed: {err.decode()}")
    return proc.returncode or 0


async def latencies(nc: nats.NATS, subject: str, count: int) -> list[float]:
    """Seconds per request, sent one after another."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await nc.request(subject, b"John", timeout=5)
        times.append(time.perf_counter() - start)
    return times


async def main(requests: int, rounds: int) -> int:
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    with tempfile.TemporaryDirectory(prefix="msgscript-bench-lock-") as tmp:
        work = Path(tmp)
        client, peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        etcd_argv = [
            etcd,
            "--data-dir",
            str(work / "etcd"),
            "--listen-client-urls",
            etcd_url,
            "--advertise-client-urls",
            etcd_url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
        ]
        async with run_nats_server(work) as server, run_service("etcd", etcd_argv, work, work):
            await wait_for_etcd(etcd_url)
            for subject, source in SCRIPTS.items():
                path = work / f"{subject}.lua"
                path.write_text(source)
                await msgscriptcli(etcd_url, "add", str(path))
            daemon_argv = [sys.executable, "-m", "msgscript", "-backend", "etcd", "-etcdurl", etcd_url]
            daemon_argv += ["-natsurl", server.url, "-port", str(free_port()), "-log", "warn"]
            async with run_service("msgscript", daemon_argv, work, ROOT) as daemon:
                nc = await nats.connect(server.url)
                try:
                    for subject in SCRIPTS:
                        await wait_for_nats_target(nc, server, subject, b"John", 1, [daemon], START_TIMEOUT_S)
                        await latencies(nc, subject, 20)  # warm-up
                    results: dict[str, list[float]] = {subject: [] for subject in SCRIPTS}
                    order = list(SCRIPTS)
                    for _ in range(rounds):
                        for subject in order:
                            results[subject] += await latencies(nc, subject, requests)
                        order.reverse()
                finally:
                    await nc.close()
    print(f"{'script':<14} {'p50':>9} {'p99':>9} {'mean':>9}   ({rounds} rounds x {requests} requests)")
    for subject, values in results.items():
        values.sort()
        p50, p99, mean = (v * 1e6 for v in (percentile(values, 0.5), percentile(values, 0.99), statistics.mean(values)))
        print(f"{subject:<14} {p50:>7.0f}µs {p99:>7.0f}µs {mean:>7.0f}µs")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per script per round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    return run_main(main(options.requests, options.rounds))


if __name__ == "__main__":
    sys.exit(cli())
