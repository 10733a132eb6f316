"""The file store: scripts and libraries as `*.lua` files in two directories, served from memory.

Only the `*.lua` files directly inside a directory count, hidden ones (`.name.lua`) aside. A script is keyed by
its `--* subject:` and `--* name:` headers, a library by its `--* name:` header, never by the file name; when
several files hold one key, the last by file name is the one served. `FileStore.load` reads the directories once;
`FileStore.watching` then follows them (msgscript.store.file_watch): a file added, changed, renamed or removed is
read again and served within a second, and an edit that does not read as a script (see `FileStore.watching`)
leaves the file's previous version serving. Writes change the files and what the store serves together: the file
that was served is rewritten in place and the other holders removed, and a new file is named by
`script_file_name` or `library_file_name` (docs/cli.md). The files themselves (their names, reading and writing
them) are msgscript.store.script_files; this module is the store over them: what it serves, and when it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from msgscript.errors import ConfigError, ScriptParseError, StoreError
from msgscript.script import Script
from msgscript.store.base import Resync
from msgscript.store.file_watch import follow_directory
from msgscript.store.memory_store import MemoryStore
from msgscript.store.script_files import (
    Stamp,
    SyntaxCheck,
    is_lua_file_name,
    library_file,
    library_file_name,
    load_directory,
    read_changes,
    remove_holders,
    replace_holders,
    script_file,
    script_file_name,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0
"""How long the end of `FileStore.watching` waits for the watches to stop."""
RETRY_S = 1.0
"""A directory that could not be read while following it is read again after this long."""


@dataclass(slots=True)
class _Followed:
    """One directory as the store last read it: per file, its stamp then, and the version it serves (its last text
    that read well; None: none)."""

    kind: str
    path: Path
    stamps: dict[Path, Stamp] = field(default_factory=dict)
    served: dict[Path, Script | None] = field(default_factory=dict)
    unreadable: bool = False


def _directory(path: Path | None, kind: str) -> Path:
    if path is None:
        raise StoreError(f"{kind} directory cannot be empty")
    return path


class FileStore:
    """Scripts and libraries kept as files (see the module docstring), served from memory.

    Lookups answer from what `load` read and what was written since. A script requiring a library the
    directory does not hold fails with `failed to read librairies: …` when it runs, as with etcd (the Go file
    store skipped the library). Without a script directory (or library directory) the store holds no scripts
    (libraries), and writing or listing them fails with `script directory cannot be empty` (`library …`).
    Writes run one at a time, in a thread; their errors name the file or directory.
    """

    def __init__(self, script_dir: str | Path = "", library_dir: str | Path = "") -> None:
        self.script_dir = Path(script_dir).absolute() if script_dir else None
        self.library_dir = Path(library_dir).absolute() if library_dir else None
        self._memory = MemoryStore(missing_libraries_are_errors=True)
        self._writing = asyncio.Lock()  # held by writes and by the watch's readings: one at a time
        self._followed: list[_Followed] = []  # what `load` read, then what the watch reads

    def __len__(self) -> int:
        """The number of scripts held."""
        return len(self._memory)

    async def load(self) -> None:
        """Read the directories (once, before use); a file whose headers cannot be used is logged and skipped.

        Raises:
            ConfigError: a directory or a file cannot be read.
        """
        try:
            scripts = await asyncio.to_thread(load_directory, self.script_dir) if self.script_dir else []
            libraries = await asyncio.to_thread(load_directory, self.library_dir) if self.library_dir else []
        except StoreError as exc:
            raise ConfigError(str(exc)) from exc
        for directory, kind, found in (
            (self.script_dir, "script", scripts),
            (self.library_dir, "library", libraries),
        ):
            if directory is not None:
                self._followed.append(
                    _Followed(
                        kind,
                        directory,
                        {path: stamp for path, stamp, _ in found},
                        {path: None if isinstance(parsed, ScriptParseError) else parsed for path, _, parsed in found},
                    )
                )
        for path, _, script in scripts:
            if isinstance(script, ScriptParseError):
                log.error("skipping script %s: %s", path, script)
            else:
                self._memory.add(script)
        if self.script_dir:
            log.info("loaded %d scripts from %s", len(self._memory), self.script_dir)
        for path, _, library in libraries:
            if isinstance(library, ScriptParseError):
                log.error("skipping library %s: %s", path, library)
            else:
                self._memory.add_library(library.name, library.content)
        if self.library_dir:
            log.info("loaded %d libraries from %s", len(libraries), self.library_dir)

    @contextlib.asynccontextmanager
    async def watching(self, *, check: SyntaxCheck | None = None) -> AsyncIterator[None]:
        """Follow the directories `load` read for as long as the block runs, with inotify.

        A `*.lua` file added, changed, renamed or removed is read again within a second and served, and the
        listeners fire when the scripts change (so NATS subscriptions follow). Libraries are read by each run
        when it starts: a changed library applies to the runs that start after it. A run under way keeps the
        version it started with.

        A changed file is served only when it reads as a script: its headers parse, it has its `--* subject:`
        and `--* name:` headers (a library its `--* name:`), and `check` (Lua scripts and libraries) finds its
        code compiles. Otherwise the error is logged with the file and line, and the file's previous version
        keeps serving (a new file is not served). Editors' temporary files are not `*.lua` files or are hidden
        (`is_lua_file_name`). A directory that cannot be watched any more is logged, and what was read from it
        keeps serving (msgscript.store.file_watch).

        On exit the watches stop (waited for STOP_TIMEOUT_S at most).
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        rereads: list[Resync] = []
        watches: list[asyncio.Task[None]] = []
        for followed in self._followed:
            reread = functools.partial(self._reread, followed, check)
            resync = Resync(reread, what=f"{followed.kind}s read from {followed.path}", retry_s=RETRY_S)
            rereads.append(resync)
            watch = follow_directory(
                followed.path, resync.schedule, stop, wanted=is_lua_file_name, what=f"{followed.kind} directory"
            )
            watches.append(loop.create_task(watch, name=f"msgscript:watch:{followed.path}"))
            log.info("watching %s for changes", followed.path)
        try:
            yield
        finally:
            stop.set()
            for resync in rereads:
                resync.close()
            if watches:
                _, pending = await asyncio.wait(watches, timeout=STOP_TIMEOUT_S)
                for task in pending:
                    log.warning("the watch %s did not stop within %ss; cancelled", task.get_name(), STOP_TIMEOUT_S)
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)

    async def _reread(self, followed: _Followed, check: SyntaxCheck | None) -> None:
        """Read the directory's changed files again, and serve what they hold now."""
        async with self._writing:
            shared = self.script_dir == self.library_dir
            try:
                present, readings = await asyncio.to_thread(
                    read_changes, followed.path, dict(followed.stamps), followed.kind, check, shared
                )
            except StoreError as exc:
                if not followed.unreadable:
                    followed.unreadable = True
                    log.error("%s; serving what was read from it", exc)
                return
            followed.unreadable = False
            for path in set(followed.stamps) - set(present):
                del followed.stamps[path]
                if followed.served.pop(path, None) is not None:
                    log.info("%s file %s removed", followed.kind, path)
            for path, reading in readings.items():
                followed.stamps[path] = reading.stamp
                previous = followed.served.get(path)
                if reading.script is not None or not reading.problem:
                    followed.served[path] = reading.script
                    if reading.script is not None and reading.script != previous:
                        log.info("%s %s %s", "reloaded" if previous else "read", followed.kind, path)
                elif previous is not None:
                    log.error("%s: %s; its previous version keeps serving", reading.where, reading.problem)
                else:
                    followed.served[path] = None
                    log.error("skipping %s %s: %s", followed.kind, reading.where, reading.problem)
            await self._serve(followed)

    async def _serve(self, followed: _Followed) -> None:
        """Make memory hold what the directory's files serve (the last file by name wins a key)."""
        versions = [followed.served[path] for path in sorted(followed.served, key=lambda path: path.name)]
        if followed.kind == "library":
            self._memory.replace_libraries({library.name: library.content for library in versions if library})
            return
        wanted = {(script.subject, script.name): script for script in versions if script}
        for subject, name in await self._memory.script_names():
            if (subject, name) not in wanted:
                await self._memory.delete_script(subject, name)
        for (subject, name), script in wanted.items():
            if await self._memory.script(subject, name) != script:
                self._memory.add(script)

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
            LibraryNotFound: a library is not held.
        """
        return await self._memory.load_libraries(names)

    async def script_names(self) -> list[tuple[str, str]]:
        """The (subject, name) of every script held, sorted; a file without a subject or a name header is left
        out (it cannot be told apart from others by them).

        Raises:
            StoreError: there is no script directory.
        """
        _directory(self.script_dir, "script")
        return [(subject, name) for subject, name in await self._memory.script_names() if subject and name]

    async def library_names(self) -> list[str]:
        """The name of every library held, sorted (a file without a name header is left out).

        Raises:
            StoreError: there is no library directory.
        """
        _directory(self.library_dir, "library")
        return [name for name in await self._memory.library_names() if name]

    async def put_script(self, script: Script, *, text: str | None = None) -> None:
        """Write the script's file: `text` with its subject and name headers set to the script's, else the
        script rendered (`render_script`).

        Raises:
            StoreError: no script directory; no subject or name; a text that does not hold the script; a file
                name taken by a file holding something else; a file that cannot be read, written or removed.
        """
        directory = _directory(self.script_dir, "script")
        if not script.subject or not script.name:
            raise StoreError("a script kept in a file needs a subject and a name")
        written = script_file(script, text)

        def holds(other: Script) -> bool:
            return (other.subject, other.name) == (script.subject, script.name)

        what = f"script {script.name} of subject {script.subject}"
        new_name = script_file_name(script.subject, script.name)
        async with self._writing:
            path = await asyncio.to_thread(replace_holders, directory, holds, new_name, written, what)
        log.info("script written to %s", path)
        self._memory.add(script)

    async def delete_script(self, subject: str, name: str) -> bool:
        """Remove every file holding the script; False when none did.

        Raises:
            StoreError: no script directory, or a file cannot be read or removed.
        """
        directory = _directory(self.script_dir, "script")
        async with self._writing:
            removed = await asyncio.to_thread(
                remove_holders, directory, lambda other: (other.subject, other.name) == (subject, name)
            )
        for path in removed:
            log.info("removed %s", path)
        await self._memory.delete_script(subject, name)
        return bool(removed)

    async def put_library(self, name: str, source: str, *, text: str | None = None) -> None:
        """Write the library's file: `text` with its name header set to `name`, else the source under a name
        header.

        Raises:
            StoreError: no library directory; no name; a text that does not hold this source; a file name
                taken by a file holding something else; a file that cannot be read, written or removed.
        """
        directory = _directory(self.library_dir, "library")
        if not name:
            raise StoreError("a library needs a name")
        written = library_file(name, source, text)
        async with self._writing:
            path = await asyncio.to_thread(
                replace_holders,
                directory,
                lambda other: other.name == name,
                library_file_name(name),
                written,
                f"library {name}",
            )
        log.info("library written to %s", path)
        self._memory.add_library(name, source)

    async def delete_library(self, name: str) -> bool:
        """Remove every file holding the library; False when none did.

        Raises:
            StoreError: no library directory, or a file cannot be read or removed.
        """
        directory = _directory(self.library_dir, "library")
        async with self._writing:
            removed = await asyncio.to_thread(remove_holders, directory, lambda other: other.name == name)
        for path in removed:
            log.info("removed %s", path)
        await self._memory.delete_library(name)
        return bool(removed)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every change to the scripts: the store's own writes, and what `watching` reads."""
        self._memory.add_listener(callback)
