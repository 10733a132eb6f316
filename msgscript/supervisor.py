"""The supervisor: the `msgscript` process that owns what must outlive a worker, and keeps `-workers` running.

The daemon is a supervisor and its workers. The supervisor parses nothing and runs no script: it starts the
embedded NATS server when one is needed, binds the HTTP port, then forks one worker (msgscript.app) per slot
(`settings.workers` of them), which does all the work, and watches them. Each worker has its own NATS
connection in the queue group and its own store; it learns its slot's index from WORKER_VARIABLE.

- With one slot the workers accept on one listening socket. With several, each slot has sockets of its own
  on the same port (SO_REUSEPORT): the kernel spreads new connections evenly over the slots, where workers
  sharing one socket would take them in bursts, whichever woke first. A slot's sockets outlive its workers;
  while the slot has none (a worker died and waits for its restart) they stop listening, so that new
  connections go to the other slots, and listen again just before the next worker of the slot is forked.
- SIGTERM, SIGINT, SIGHUP and SIGQUIT go to every worker, which drains; the supervisor then stops the
  embedded NATS server and exits 0 when every worker stopped cleanly, else with a failed worker's status.
- A worker that dies unexpectedly is started again, after a backoff of its slot's that doubles up to
  RESTART_MAX_S. A worker that cannot start says why over its channel; when one fails so before any worker
  was ever ready, the supervisor stops and raises that reason as a ConfigError, for the command to print.
- A worker can ask to be replaced: when an execution stays stuck in a C call long past its deadline, only
  a new process gets its thread back. The supervisor starts a successor on the same NATS queue group and
  the same (inherited) listening socket; once the successor is ready, the old worker is sent SIGTERM and
  drains as on shutdown, so nothing in flight is lost.

The supervisor is single-threaded and never runs an event loop, so forking it is safe; a worker dies with
it (PR_SET_PDEATHSIG), so killing the supervisor stops the daemon. Replacement works per slot: a successor
takes its predecessor's slot, index and sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from msgscript import _libc
from msgscript.config import WORKER_VARIABLE, Settings
from msgscript.embedded_nats import EmbeddedNats
from msgscript.errors import ConfigError

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
"""A worker ready for this long resets the restart backoff."""
KILL_MARGIN_S = 15.0
"""Past the grace period plus this, workers that have not exited after SIGTERM are killed."""
_READY = b"R"
_REPLACE = b"X"
_FAILED = b"F"
"""Followed by the reason, up to the end of the channel: the worker could not start and exits."""
_CHANNEL_READ_BYTES = 4096

WorkerMain = Callable[[Settings, Sequence[socket.socket], "WorkerLink"], int]
"""Runs the worker in the forked process and returns its exit status."""


class WorkerLink:
    """The worker's end of its channel to the supervisor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def ready(self) -> None:
        """Tell the supervisor the worker serves (NATS subscriptions and HTTP are up)."""
        self._send(_READY)

    def ask_replacement(self, reason: str) -> None:
        """Ask for a fresh worker to take over; this one will then be asked to drain."""
        log.warning("asking the supervisor for a fresh worker process: %s", reason)
        self._send(_REPLACE)

    def failed(self, reason: str) -> None:
        """Tell the supervisor why the worker could not start; the worker exits right after, and the supervisor
        reports the reason (nothing else may be sent)."""
        self._send(_FAILED + reason.encode("utf-8", "replace"))

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        with contextlib.suppress(OSError):
            while view:
                view = view[os.write(self._fd, view) :]


class _State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"


@dataclasses.dataclass
class _Worker:
    pid: int
    channel: int
    slot: int
    state: _State = _State.STARTING
    ready_at: float = 0.0
    replaces: _Worker | None = None
    failure: bytearray | None = None
    """What the worker said after _FAILED: why it could not start."""


def bind_listeners(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for the HTTP gateway on every address `host` resolves to (all of them for ""); with
    `reuse_port`, other sockets of this user may bind the same addresses and share their connections.

    Raises:
        ConfigError: an address cannot be bound (in use, not local, unresolvable).
    """
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"failed to start the HTTP server on {where}: {exc}") from exc
    listeners: list[socket.socket] = []
    seen: set[tuple[object, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in listeners:
            sock.close()
        raise ConfigError(f"failed to start the HTTP server on {where}: {exc}") from exc
    return listeners


class Supervisor:
    """Runs workers for one daemon; see the module docstring."""

    def __init__(self, settings: Settings, worker_main: WorkerMain) -> None:
        self._settings = settings
        self._worker_main = worker_main
        self._workers: dict[int, _Worker] = {}
        self._current: dict[int, _Worker] = {}
        """The worker serving each slot (a successor becomes it once ready); a slot waiting for a restart has none."""
        self._listeners: list[list[socket.socket]] = []
        """Each slot's listening sockets."""
        self._listening: list[bool] = []
        self._nats: EmbeddedNats | None = None
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._stopping = False
        self._stop_deadline = 0.0
        self._status: int | None = None
        self._restart_at: dict[int, float] = {}
        self._backoff_s: dict[int, float] = {}
        self._ever_ready = False
        self._start_failure = ""
        self._received: set[int] = set()

    def run(self) -> int:
        """Run until shutdown; returns the exit status (0, or a worker's that failed).

        Raises:
            ConfigError: the embedded NATS server or the HTTP port could not be had, or the first worker could not
                start (the message is its reason).
        """
        self._install_signals()
        try:
            status = self._run()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(-1)
            for fd in (self._wakeup_r, self._wakeup_w):
                os.close(fd)
            self._selector.close()
            for sock in {sock for slot in self._listeners for sock in slot}:
                sock.close()
            if self._nats is not None:
                self._nats.stop()
        if self._start_failure:
            raise ConfigError(self._start_failure)
        return status

    def _run(self) -> int:
        settings = self._settings
        if not settings.nats_url:
            self._nats = EmbeddedNats(settings.embedded_nats_port)
            if not self._nats.start(should_stop=self._signalled):
                return 0
            self._settings = dataclasses.replace(settings, nats_url=self._nats.url)
        self._listeners = self._bind(settings)
        self._listening = [True] * settings.workers
        for slot in range(settings.workers):
            self._spawn(slot, replaces=None)
        while self._status is None or self._workers:
            self._wait_for_events()
            if self._signalled():
                self._begin_stop()
            if self._stopping and time.monotonic() > self._stop_deadline:
                for worker in self._workers.values():
                    log.error("%s did not stop in time, killing it", self._name(worker))
                    self._kill(worker.pid, signal.SIGKILL)
                self._stop_deadline = math.inf
            now = time.monotonic()
            for slot, restart_at in list(self._restart_at.items()):
                if not self._stopping and slot not in self._current and restart_at <= now:
                    del self._restart_at[slot]
                    self._spawn(slot, replaces=None)
        return self._status

    @staticmethod
    def _bind(settings: Settings) -> list[list[socket.socket]]:
        """The sockets of every slot; all bound before any worker starts, so that a busy port fails the start."""
        if settings.workers == 1:
            return [bind_listeners(settings.http_host, settings.http_port)]
        slots = [bind_listeners(settings.http_host, settings.http_port, reuse_port=True)]
        # Port 0 (any free port) is resolved by the first slot; the others share the port it got.
        port = slots[0][0].getsockname()[1] if slots[0] else settings.http_port
        try:
            for _ in range(1, settings.workers):
                slots.append(bind_listeners(settings.http_host, port, reuse_port=True))
        except ConfigError:
            for sock in (sock for slot in slots for sock in slot):
                sock.close()
            raise
        return slots

    def _set_listening(self, slot: int, listening: bool) -> None:
        """Stop or resume listening on a slot's own sockets (SO_REUSEPORT only: with one slot they stay as they are).

        A listening socket that is shut down leaves the port's group, its queued connections are reset, and new ones
        go to the other slots; it can listen again.
        """
        if self._settings.workers == 1 or self._listening[slot] == listening:
            return
        self._listening[slot] = listening
        for sock in self._listeners[slot]:
            with contextlib.suppress(OSError):
                if listening:
                    sock.listen(socket.SOMAXCONN)
                else:
                    sock.shutdown(socket.SHUT_RDWR)

    def _name(self, worker: _Worker) -> str:
        """How the log names a worker: its pid, and its index when there are several."""
        if self._settings.workers == 1:
            return f"worker pid={worker.pid}"
        return f"worker pid={worker.pid} index={worker.slot}"

    # Signals: the handlers only note them (the start-up wait for the embedded NATS server reads that); in
    # the loop, the wakeup fd brings each signal's number.

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for sig in (*SHUTDOWN_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: self._received.add(signum))
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)

    def _signalled(self) -> bool:
        return not self._received.isdisjoint(SHUTDOWN_SIGNALS)

    def _wait_for_events(self) -> None:
        wake_at = min(self._restart_at.values(), default=math.inf)
        if self._stopping:
            wake_at = self._stop_deadline
        timeout_s = None if wake_at == math.inf else max(0.0, wake_at - time.monotonic())
        for key, _ in self._selector.select(timeout_s):
            if key.fd == self._wakeup_r:
                with contextlib.suppress(BlockingIOError):
                    self._received.update(os.read(key.fd, 512))
                self._reap()
            else:
                self._read_channel(key.fd)

    # Workers.

    def _spawn(self, slot: int, replaces: _Worker | None) -> None:
        self._set_listening(slot, True)
        channel_r, channel_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._become_worker(slot, channel_w)
        os.close(channel_w)
        os.set_blocking(channel_r, False)
        worker = _Worker(pid=pid, channel=channel_r, slot=slot, replaces=replaces)
        self._workers[pid] = worker
        if replaces is None:
            self._current[slot] = worker
        self._selector.register(channel_r, selectors.EVENT_READ)
        log.info("started %s", self._name(worker))

    def _become_worker(self, slot: int, channel: int) -> NoReturn:
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*SHUTDOWN_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            _libc.die_with_parent()
            self._selector.close()
            for fd in (self._wakeup_r, self._wakeup_w, *(w.channel for w in self._workers.values())):
                os.close(fd)
            # Scripts must never wait on the daemon's terminal: their reads of stdin see its end at once.
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            listeners = self._listeners[slot]
            for sock in {sock for other in self._listeners for sock in other} - set(listeners):
                sock.close()
            # Scripts (os.getenv), their commands and the worker's own parts see which worker this is.
            os.environ[WORKER_VARIABLE] = str(slot)
            settings = dataclasses.replace(self._settings, env={**self._settings.env, WORKER_VARIABLE: str(slot)})
            status = self._worker_main(settings, listeners, WorkerLink(channel))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("the worker failed")
        finally:
            logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # Never return into the supervisor's code, nor wait for threads stuck in scripts.
            os._exit(status)

    def _read_channel(self, fd: int) -> None:
        worker = next((w for w in self._workers.values() if w.channel == fd), None)
        try:
            data = os.read(fd, _CHANNEL_READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or worker is None:
            self._selector.unregister(fd)
            return
        for index, code in enumerate(data):
            if worker.failure is not None:
                worker.failure += data[index:]
                return
            if code == _READY[0]:
                self._on_ready(worker)
            elif code == _REPLACE[0]:
                self._on_replace_request(worker)
            elif code == _FAILED[0]:
                worker.failure = bytearray()

    def _failure_of(self, worker: _Worker) -> str:
        """Why an exited worker could not start, "" when it did not say; what is left in its channel is read first
        (its other messages no longer matter)."""
        while True:
            try:
                data = os.read(worker.channel, _CHANNEL_READ_BYTES)
            except OSError:  # BlockingIOError included: nothing more to read now
                break
            if not data:
                break
            if worker.failure is None:
                # Before _FAILED the channel holds one-byte messages only: the first F is the marker.
                start = data.find(_FAILED)
                if start < 0:
                    continue
                worker.failure = bytearray()
                data = data[start + 1 :]
            worker.failure += data
        return "" if worker.failure is None else worker.failure.decode("utf-8", "replace")

    def _on_ready(self, worker: _Worker) -> None:
        if worker.state is not _State.STARTING:
            return
        worker.state = _State.READY
        worker.ready_at = time.monotonic()
        self._ever_ready = True
        log.info("%s ready", self._name(worker))
        old, worker.replaces = worker.replaces, None
        if old is not None:
            self._current[worker.slot] = worker
            if old.pid in self._workers and old.state is not _State.RETIRING:
                log.info("%s replaces pid=%d, which now drains", self._name(worker), old.pid)
                old.state = _State.RETIRING
                self._kill(old.pid, signal.SIGTERM)

    def _on_replace_request(self, worker: _Worker) -> None:
        if self._stopping or worker is not self._current.get(worker.slot) or worker.state is not _State.READY:
            return
        if any(w.replaces is worker for w in self._workers.values()):
            return  # a successor is starting already
        log.warning("%s asked to be replaced; starting a new worker", self._name(worker))
        self._spawn(worker.slot, replaces=worker)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._worker_exited(worker, os.waitstatus_to_exitcode(wait_status))
            elif self._nats is not None and pid == self._nats.pid:
                log.error("the embedded NATS server exited (%d)", os.waitstatus_to_exitcode(wait_status))
            # Anything else is an orphan handed to us (as PID 1 in a container): reaped, nothing more.

    def _worker_exited(self, worker: _Worker, code: int) -> None:
        reason = self._failure_of(worker)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.channel)
        os.close(worker.channel)
        how = f"status {code}" if code >= 0 else f"signal {-code}"
        if reason and reason != self._start_failure and (self._stopping or worker.replaces or self._ever_ready):
            log.critical("%s", reason)  # only the first worker's reason ends the daemon (run raises it)
        name = self._name(worker)
        if self._stopping:
            log.info("%s exited (%s)", name, how)
            # Our SIGTERM can land before a starting worker handles it: that is a clean stop too.
            status = 0 if code == -signal.SIGTERM else code if code >= 0 else 1
            if self._status is None or (self._status == 0 and worker is self._current.get(worker.slot)):
                self._status = status  # the first failure of a serving worker is the daemon's
            return
        if worker.state is _State.RETIRING:
            log.info("replaced %s exited (%s)", name, how)
            return
        if worker.replaces is not None:
            log.error("replacement %s exited before it was ready (%s)", name, how)
            return
        slot = worker.slot
        self._current.pop(slot, None)
        if not self._ever_ready:
            # The first start failed (bad settings, NATS unreachable, ...): run raises the reason the worker gave.
            self._status = code if code > 0 else 1
            self._start_failure = reason
            self._begin_stop()
            return
        # Until the slot has a worker again, its connections go to the other slots.
        self._set_listening(slot, False)
        backoff_s = self._backoff_s.get(slot, RESTART_MIN_S)
        if worker.ready_at and time.monotonic() - worker.ready_at > HEALTHY_AFTER_S:
            backoff_s = RESTART_MIN_S
        log.error("%s exited unexpectedly (%s); starting another in %gs", name, how, backoff_s)
        self._restart_at[slot] = time.monotonic() + backoff_s
        self._backoff_s[slot] = min(RESTART_MAX_S, backoff_s * 2)

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._restart_at.clear()
        self._stop_deadline = time.monotonic() + self._settings.grace_period_s + KILL_MARGIN_S
        for worker in self._workers.values():
            self._kill(worker.pid, signal.SIGTERM)
        if self._status is None and not self._workers:
            self._status = 0

    def _stop_all(self) -> None:
        """On the way out after an error of the supervisor's own: leave no worker behind."""
        for pid in list(self._workers):
            self._kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._workers.clear()

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def supervise(settings: Settings, worker_main: WorkerMain) -> int:
    """Run the daemon under a supervisor; returns the exit status for the command."""
    return Supervisor(settings, worker_main).run()
