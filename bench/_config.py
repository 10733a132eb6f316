"""The command line of the benchmark: options, with the sizes of a full run and of --quick."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Sizes of a full run (about 1-2 minutes on 2 cores) and of --quick (about 15 s).
FULL_SIZES = {
    "rounds": 5,
    "latency_requests": 10000,
    "throughput_requests": 50000,
    "http_requests": 10000,
    "warmup": 2000,
}
QUICK_SIZES = {
    "rounds": 2,
    "latency_requests": 2000,
    "throughput_requests": 10000,
    "http_requests": 2000,
    "warmup": 500,
}

DAEMON_CMD_HELP = """\
replace the daemon command line (split like a shell would); placeholders: {python} this interpreter,
{url} the NATS URL, {subject} the --subject, {port} a free HTTP port for this worker,
{worker} the worker number (1..N), {bench} the bench/ directory. Example, to check the harness
against a second echo responder:
  --daemon-cmd "{python} {bench}/echo_responder.py --url {url} --subject {subject}"
"""


@dataclass(frozen=True, slots=True)
class Config:
    """The options of one run."""

    rounds: int
    latency_requests: int
    throughput_requests: int
    http_requests: int
    warmup: int
    window: int
    workers: int
    subject: str
    payload: bytes
    echo_subject: str
    script_dir: str
    http: bool
    daemon_cmd: str | None
    request_timeout_s: float
    ready_timeout_s: float
    phase_timeout_s: float
    json_path: Path | None
    log_dir: Path | None

    def to_doc(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "rounds": self.rounds,
            "latency_requests": self.latency_requests,
            "throughput_requests": self.throughput_requests,
            "http_requests": self.http_requests if self.http else None,
            "warmup": self.warmup,
            "window": self.window,
            "workers": self.workers,
            "subject": self.subject,
            "payload": self.payload.decode(errors="replace"),
            "echo_subject": self.echo_subject,
            "daemon_cmd": self.daemon_cmd,
        }


def positive_int(text: str) -> int:
    """An argparse type for counts."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def parse_args(description: str, argv: Sequence[str] | None = None) -> Config:
    """The command line, with --quick choosing smaller sizes for anything not given explicitly."""
    parser = argparse.ArgumentParser(
        prog="python bench/run.py", description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    sizes = parser.add_argument_group("sizes (defaults: full run / --quick)")
    sizes.add_argument("--quick", action="store_true", help="a smoke run of about 15 s")
    for name, help_text in (
        ("rounds", "rounds; each measures both targets, alternating which goes first"),
        ("latency-requests", "sequential requests per target and round"),
        ("throughput-requests", "pipelined NATS requests per target and round"),
        ("http-requests", "HTTP requests per target and round (with --http)"),
        ("warmup", "unmeasured pipelined requests per target before the first round"),
    ):
        key = name.replace("-", "_")
        sizes.add_argument(f"--{name}", type=positive_int, help=f"{help_text} ({FULL_SIZES[key]} / {QUICK_SIZES[key]})")
    sizes.add_argument(
        "--window", type=positive_int, default=64, help="requests in flight when pipelined (%(default)s)"
    )

    what = parser.add_argument_group("what is measured")
    what.add_argument(
        "--workers", type=positive_int, default=1, help="daemon processes in the queue group (%(default)s)"
    )
    what.add_argument("--subject", default="funcs.hello", help="daemon subject (%(default)s)")
    what.add_argument("--payload", default="John", help="request payload for both targets (%(default)s)")
    what.add_argument("--echo-subject", default="bench.echo", help="subject of the echo responder (%(default)s)")
    what.add_argument("--script-dir", default="examples", help="daemon -script directory (%(default)s)")
    what.add_argument("--http", action="store_true", help="also compare the HTTP gateway with a bare aiohttp handler")
    what.add_argument("--daemon-cmd", metavar="CMD", help=DAEMON_CMD_HELP)

    limits = parser.add_argument_group("timeouts and output")
    limits.add_argument("--request-timeout", type=float, default=5.0, help="seconds per request (%(default)s)")
    limits.add_argument(
        "--ready-timeout", type=float, default=20.0, help="seconds for a target to answer (%(default)s)"
    )
    limits.add_argument(
        "--phase-timeout", type=float, default=120.0, help="seconds for one measurement phase (%(default)s)"
    )
    limits.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    limits.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="keep the logs of the started processes in DIR (default: a temp dir)",
    )
    args = parser.parse_args(argv)

    chosen = QUICK_SIZES if args.quick else FULL_SIZES
    size = {key: getattr(args, key) if getattr(args, key) is not None else default for key, default in chosen.items()}
    return Config(
        **size,
        window=args.window,
        workers=args.workers,
        subject=args.subject,
        payload=args.payload.encode(),
        echo_subject=args.echo_subject,
        script_dir=args.script_dir,
        http=args.http,
        daemon_cmd=args.daemon_cmd,
        request_timeout_s=args.request_timeout,
        ready_timeout_s=args.ready_timeout,
        phase_timeout_s=args.phase_timeout,
        json_path=args.json,
        log_dir=args.log_dir,
    )
