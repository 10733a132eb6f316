"""The `msgscript` command: the daemon, with the Go server's flags (single or double dash) and ours."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import click

from msgscript import __version__, _libc, config
from msgscript.cli.options import DURATION, GO_BOOL, SIZE, CommandFailed, go_flag, read_secret
from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.logs import configure_logging, parse_level
from msgscript.supervisor import WorkerLink, supervise

T = TypeVar("T")


def core_count() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


class WorkersType(click.ParamType):  # type: ignore[type-arg]
    """`-workers`: a positive count, or `auto` for one per core."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Parse the count; `auto` is the number of cores."""
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text == "auto":
            return core_count()
        if not text.isdecimal() or int(text) < 1:
            self.fail(f"{value!r} is not a positive number of workers or auto", param, ctx)
        return int(text)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@click.command(
    context_settings={"help_option_names": ["-h", "-help", "--help"], "max_content_width": 120, "terminal_width": 120}
)
@go_flag("backend", default=config.DEFAULT_BACKEND, show_default=True, help="Script store: file or etcd.")
@go_flag(
    "etcdurl",
    default=config.DEFAULT_ETCD_URL,
    show_default=True,
    help="Comma-separated etcd endpoints; ETCD_ENDPOINTS, when set, overrides them (as in Go).",
)
@go_flag(
    "natsurl",
    default="",
    envvar="NATS_URL",
    show_envvar=True,
    help="NATS URL; without one an embedded NATS server runs on "
    f"{config.EMBEDDED_NATS_HOST}:{config.EMBEDDED_NATS_PORT}.",
)
@go_flag(
    "natscreds",
    "-nats-creds",
    "--nats-creds",
    default=config.NO_FILE,
    envvar="NATS_CREDS",
    show_envvar=True,
    metavar="FILE",
    help="NATS credentials file (user JWT and NKey seed, .creds).",
)
@go_flag(
    "nats-nkey", default=config.NO_FILE, envvar="NATS_NKEY", show_envvar=True, metavar="FILE", help="NKey seed file."
)
@go_flag("nats-user", default=config.NO_CREDENTIAL, envvar="NATS_USER", show_envvar=True, help="NATS user name.")
@go_flag(
    "nats-password",
    default=config.NO_CREDENTIAL,
    envvar="NATS_PASSWORD",
    show_envvar=True,
    help="NATS password (prefer the environment variable: flags show in ps).",
)
@go_flag("nats-token", default=config.NO_CREDENTIAL, envvar="NATS_TOKEN", show_envvar=True, help="NATS token.")
@go_flag(
    "nats-tls-ca",
    default=config.NO_FILE,
    envvar="NATS_CA",
    show_envvar=True,
    metavar="FILE",
    help="CA certificates that sign the NATS server's (turns TLS on; default: the system's).",
)
@go_flag(
    "nats-tls-cert",
    default=config.NO_FILE,
    envvar="NATS_CERT",
    show_envvar=True,
    metavar="FILE",
    help="Client certificate for mutual TLS with NATS.",
)
@go_flag(
    "nats-tls-key",
    default=config.NO_FILE,
    envvar="NATS_KEY",
    show_envvar=True,
    metavar="FILE",
    help="Key of the NATS client certificate.",
)
@go_flag(
    "etcd-ca",
    default=config.NO_FILE,
    envvar="ETCDCTL_CACERT",
    show_envvar=True,
    metavar="FILE",
    help="CA certificates that sign etcd's (turns TLS on; https:// endpoints do too).",
)
@go_flag(
    "etcd-cert",
    default=config.NO_FILE,
    envvar="ETCDCTL_CERT",
    show_envvar=True,
    metavar="FILE",
    help="Client certificate for etcd.",
)
@go_flag(
    "etcd-key",
    default=config.NO_FILE,
    envvar="ETCDCTL_KEY",
    show_envvar=True,
    metavar="FILE",
    help="Key of the etcd client certificate.",
)
@go_flag(
    "etcd-user",
    default=config.NO_CREDENTIAL,
    envvar="ETCDCTL_USER",
    show_envvar=True,
    help="etcd user name, or user:password as etcdctl takes it.",
)
@go_flag(
    "etcd-password",
    default=config.NO_CREDENTIAL,
    envvar="ETCDCTL_PASSWORD",
    show_envvar=True,
    help="etcd password (prefer the environment variable: flags show in ps).",
)
@go_flag(
    "embedded-nats-port",
    type=click.IntRange(min=1, max=65535),
    default=config.EMBEDDED_NATS_PORT,
    show_default=True,
    help="Port of the embedded NATS server (used when no NATS URL is given).",
)
@go_flag("log", "log_level", default=config.DEFAULT_LOG_LEVEL, show_default=True, help="Log level.")
@go_flag("port", type=int, default=config.DEFAULT_HTTP_PORT, show_default=True, help="HTTP gateway port.")
@go_flag("plugin", default="", help="Directory of Lua-module plugins.")
@go_flag("library", default="", help="Library directory (file backend).")
@go_flag("script", default=config.DEFAULT_SCRIPT_DIR, show_default=True, help="Script directory (file backend).")
@go_flag(
    "watch",
    type=GO_BOOL,
    is_flag=False,
    flag_value=True,
    default=True,
    show_default=True,
    help="Follow the script and library directories (file backend): an edited script serves without a restart; "
    "-watch=false reads them once.",
)
@go_flag(
    "queue-group",
    default=config.DEFAULT_QUEUE_GROUP,
    show_default=True,
    help="NATS queue group shared by instances; empty means every instance runs every message.",
)
@go_flag(
    "stream",
    default=config.DEFAULT_STREAM,
    show_default=True,
    help="JetStream stream that captures the durable scripts' subjects (created when missing).",
)
@go_flag(
    "dlq-prefix",
    default=config.DEFAULT_DLQ_PREFIX,
    show_default=True,
    help="Subject prefix of the dead letters of durable scripts (<prefix>.<subject>).",
)
@go_flag(
    "timeout",
    "script_timeout_s",
    type=DURATION,
    default=config.DEFAULT_SCRIPT_TIMEOUT,
    show_default=True,
    help="Default script timeout (Go duration); `--* timeout:` overrides it per script.",
)
@go_flag(
    "max-memory",
    "max_memory_bytes",
    type=SIZE,
    default=str(config.DEFAULT_MAX_MEMORY_BYTES),
    show_default=True,
    help="Memory cap of one Lua execution or WASM module (bytes, or 64MiB, 512k...).",
)
@go_flag(
    "max-payload",
    "max_payload_bytes",
    type=SIZE,
    default=str(config.DEFAULT_MAX_PAYLOAD_BYTES),
    show_default=True,
    help="Largest HTTP request body accepted.",
)
@go_flag(
    "max-in-flight",
    type=click.IntRange(min=1),
    default=config.DEFAULT_MAX_IN_FLIGHT,
    show_default=True,
    help="NATS messages and HTTP requests handled at once; more messages wait (back-pressure), more requests get 503.",
)
@go_flag(
    "lua-threads",
    type=click.IntRange(min=1),
    default=config.DEFAULT_LUA_THREADS,
    show_default=True,
    help="Lua worker threads (scripts waiting on I/O hold one).",
)
@go_flag(
    "wasm-threads",
    type=click.IntRange(min=1),
    default=config.DEFAULT_WASM_THREADS,
    show_default=True,
    help="WASM modules running at once; more wait.",
)
@go_flag(
    "podman-concurrency",
    type=click.IntRange(min=1),
    default=config.DEFAULT_PODMAN_CONCURRENCY,
    show_default=True,
    help="Containers running at once; more wait.",
)
@go_flag(
    "grace-period",
    "grace_period_s",
    type=DURATION,
    default=config.DEFAULT_GRACE_PERIOD,
    show_default=True,
    help="On shutdown, how long in-flight work may take to finish.",
)
@go_flag(
    "workers",
    type=WorkersType(),
    metavar="N|auto",
    default=str(config.DEFAULT_WORKERS),
    show_default=True,
    help="Worker processes, each with its own NATS connection in the queue group, sharing the HTTP port; "
    f"auto: one per core. Scripts see their worker's index in {config.WORKER_VARIABLE}.",
)
@go_flag("http-host", default=config.DEFAULT_HTTP_HOST, show_default=True, help="HTTP gateway address.")
@go_flag(
    "browse",
    type=click.Choice(config.BROWSE_MODES),
    default=config.DEFAULT_BROWSE,
    show_default=True,
    help="Who gets the /_/ pages (they show script source) and the internal subjects over HTTP: "
    "loopback clients, everyone, or no one.",
)
@go_flag("no-browse", is_flag=True, default=False, help="The same as -browse off.")
@go_flag(
    "http-token",
    default=config.NO_CREDENTIAL,
    metavar="FILE|env:VAR",
    help="Require Authorization: Bearer <token> on every HTTP route but /healthz and /readyz; the token is read "
    "once from FILE (trailing newline dropped) or from the environment variable VAR.",
)
@go_flag("no-metrics", is_flag=True, default=False, help="Neither record nor serve Prometheus metrics (/metrics).")
@go_flag(
    "production",
    is_flag=True,
    default=False,
    envvar=config.PRODUCTION_VARIABLE,
    show_envvar=True,
    help=f"Production mode: scripts see {config.PRODUCTION_VARIABLE}=1, and web.lua answers a failing route "
    "with a generic error instead of the error's text.",
)
@click.version_option(__version__, "-version", "--version", prog_name="msgscript", message="%(prog)s %(version)s")
def command(
    backend: str,
    etcdurl: str,
    natsurl: str,
    natscreds: str,
    nats_nkey: str,
    nats_user: str,
    nats_password: str,
    nats_token: str,
    nats_tls_ca: str,
    nats_tls_cert: str,
    nats_tls_key: str,
    etcd_ca: str,
    etcd_cert: str,
    etcd_key: str,
    etcd_user: str,
    etcd_password: str,
    embedded_nats_port: int,
    log_level: str,
    port: int,
    plugin: str,
    library: str,
    script: str,
    watch: bool,
    queue_group: str,
    stream: str,
    dlq_prefix: str,
    script_timeout_s: float,
    max_memory_bytes: int,
    max_payload_bytes: int,
    max_in_flight: int,
    lua_threads: int,
    wasm_threads: int,
    podman_concurrency: int,
    grace_period_s: float,
    workers: int,
    http_host: str,
    browse: str,
    no_browse: bool,
    http_token: str,
    no_metrics: bool,
    production: bool,
) -> None:
    """Run Lua, WASM and Podman functions when NATS messages or HTTP requests arrive."""
    try:
        level = parse_level(log_level)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from exc
    if os.environ.get("DEBUG"):
        level = logging.DEBUG
    configure_logging(level)
    token = ""
    if http_token:
        try:
            token = read_secret(http_token, os.environ, "-http-token")
        except ConfigError as exc:
            raise CommandFailed(str(exc)) from exc
    env = dict(os.environ)
    # As in Go: a non-empty ETCD_ENDPOINTS wins over -etcdurl, and with the etcd backend the endpoints in
    # use are exported as ETCD_ENDPOINTS (to plugins, os.getenv and child processes).
    etcdurl = env.get("ETCD_ENDPOINTS") or etcdurl
    if backend == "etcd":
        env["ETCD_ENDPOINTS"] = os.environ["ETCD_ENDPOINTS"] = etcdurl
    # Scripts (os.getenv) and the libraries they require learn of -production from the environment.
    env.pop(config.PRODUCTION_VARIABLE, None)
    os.environ.pop(config.PRODUCTION_VARIABLE, None)
    if production:
        env[config.PRODUCTION_VARIABLE] = os.environ[config.PRODUCTION_VARIABLE] = "1"
    settings = Settings(
        backend=backend,
        etcd_endpoints=tuple(e.strip() for e in etcdurl.split(",") if e.strip()),
        nats_url=natsurl,
        nats_creds_file=natscreds,
        nats_nkey_file=nats_nkey,
        nats_user=nats_user,
        nats_password=nats_password,
        nats_token=nats_token,
        nats_tls_ca_file=nats_tls_ca,
        nats_tls_cert_file=nats_tls_cert,
        nats_tls_key_file=nats_tls_key,
        etcd_tls_ca_file=etcd_ca,
        etcd_tls_cert_file=etcd_cert,
        etcd_tls_key_file=etcd_key,
        etcd_user=etcd_user,
        etcd_password=etcd_password,
        embedded_nats_port=embedded_nats_port,
        log_level=log_level,
        http_port=port,
        http_host=http_host,
        plugin_dir=plugin,
        library_dir=library,
        script_dir=script,
        watch=watch,
        queue_group=queue_group,
        stream=stream,
        dlq_prefix=dlq_prefix,
        script_timeout_s=script_timeout_s,
        max_memory_bytes=max_memory_bytes,
        max_payload_bytes=max_payload_bytes,
        max_in_flight=max_in_flight,
        lua_threads=lua_threads,
        wasm_threads=wasm_threads,
        podman_concurrency=podman_concurrency,
        grace_period_s=grace_period_s,
        workers=workers,
        browse=config.BROWSE_OFF if no_browse else browse,
        http_token=token,
        metrics=not no_metrics,
        production=production,
        env=env,
    )
    # Inherited by the worker processes the supervisor forks.
    _libc.fix_mmap_threshold()
    try:
        status = supervise(settings, run_worker)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from exc
    sys.exit(status)


def run_worker(settings: Settings, listeners: Sequence[socket.socket], link: WorkerLink) -> int:
    """The worker process's main: the daemon proper, until it drains; returns the exit status.

    A worker that cannot start tells the supervisor why (which reports it) and returns 1.
    """
    from msgscript import __version__, tracing
    from msgscript.app import serve

    if settings.workers > 1:
        configure_logging(logging.getLogger("msgscript").level, worker=settings.env.get(config.WORKER_VARIABLE, "0"))
    try:
        with tracing.configured(settings.env, __version__):
            run_async(serve(settings, listeners=listeners, link=link))
    except ConfigError as exc:
        link.failed(str(exc))
        return 1
    return 0


def main() -> None:
    """Console entry point of `msgscript`."""
    command(prog_name="msgscript")
