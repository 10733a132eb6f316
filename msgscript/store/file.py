"""The file store: a script directory and a library directory, read once at startup; and their writers."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from msgscript.errors import ConfigError, ScriptParseError, StoreError
from msgscript.script import HEADER_PREFIX, Script, parse_script
from msgscript.store.memory import MemoryStore

log = logging.getLogger(__name__)


def _lua_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"failed to read directory {directory}: {exc.strerror or exc}") from exc
    return [directory / e for e in entries if e.endswith(".lua") and (directory / e).is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ConfigError(f"failed to read script file {path}: {exc.strerror or exc}") from exc


def load_file_store(script_dir: str, library_dir: str = "") -> MemoryStore:
    """Load `*.lua` scripts (not recursive, sorted by file name) and libraries (keyed by their name header).

    A script that requires a library the directory does not hold fails with `failed to read librairies: …`
    when it runs, as with etcd (the Go file store skipped the library).

    Raises:
        ConfigError: a directory or a file cannot be read.
    """
    if not script_dir:
        raise ConfigError("script directory cannot be empty")
    store = MemoryStore(missing_libraries_are_errors=True)
    directory = Path(script_dir).absolute()
    for path in _lua_files(directory):
        try:
            script = parse_script(_read(path))
        except ScriptParseError as exc:
            log.error("skipping script %s: %s", path, exc)
            continue
        store.add(script)
    log.info("loaded %d scripts from %s", len(store), directory)
    if library_dir:
        libraries = _lua_files(Path(library_dir))
        for path in libraries:
            try:
                library = parse_script(_read(path))
            except ScriptParseError as exc:
                log.error("skipping library %s: %s", path, exc)
                continue
            store.add_library(library.name, library.content)
        log.info("loaded %d libraries from %s", len(libraries), library_dir)
    return store


# Writing the directories (msgscriptcli with `-b file`). The daemon reads them once at startup,
# so what is written here is served after its next start.

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


def set_headers(text: str, values: Mapping[str, str]) -> str:
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


def _parsed_files(directory: Path) -> list[tuple[Path, Script]]:
    """Every `*.lua` file of the directory that parses, sorted by file name (the order the file store loads)."""
    found = []
    for path in _lua_files(directory):
        try:
            found.append((path, parse_script(_read(path))))
        except ScriptParseError as exc:
            log.warning("ignoring %s: %s", path, exc)
    return found


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


def _check_new_file(target: Path, what: str) -> None:
    if os.path.lexists(target):
        raise StoreError(f"cannot write {target}: the file exists and does not hold {what}")


class ScriptDirectory:
    """A script directory as the file store reads it: every `*.lua` file directly inside, keyed by its headers.

    Several files may hold the same subject and name; the file store keeps the last one by file name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    def scripts(self) -> list[tuple[Path, Script]]:
        """Every script file with its parsed script, sorted by file name.

        Raises:
            ConfigError: the directory or a file cannot be read.
        """
        return _parsed_files(self.path)

    def files_holding(self, subject: str, name: str) -> list[Path]:
        """The files holding this subject and name, sorted by file name."""
        return [path for path, script in self.scripts() if script.subject == subject and script.name == name]

    def put(self, subject: str, name: str, text: str) -> Path:
        """Write a script file whose headers say `subject` and `name`, replacing the files that held them.

        The last file that held the pair (the one the file store serves) is rewritten in place; when
        there is none, a new file named by `script_file_name` is created.

        Raises:
            ConfigError: the directory or a file cannot be read.
            StoreError: the text does not carry these headers, or a file cannot be written or removed.
        """
        script = parse_script(text)
        if (script.subject, script.name) != (subject, name):
            raise StoreError(f"the script headers say subject {script.subject!r} and name {script.name!r}")
        holders = self.files_holding(subject, name)
        target = holders[-1] if holders else self.path / script_file_name(subject, name)
        if not holders:
            _check_new_file(target, f"script {name} of subject {subject}")
        _write_file(target, text)
        _remove_files(holders[:-1])
        return target

    def remove(self, subject: str, name: str) -> list[Path]:
        """Remove every file holding this subject and name; returns them ([] when there was none).

        Raises:
            ConfigError: the directory or a file cannot be read.
            StoreError: a file cannot be removed.
        """
        holders = self.files_holding(subject, name)
        _remove_files(holders)
        return holders


class LibraryDirectory:
    """A library directory as the file store reads it: every `*.lua` file directly inside, keyed by its name header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    def libraries(self) -> list[tuple[Path, Script]]:
        """Every library file with its parsed headers, sorted by file name.

        Raises:
            ConfigError: the directory or a file cannot be read.
        """
        return _parsed_files(self.path)

    def files_holding(self, name: str) -> list[Path]:
        """The files whose name header is `name`, sorted by file name."""
        return [path for path, library in self.libraries() if library.name == name]

    def put(self, name: str, text: str) -> Path:
        """Write a library file whose name header is `name`, replacing the files that held that name.

        Raises:
            ConfigError: the directory or a file cannot be read.
            StoreError: the text has another name header, or a file cannot be written or removed.
        """
        library = parse_script(text)
        if library.name != name:
            raise StoreError(f"the library's name header says {library.name!r}")
        holders = self.files_holding(name)
        target = holders[-1] if holders else self.path / library_file_name(name)
        if not holders:
            _check_new_file(target, f"library {name}")
        _write_file(target, text)
        _remove_files(holders[:-1])
        return target

    def remove(self, name: str) -> list[Path]:
        """Remove every file holding the library `name`; returns them ([] when there was none).

        Raises:
            ConfigError: the directory or a file cannot be read.
            StoreError: a file cannot be removed.
        """
        holders = self.files_holding(name)
        _remove_files(holders)
        return holders
