"""The script and library files on disk: their names, which files count, reading them and writing them.

A directory holds scripts (or libraries) as the `*.lua` files directly inside it, hidden ones (`.name.lua`) aside
(`is_lua_file_name`). A file is keyed by its headers, never by its name: a script by `--* subject:` and
`--* name:`, a library by `--* name:`. When several files hold one key the last by file name is the one served,
so a write rewrites that file and removes the others (`replace_holders`); a new file is named
`<subject>@<name>.lua` or `<name>.lua`, percent-encoded (`script_file_name`, `library_file_name`). Texts are
decoded as UTF-8 with `surrogateescape` and a rewrite of a text only sets its subject and name headers, so every other
byte of a file survives; a write goes through a hidden temporary file and one rename.

For following a directory, `read_changes` reads the files whose `Stamp` changed, and refuses (with the file, the
line and why) a text that does not read as a script or does not compile (`SyntaxCheck`); a file refused is read
once more when it changed within SETTLE_S (it was caught half-written). Everything here is blocking file I/O:
msgscript.store.file_store.FileStore, the store over these files, runs it in a thread, one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import stat
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from msgscript.errors import ScriptParseError, StoreError
from msgscript.script import HEADER_PREFIX, Script, parse_script, render_script

_SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
_NAME_SEPARATOR = "@"

SyntaxCheck = Callable[[str], tuple[int, str] | None]
"""Compiles a file's text without running it: None when it compiles, else the line and the compiler's message
(msgscript.lua.syntax.LuaSyntaxCheck for Lua; the store does not import Lua itself)."""

SETTLE_S = 0.1
"""A changed file whose text does not read as a script is read again this long after, in case it was caught
half-written, before it is reported."""


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


def is_lua_file_name(name: str) -> bool:
    """Whether a file of that name in a directory counts: `*.lua`, not hidden. Editors' temporary and backup files
    (`.name.lua.swp`, `name.lua~`, `.#name.lua`, `4913`, `*.tmp`) do not."""
    return name.endswith(".lua") and not name.startswith(".")


def _lua_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise StoreError(f"failed to read directory {directory}: {exc.strerror or exc}") from exc
    return [directory / e for e in entries if is_lua_file_name(e) and (directory / e).is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise StoreError(f"failed to read script file {path}: {exc.strerror or exc}") from exc


Stamp = tuple[int, int, int, int]
"""What tells a file's versions apart without reading it: inode, size, modification and change times (ns)."""


def _stamp(path: Path) -> Stamp:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def load_directory(directory: Path) -> list[tuple[Path, Stamp, Script | ScriptParseError]]:
    """Every `*.lua` file directly inside, sorted by file name, with its stamp, parsed (or why it does not parse)."""
    found: list[tuple[Path, Stamp, Script | ScriptParseError]] = []
    for path in _lua_files(directory):
        try:
            stamp = _stamp(path)
        except OSError:
            continue  # gone since the listing
        try:
            found.append((path, stamp, parse_script(_read(path))))
        except ScriptParseError as exc:
            found.append((path, stamp, exc))
    return found


def _read_directory(directory: Path) -> list[tuple[Path, Script | ScriptParseError]]:
    """Every `*.lua` file directly inside, sorted by file name, parsed (or why it does not parse)."""
    return [(path, parsed) for path, _, parsed in load_directory(directory)]


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


def replace_holders(directory: Path, holds: Callable[[Script], bool], new_name: str, text: str, what: str) -> Path:
    """Write `text` over the file holding `what` that is served (or to a new file `new_name` when none does),
    remove the other holders, and return the file written."""
    holders = _holders(directory, holds)
    target = holders[-1] if holders else directory / new_name
    if not holders and os.path.lexists(target):
        raise StoreError(f"cannot write {target}: the file exists and does not hold {what}")
    _write_file(target, text)
    _remove_files(holders[:-1])
    return target


def remove_holders(directory: Path, holds: Callable[[Script], bool]) -> list[Path]:
    """Remove every file of the directory whose headers `holds` accepts, and return them (none: an empty list)."""
    holders = _holders(directory, holds)
    _remove_files(holders)
    return holders


def _parse(text: str, what: str) -> Script:
    try:
        return parse_script(text)
    except ScriptParseError as exc:
        raise StoreError(f"cannot write {what}: {exc}") from exc


def script_file(script: Script, text: str | None) -> str:
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


def library_file(name: str, source: str, text: str | None) -> str:
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


@dataclass(frozen=True, slots=True)
class Reading:
    """A file's text as read at `stamp`: the script it holds, or why it is refused (`where`: path, and line)."""

    stamp: Stamp
    script: Script | None
    where: str = ""
    problem: str = ""


def _culprit_line(text: str) -> int:
    """The line of the header that makes `parse_script(text)` fail (the first whose removal changes the error), or
    0. Headers may be anywhere, and each key has its own rules: asking the parser is the one reliable way."""
    lines = text.split("\n")
    try:
        parse_script(text)
    except ScriptParseError as exc:
        error = str(exc)
    else:
        return 0
    for index, line in enumerate(lines):
        if not line.startswith(HEADER_PREFIX):
            continue
        try:
            parse_script("\n".join(lines[:index] + lines[index + 1 :]))
        except ScriptParseError as exc:
            if str(exc) == error:
                continue
        return index + 1
    return 0


def _read_watched(path: Path, stamp: Stamp, kind: str, check: SyntaxCheck | None, *, shared: bool = False) -> Reading:
    """Read a changed file (found at `stamp`) for the watch: refused (with where and why) unless it parses, has the
    headers that key it (subject and name for a script, name for a library), and compiles (a Lua script or library,
    with `check`). A file caught half-written (empty, cut in a header or in the code) is refused by these rules.

    In a script directory `shared` with the libraries, a file with a name and no subject is a library: not a
    script, and no problem either (no `problem`)."""
    try:
        text = _read(path)
    except StoreError as exc:
        return Reading(stamp, None, str(path), str(exc))
    try:
        script = parse_script(text)
    except ScriptParseError as exc:
        line = _culprit_line(text)
        return Reading(stamp, None, f"{path}:{line}" if line else str(path), str(exc))
    if shared and kind == "script" and script.name and not script.subject:
        return Reading(stamp, None, str(path))
    keys = ("subject", "name") if kind == "script" else ("name",)
    missing = [f"{HEADER_PREFIX} {key}:" for key in keys if not getattr(script, key)]
    if missing:
        return Reading(stamp, None, str(path), f"missing header{'s' * (len(missing) > 1)} {', '.join(missing)}")
    if check is not None and (kind == "library" or script.executor == "lua"):
        failure = check(text)
        if failure is not None:
            line, message = failure
            return Reading(stamp, None, f"{path}:{line}" if line else str(path), message)
    return Reading(stamp, script)


def read_changes(
    directory: Path, known: Mapping[Path, Stamp], kind: str, check: SyntaxCheck | None, shared: bool
) -> tuple[list[Path], dict[Path, Reading]]:
    """The files now in the directory (sorted by name), and the readings (`_read_watched`) of those not at their
    `known` stamp. A reading refused is taken again after SETTLE_S if the file changed meanwhile (it was being
    written).

    Raises:
        StoreError: the directory cannot be listed.
    """
    present: list[Path] = []
    readings: dict[Path, Reading] = {}
    for path in _lua_files(directory):
        try:
            stamp = _stamp(path)
        except OSError:
            continue  # gone since the listing
        present.append(path)
        if known.get(path) != stamp:
            readings[path] = _read_watched(path, stamp, kind, check, shared=shared)
    refused = [path for path, reading in readings.items() if reading.problem]
    if refused:
        time.sleep(SETTLE_S)
        for path in refused:
            try:
                settled = _stamp(path)
            except OSError:
                present.remove(path)
                del readings[path]
                continue
            if settled != readings[path].stamp:
                readings[path] = _read_watched(path, settled, kind, check, shared=shared)
    return present, readings
