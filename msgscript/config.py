"""Settings of the daemon and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_BACKEND = "file"
DEFAULT_ETCD_URL = "localhost:2379"
DEFAULT_LOG_LEVEL = "info"
DEFAULT_HTTP_PORT = 7643
DEFAULT_HTTP_HOST = "0.0.0.0"
DEFAULT_SCRIPT_DIR = "."
DEFAULT_QUEUE_GROUP = "msgscript"
EMBEDDED_NATS_HOST = "127.0.0.1"
EMBEDDED_NATS_PORT = 4222
DEFAULT_SCRIPT_TIMEOUT_S = 120.0
DEFAULT_MAX_MEMORY_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_LUA_THREADS = 64
DEFAULT_WASM_THREADS = min(32, 4 * (os.cpu_count() or 1))
DEFAULT_PODMAN_CONCURRENCY = 8
DEFAULT_GRACE_PERIOD_S = 30.0
DEFAULT_HTTP_TIMEOUT_S = 5.0
NATS_CONNECT_TIMEOUT_S = 5.0


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
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    lua_threads: int = DEFAULT_LUA_THREADS
    wasm_threads: int = DEFAULT_WASM_THREADS
    podman_concurrency: int = DEFAULT_PODMAN_CONCURRENCY
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    browse: bool = True
    # The environment handed to plugins (Go's Preload(L, envs)); filled by the CLI.
    env: dict[str, str] = field(default_factory=dict, compare=False)
