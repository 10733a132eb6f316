"""The etcd store: scripts and libraries kept in etcd under the upstream layout, served from memory.

Layout (shared with the Go msgscript and msgscriptcli):

- `msgscript/scripts/<subject>/<name>`: the Script JSON (content base64), see `Script.to_json`.
- `msgscript/libs/<name>`: the library's raw text.

The subject is the key's first segment after `msgscript/scripts/`, the name everything after the next
`/`; they win over the `subject` and `name` inside the JSON (the Go CLI can write a key that differs from
the JSON). Other keys under `msgscript/` are ignored.

Everything is read with one range read when the store opens, then kept current by a watch on
`msgscript/` from the next revision: a change made by any etcd client is applied, and the listeners
fire, as soon as etcd reports it (milliseconds on a healthy cluster). Looking scripts up never touches
etcd. A value that is not a valid Script JSON is logged and left out (and a previous valid version of
that key is dropped); it never stops the store.

When etcd is lost the store keeps serving what it holds, logs the loss once, and retries (every 0.5 s,
backing off to 2 s). Once etcd answers again the watch resumes from the last revision seen, so changes
made meanwhile are replayed; if etcd has compacted that history, or is not the cluster it was (another
cluster ID, or a revision below the last one seen, as after a rebuild), the store reads everything again
and applies the difference. The return is logged once too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

from msgscript.errors import ConfigError, EtcdError, LibraryNotFound, ScriptParseError, StoreError
from msgscript.etcd_client import EtcdClient
from msgscript.etcd_watch import Watch, WatchBatch, WatchCompacted
from msgscript.script import Script
from msgscript.store.memory_store import MemoryStore

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_PREFIX = "msgscript/"
SCRIPTS_PREFIX = "msgscript/scripts/"
LIBRARIES_PREFIX = "msgscript/libs/"

LOAD_TIMEOUT_S = 5.0
"""How long the first read may take before the store gives up opening."""
REQUEST_TIMEOUT_S = 5.0
"""The timeout of every later etcd request (writes, re-reads, opening the watch)."""
VISIBLE_TIMEOUT_S = 2.0
"""How long a write waits for the watch to bring it into memory before returning anyway."""
RETRY_MIN_S = 0.25
RETRY_MAX_S = 0.5
"""How often the store tries to follow etcd again while it is away: a script added once it is back is served
within about a second."""


def script_key(subject: str, name: str) -> str:
    """The etcd key of a script: `msgscript/scripts/<subject>/<name>`."""
    return f"{SCRIPTS_PREFIX}{subject}/{name}"


def library_key(name: str) -> str:
    """The etcd key of a library: `msgscript/libs/<name>`."""
    return f"{LIBRARIES_PREFIX}{name}"


def missing_library_text(name: str) -> str:
    """The Go etcd store's text for a missing library (the dispatcher prefixes `failed to read librairies: `)."""
    return f"key {library_key(name)} doesn't exists"


def _split_script_key(key: str) -> tuple[str, str] | None:
    subject, sep, name = key.removeprefix(SCRIPTS_PREFIX).partition("/")
    if not sep or not subject or not name:
        return None
    return subject, name


class EtcdStore:
    """Scripts and libraries from etcd, held in memory and followed by a watch; open with `async with`.

    Reads (`scripts_for`, `script`, `subjects`, `load_libraries`, the listings) answer from memory. Writes go
    to etcd and return once the watch has brought them into memory (or after VISIBLE_TIMEOUT_S); they raise
    StoreError when etcd cannot be reached or refuses.
    """

    def __init__(self, etcd: EtcdClient) -> None:
        self._etcd = etcd
        self._memory = MemoryStore(missing_libraries_are_errors=True)
        self._values: dict[str, bytes] = {}  # key -> raw value, for every script and library key applied
        self._listeners: list[Callable[[], None]] = []
        self._revision = 0
        self._cluster_id = 0
        self._reload_needed = False
        self._progress = asyncio.Condition()
        self._follower: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EtcdStore:
        await self.load()
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name="msgscript:etcd-store-watch")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.wait({follower})

    def __len__(self) -> int:
        """The number of scripts held in memory."""
        return len(self._memory)

    @property
    def revision(self) -> int:
        """The etcd revision the memory reflects (for the keys under `msgscript/`)."""
        return self._revision

    async def load(self) -> None:
        """Read every script and library (one range read).

        Raises:
            ConfigError: etcd could not be read within LOAD_TIMEOUT_S (the text says why).
        """
        try:
            await self._reload(timeout_s=LOAD_TIMEOUT_S)
        except EtcdError as exc:
            raise ConfigError(str(exc)) from exc
        scripts, libraries = self._counts()
        endpoints = ",".join(self._etcd.endpoints)
        log.info("loaded %d scripts and %d libraries from etcd at %s", scripts, libraries, endpoints)

    async def scripts_for(self, subject: str) -> list[Script]:
        """Scripts whose subject is `subject` or a wildcard pattern matching it."""
        return await self._memory.scripts_for(subject)

    def scripts_now(self, subject: str) -> list[Script]:
        """What `scripts_for` answers: the scripts are held in memory."""
        return self._memory.scripts_now(subject)

    async def script(self, subject: str, name: str) -> Script | None:
        """The script stored under exactly this subject and name."""
        return await self._memory.script(subject, name)

    async def subjects(self) -> list[str]:
        """Distinct subjects that hold at least one script, sorted."""
        return await self._memory.subjects()

    async def load_libraries(self, names: Sequence[str]) -> tuple[str, ...]:
        """Library sources in order.

        Raises:
            LibraryNotFound: with the Go text `key msgscript/libs/<name> doesn't exists`.
        """
        try:
            return await self._memory.load_libraries(names)
        except LibraryNotFound as exc:
            raise LibraryNotFound(exc.name, missing_library_text(exc.name)) from None

    async def script_names(self) -> list[tuple[str, str]]:
        """The (subject, name) of every script key, sorted: a key whose value is not a valid Script is listed
        too (it is not served, but can be removed)."""
        found = (_split_script_key(key) for key in self._values if key.startswith(SCRIPTS_PREFIX))
        return sorted(place for place in found if place is not None)

    async def library_names(self) -> list[str]:
        """The name of every library key, sorted."""
        return sorted(key.removeprefix(LIBRARIES_PREFIX) for key in self._values if key.startswith(LIBRARIES_PREFIX))

    async def put_script(self, script: Script, *, text: str | None = None) -> None:
        """Write the script under `msgscript/scripts/<subject>/<name>` (`text` is not kept: etcd holds the JSON).

        Raises:
            StoreError: the subject or name cannot form a key, or etcd failed.
        """
        if not script.subject or "/" in script.subject:
            raise StoreError(f"invalid subject {script.subject!r}: it must be non-empty and without '/'")
        if not script.name:
            raise StoreError("a script stored in etcd needs a name")
        revision = await self._write(
            lambda: self._etcd.put(
                script_key(script.subject, script.name), script.to_json(), timeout_s=REQUEST_TIMEOUT_S
            )
        )
        await self._visible(revision)

    async def delete_script(self, subject: str, name: str) -> bool:
        """Delete exactly `msgscript/scripts/<subject>/<name>`; False (no error) when it does not exist.

        Raises:
            StoreError: etcd failed.
        """
        revision = await self._write(lambda: self._etcd.delete(script_key(subject, name), timeout_s=REQUEST_TIMEOUT_S))
        await self._visible(revision)
        return revision is not None

    async def put_library(self, name: str, source: str, *, text: str | None = None) -> None:
        """Write a library's source under `msgscript/libs/<name>` (`text` is not kept).

        Raises:
            StoreError: the name is empty, or etcd failed.
        """
        if not name:
            raise StoreError("a library needs a name")
        revision = await self._write(lambda: self._etcd.put(library_key(name), source, timeout_s=REQUEST_TIMEOUT_S))
        await self._visible(revision)

    async def delete_library(self, name: str) -> bool:
        """Delete `msgscript/libs/<name>`; False (no error) when it does not exist.

        Raises:
            StoreError: etcd failed.
        """
        revision = await self._write(lambda: self._etcd.delete(library_key(name), timeout_s=REQUEST_TIMEOUT_S))
        await self._visible(revision)
        return revision is not None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) once per etcd change that alters the set of scripts."""
        self._listeners.append(callback)

    # -- keeping memory in step with etcd ------------------------------------------------------------

    async def _follow(self) -> None:
        """Watch `msgscript/` for as long as the store is open, through etcd outages."""
        interrupted = lost = False
        delay = RETRY_MIN_S
        while True:
            try:
                watch = await self._open_watch(check_history=interrupted)
            except WatchCompacted as exc:
                log.info("script store: %s; reading everything again", exc)
                self._reload_needed = True
                continue
            except EtcdError as exc:
                interrupted = True
                if not lost:
                    lost = True
                    self._log_lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:
                log.exception("script store: unexpected error while opening the etcd watch")
                await asyncio.sleep(RETRY_MAX_S)
                continue
            if lost:
                lost = False
                log.info("script store: etcd is back; following changes from revision %d", self._revision + 1)
            interrupted, delay = False, RETRY_MIN_S
            try:
                async with watch:
                    while True:
                        await self._apply_batch(await watch.next())
            except WatchCompacted as exc:
                log.info("script store: %s; reading everything again", exc)
                self._reload_needed = True
            except EtcdError as exc:
                interrupted = lost = True
                self._log_lost(exc)
            except Exception:
                log.exception("script store: unexpected error while following etcd")
                self._reload_needed = True
                await asyncio.sleep(RETRY_MAX_S)

    def _log_lost(self, exc: EtcdError) -> None:
        log.warning(
            "script store: etcd lost (%s); serving the %d scripts in memory until it is back", exc, len(self._memory)
        )

    async def _open_watch(self, *, check_history: bool) -> Watch:
        if self._reload_needed:
            await self._reload(timeout_s=REQUEST_TIMEOUT_S)
        elif check_history:
            # A watch from a revision this etcd has not reached yet would wait silently: catch a rebuilt cluster.
            probe = await self._etcd.range(ROOT_PREFIX, prefix=True, count_only=True, timeout_s=REQUEST_TIMEOUT_S)
            if probe.cluster_id != self._cluster_id or probe.revision < self._revision:
                log.info(
                    "script store: etcd history changed (cluster %x at revision %d, was %x at %d); reading everything",
                    probe.cluster_id,
                    probe.revision,
                    self._cluster_id,
                    self._revision,
                )
                await self._reload(timeout_s=REQUEST_TIMEOUT_S)
        return await self._etcd.watch(
            ROOT_PREFIX, prefix=True, start_revision=self._revision + 1, timeout_s=REQUEST_TIMEOUT_S
        )

    async def _reload(self, *, timeout_s: float) -> None:
        """Read everything and apply the difference with memory; listeners fire if scripts changed."""
        result = await self._etcd.range(ROOT_PREFIX, prefix=True, timeout_s=timeout_s)
        fresh = {kv.key.decode("utf-8", "surrogateescape"): kv.value for kv in result.kvs}
        changed = False
        for key in [k for k in self._values if k not in fresh]:
            changed |= await self._apply(key, None)
        for key, value in fresh.items():
            if self._values.get(key) != value:
                changed |= await self._apply(key, value)
        self._revision, self._cluster_id = result.revision, result.cluster_id
        self._reload_needed = False
        await self._advanced()
        if changed:
            self._notify()

    async def _apply_batch(self, batch: WatchBatch) -> None:
        changed = False
        for event in batch.events:
            key = event.kv.key.decode("utf-8", "surrogateescape")
            changed |= await self._apply(key, None if event.deleted else event.kv.value)
        self._revision = max(self._revision, batch.revision)
        await self._advanced()
        if changed:
            self._notify()

    async def _apply(self, key: str, value: bytes | None) -> bool:
        """Apply one key's new value (None: deleted) to memory; True when the set of scripts changed."""
        if key.startswith(SCRIPTS_PREFIX):
            return await self._apply_script(key, value)
        if key.startswith(LIBRARIES_PREFIX):
            name = key.removeprefix(LIBRARIES_PREFIX)
            if not name:
                return False
            if value is None:
                self._values.pop(key, None)
                await self._memory.delete_library(name)
            else:
                self._values[key] = value
                self._memory.add_library(name, value.decode("utf-8", "surrogateescape"))
            return False
        return False

    async def _apply_script(self, key: str, value: bytes | None) -> bool:
        place = _split_script_key(key)
        if place is None:
            if value is not None:
                log.error("script store: ignoring %s: not msgscript/scripts/<subject>/<name>", key)
            return False
        subject, name = place
        before = await self._memory.script(subject, name)
        if value is None:
            self._values.pop(key, None)
            await self._memory.delete_script(subject, name)
            return before is not None
        self._values[key] = value
        try:
            script = replace(Script.from_json(value), subject=subject, name=name)
        except ScriptParseError as exc:
            log.error("script store: skipping %s: %s", key, exc)
            await self._memory.delete_script(subject, name)
            return before is not None
        if script == before:
            return False
        self._memory.add(script)
        return True

    async def _advanced(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _visible(self, revision: int | None) -> None:
        """Wait until the watch has applied `revision` (read-your-writes for the caller), bounded."""
        if revision is None:
            return
        try:
            async with asyncio.timeout(VISIBLE_TIMEOUT_S), self._progress:
                await self._progress.wait_for(lambda: self._revision >= revision)
        except TimeoutError:
            log.debug("script store: revision %d not seen by the watch yet", revision)

    async def _write(self, request: Callable[[], Awaitable[T]]) -> T:
        try:
            return await request()
        except EtcdError as exc:
            raise StoreError(str(exc)) from exc

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def _counts(self) -> tuple[int, int]:
        libraries = sum(1 for key in self._values if key.startswith(LIBRARIES_PREFIX))
        return len(self._memory), libraries
