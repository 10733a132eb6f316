"""The file store: scripts and libraries as `*.lua` files in two directories, served from memory.

Only the `*.lua` files directly inside a directory count. A script is keyed by its `--* subject:` and
`--* name:` headers, a library by its `--* name:` header, never by the file name; when several files hold one
key, the last by file name is the one served. `FileStore.load` reads the directories (the daemon does so once,
at startup: it serves what was written after its next start). Writes change the files and what the store
serves together: the file that was served is rewritten in place and the other holders removed, and a new file
is named by `script_file_name` or `library_file_name` (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from msgscript.errors import ConfigError, ScriptParseError, StoreError
from msgscript.script import HEADER_PREFIX, Script, parse_script, render_script
from msgscript.store.memory_store import MemoryStore

log = logging.getLogger(__name__)

_SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
_NAME_SEPARATOR = "@"


def _encode_file_part(text: str) -> str:
    """Percent-encode every character outside `A-Z a-z 0-9 . _ -`, and a leading dot (no hidden files)."""
    out: list[str] = []
    for index, char in enumerate(text):
        if char in _SAFE_CHARACTERS and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


def script_file_name(subject: str, name: str) -> str:
    """The file name given to a new script: `<subject>@<name>.lua`, both percent-encoded, one file per pair."""
    return f"{_encode_file_part(subject)}{_NAME_SEPARATOR}{_encode_file_part(name)}.lua"


def library_file_name(name: str) -> str:
    """The file name given to a new library: `<name>.lua`, percent-encoded."""
    return f"{_encode_file_part(name)}.lua"


def _header_key(line: str) -> str | None:
    """The key of a header line by the parser's rules (single-space split, one `:` dropped), else None."""
    if not line.startswith(HEADER_PREFIX):
        return None
    parts = line.split(" ")
    key = parts[1] if len(parts) >= 2 else ""
    return key.removesuffix(":")


def _set_headers(text: str, values: Mapping[str, str]) -> str:
    """The script text with every header line of the given keys replaced by one `--* key: value` line at the top.

    Everything else is kept byte for byte, so the parsed content does not change. New lines take the
    file's line ending (CRLF when its first line ends with one).
    """
    if not values:
        return text
    first_line = text.split("\n", 1)[0]
    eol = "\r\n" if "\n" in text and first_line.endswith("\r") else "\n"
    kept = [line for line in text.split("\n") if _header_key(line.removesuffix("\r")) not in values]
    head = "".join(f"{HEADER_PREFIX} {key}: {value}{eol}" for key, value in values.items())
    return head + "\n".join(kept)


def _lua_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise StoreError(f"failed to read directory {directory}: {exc.strerror or exc}") from exc
    return [directory / e for e in entries if e.endswith(".lua") and (directory / e).is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise StoreError(f"failed to read script file {path}: {exc.strerror or exc}") from exc


def _read_directory(directory: Path) -> list[tuple[Path, Script | ScriptParseError]]:
    """Every `*.lua` file directly inside, sorted by file name, parsed (or why it does not parse)."""
    found: list[tuple[Path, Script | ScriptParseError]] = []
    for path in _lua_files(directory):
        try:
            found.append((path, parse_script(_read(path))))
        except ScriptParseError as exc:
            found.append((path, exc))
    return found


def _holders(directory: Path, holds: Callable[[Script], bool]) -> list[Path]:
    """The files of the directory whose headers `holds` accepts, sorted by file name (the last one is served)."""
    return [path for path, parsed in _read_directory(directory) if isinstance(parsed, Script) and holds(parsed)]


def _write_file(path: Path, text: str) -> None:
    """Replace the file's content in one step (through a temporary file the loaders ignore)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(text.encode("utf-8", "surrogateescape"))
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise StoreError(f"failed to write {path}: {exc.strerror or exc}") from exc


def _remove_files(paths: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"failed to remove {path}: {exc.strerror or exc}") from exc


def _replace_holders(directory: Path, holds: Callable[[Script], bool], new_name: str, text: str, what: str) -> Path:
    """Write `text` over the file holding `what` that is served (or to a new file `new_name` when none does),
    remove the other holders, and return the file written."""
    holders = _holders(directory, holds)
    target = holders[-1] if holders else directory / new_name
    if not holders and os.path.lexists(target):
        raise StoreError(f"cannot write {target}: the file exists and does not hold {what}")
    _write_file(target, text)
    _remove_files(holders[:-1])
    return target


def _remove_holders(directory: Path, holds: Callable[[Script], bool]) -> list[Path]:
    holders = _holders(directory, holds)
    _remove_files(holders)
    return holders


def _parse(text: str, what: str) -> Script:
    try:
        return parse_script(text)
    except ScriptParseError as exc:
        raise StoreError(f"cannot write {what}: {exc}") from exc


def _script_file(script: Script, text: str | None) -> str:
    """The file text of a script: `text` with its subject and name headers set to the script's, or the script
    rendered when there is no text. It must read back as `script`."""
    what = f"script {script.name} of subject {script.subject}"
    if text is None:
        written = render_script(script)
    else:
        current = _parse(text, what)
        changes = (("subject", script.subject, current.subject), ("name", script.name, current.name))
        written = _set_headers(text, {key: value for key, value, old in changes if value != old})
    if _parse(written, what) != script:
        raise StoreError(f"cannot write {what}: its file would not read back as the same script")
    return written


def _library_file(name: str, source: str, text: str | None) -> str:
    """The file text of a library: `text` with its name header set to `name`, or the source under a name
    header when there is no text. It must read back as this name and source."""
    what = f"library {name}"
    if text is None:
        written = render_script(Script(name=name, content=source))
    else:
        written = _set_headers(text, {"name": name} if _parse(text, what).name != name else {})
    library = _parse(written, what)
    if (library.name, library.content) != (name, source):
        raise StoreError(f"cannot write {what}: its file would not read back as the same library")
    return written


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
        self._writing = asyncio.Lock()

    def __len__(self) -> int:
        """The number of scripts held."""
        return len(self._memory)

    async def load(self) -> None:
        """Read the directories (once, before use); a file whose headers cannot be used is logged and skipped.

        Raises:
            ConfigError: a directory or a file cannot be read.
        """
        try:
            scripts = await asyncio.to_thread(_read_directory, self.script_dir) if self.script_dir else []
            libraries = await asyncio.to_thread(_read_directory, self.library_dir) if self.library_dir else []
        except StoreError as exc:
            raise ConfigError(str(exc)) from exc
        for path, script in scripts:
            if isinstance(script, ScriptParseError):
                log.error("skipping script %s: %s", path, script)
            else:
                self._memory.add(script)
        if self.script_dir:
            log.info("loaded %d scripts from %s", len(self._memory), self.script_dir)
        for path, library in libraries:
            if isinstance(library, ScriptParseError):
                log.error("skipping library %s: %s", path, library)
            else:
                self._memory.add_library(library.name, library.content)
        if self.library_dir:
            log.info("loaded %d libraries from %s", len(libraries), self.library_dir)

    async def scripts_for(self, subject: str) -> list[Script]:
        """Scripts whose subject is `subject` or a wildcard pattern matching it."""
        return await self._memory.scripts_for(subject)

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
        written = _script_file(script, text)

        def holds(other: Script) -> bool:
            return (other.subject, other.name) == (script.subject, script.name)

        what = f"script {script.name} of subject {script.subject}"
        new_name = script_file_name(script.subject, script.name)
        async with self._writing:
            path = await asyncio.to_thread(_replace_holders, directory, holds, new_name, written, what)
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
                _remove_holders, directory, lambda other: (other.subject, other.name) == (subject, name)
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
        written = _library_file(name, source, text)
        async with self._writing:
            path = await asyncio.to_thread(
                _replace_holders,
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
            removed = await asyncio.to_thread(_remove_holders, directory, lambda other: other.name == name)
        for path in removed:
            log.info("removed %s", path)
        await self._memory.delete_library(name)
        return bool(removed)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every change to the scripts (the store's own writes: files are not watched)."""
        self._memory.add_listener(callback)
