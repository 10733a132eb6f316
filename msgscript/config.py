"""Settings of the daemon and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from msgscript.durations import parse_duration

DEFAULT_BACKEND = "file"
DEFAULT_CLI_BACKEND = "etcd"
"""The store `msgscriptcli` works on without `-b` (the Go CLI's)."""
DEFAULT_ETCD_PORT = 2379
DEFAULT_ETCD_URL = f"localhost:{DEFAULT_ETCD_PORT}"
DEFAULT_LOG_LEVEL = "info"
DEFAULT_CLI_LOG_LEVEL = "warning"
DEFAULT_HTTP_PORT = 7643
DEFAULT_HTTP_HOST = "0.0.0.0"
DEFAULT_SCRIPT_DIR = "."
DEFAULT_QUEUE_GROUP = "msgscript"
DEFAULT_STREAM = "MSGSCRIPT"
"""The JetStream stream the daemon keeps for its durable scripts (docs/durable.md)."""
DEFAULT_DLQ_PREFIX = "msgscript.dlq"
NATS_PORT = 4222
"""The port NATS clients connect to by default."""
DEFAULT_NATS_URL = f"nats://localhost:{NATS_PORT}"
"""Where `msgscriptcli` finds NATS (the daemon starts its embedded server when given no URL)."""
EMBEDDED_NATS_HOST = "127.0.0.1"
EMBEDDED_NATS_PORT = NATS_PORT
DEFAULT_SCRIPT_TIMEOUT = "2m"
"""The default script deadline as a Go duration, the way `-timeout` shows it."""
DEFAULT_SCRIPT_TIMEOUT_S = parse_duration(DEFAULT_SCRIPT_TIMEOUT)
DEFAULT_MAX_MEMORY_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_LUA_THREADS = 64
DEFAULT_WASM_THREADS = min(32, 4 * (os.cpu_count() or 1))
DEFAULT_PODMAN_CONCURRENCY = 8
DEFAULT_GRACE_PERIOD = "30s"
"""How long in-flight work may take to finish on shutdown, as a Go duration (`-grace-period`)."""
DEFAULT_GRACE_PERIOD_S = parse_duration(DEFAULT_GRACE_PERIOD)
DEFAULT_HTTP_TIMEOUT_S = 5.0
DEFAULT_HTTP_HEADER_TIMEOUT_S = 10.0
"""How long a client may take to send a request's line and headers (from connecting, or from its first byte)."""
DEFAULT_HTTP_BODY_TIMEOUT_S = 30.0
"""How long a client may take to send a request's body, from the end of its headers."""
BROWSE_LOCAL = "local"
BROWSE_PUBLIC = "public"
BROWSE_OFF = "off"
BROWSE_MODES = (BROWSE_LOCAL, BROWSE_PUBLIC, BROWSE_OFF)
"""Who sees the browse pages and the internal subjects over HTTP: loopback clients, everyone, no one."""
DEFAULT_BROWSE = BROWSE_LOCAL
NATS_CONNECT_TIMEOUT_S = 5.0
NO_FILE = ""
"""The value of a file setting (credentials, CA, certificate, key) that is not given."""
NO_CREDENTIAL = ""
"""The value of a user, password or token setting that is not given."""
DEFAULT_WORKERS = 1
WORKER_VARIABLE = "MSGSCRIPT_WORKER"
"""Set in each worker process's environment to its index, 0 to `-workers` - 1 (os.getenv tells workers apart)."""
PRODUCTION_VARIABLE = "MSGSCRIPT_PRODUCTION"
"""Set to 1 in the daemon's environment under `-production`: libraries/web.lua then hides error texts."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs to start, frozen after the command line is parsed."""

    backend: str = DEFAULT_BACKEND
    etcd_endpoints: tuple[str, ...] = (DEFAULT_ETCD_URL,)
    nats_url: str = ""
    log_level: str = DEFAULT_LOG_LEVEL
    http_port: int = DEFAULT_HTTP_PORT
    http_host: str = DEFAULT_HTTP_HOST
    plugin_dir: str = ""
    library_dir: str = ""
    script_dir: str = DEFAULT_SCRIPT_DIR
    embedded_nats_port: int = EMBEDDED_NATS_PORT
    queue_group: str = DEFAULT_QUEUE_GROUP
    stream: str = DEFAULT_STREAM
    dlq_prefix: str = DEFAULT_DLQ_PREFIX
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    lua_threads: int = DEFAULT_LUA_THREADS
    wasm_threads: int = DEFAULT_WASM_THREADS
    podman_concurrency: int = DEFAULT_PODMAN_CONCURRENCY
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    # Worker processes serving NATS and HTTP (`-workers`); above one, /metrics series carry a `worker` label.
    workers: int = DEFAULT_WORKERS
    browse: str = DEFAULT_BROWSE
    # Every HTTP route but /healthz and /readyz wants `Authorization: Bearer <http_token>` when it is set.
    http_token: str = field(default="", repr=False)
    http_header_timeout_s: float = DEFAULT_HTTP_HEADER_TIMEOUT_S
    http_body_timeout_s: float = DEFAULT_HTTP_BODY_TIMEOUT_S
    # Prometheus metrics recorded and served on /metrics (behind http_token when it is set).
    metrics: bool = True
    # The file backend follows its directories (inotify) and serves changed scripts without a restart.
    watch: bool = True
    # `-production`: the command exports PRODUCTION_VARIABLE=1 to the scripts' environment (os.getenv).
    production: bool = False
    # Connecting to a secured NATS (see docs/security.md): at most one way to authenticate, and TLS when
    # the URL is tls:// or any TLS file is given. Secrets stay out of repr().
    nats_creds_file: str = NO_FILE
    nats_nkey_file: str = NO_FILE
    nats_user: str = NO_CREDENTIAL
    nats_password: str = field(default=NO_CREDENTIAL, repr=False)
    nats_token: str = field(default=NO_CREDENTIAL, repr=False)
    nats_tls_ca_file: str = NO_FILE
    nats_tls_cert_file: str = NO_FILE
    nats_tls_key_file: str = NO_FILE
    # Connecting to a secured etcd: TLS when an endpoint is https:// or any TLS file is given; etcd_user may be
    # `user:password`, as etcdctl's --user.
    etcd_tls_ca_file: str = NO_FILE
    etcd_tls_cert_file: str = NO_FILE
    etcd_tls_key_file: str = NO_FILE
    etcd_user: str = field(default=NO_CREDENTIAL, repr=False)
    etcd_password: str = field(default=NO_CREDENTIAL, repr=False)
    # The environment handed to plugins (Go's Preload(L, envs)); filled by the CLI.
    env: dict[str, str] = field(default_factory=dict, compare=False)
