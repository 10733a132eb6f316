"""The `filepath` Lua module: Go's path/filepath for Unix paths, with the conventions of gopher-lua-libs.

`abs basename clean dir eval_symlinks from_slash ext glob is_abs join list_separator match rel separator
split split_list to_slash volume_name`. The path functions follow Go's rules exactly (Clean's lexical
rules, Match's `*`, `?`, `[...]` and `\\` syntax with "syntax error in pattern"); `abs`, `glob` and
`eval_symlinks` start relative paths at the execution's directory instead of the process's.
Returns: `abs`, `eval_symlinks` and `rel` give `path` or `"", err`; `match` gives `matched` or
`false, err`; `glob` a list (possibly empty) or `nil, err`; `split` two values.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from msgscript.lua.api import ModuleContext

from ._shared_io import GoFormatter, check_string, errno_text, text

SEPARATOR = "/"
LIST_SEPARATOR = ":"
BAD_PATTERN = "syntax error in pattern"
MAX_LINKS = 255
_NAME_BYTES = 64
"""Charged per directory entry a glob lists, besides its name."""


class BadPatternError(Exception):
    """A malformed Match/Glob pattern (Go's filepath.ErrBadPattern)."""

    def __init__(self) -> None:
        super().__init__(BAD_PATTERN)


def clean(path: str) -> str:
    """The shortest path equivalent to path by purely lexical processing (Go's filepath.Clean)."""
    if not path:
        return "."
    rooted = path.startswith(SEPARATOR)
    kept: list[str] = []
    for element in path.split(SEPARATOR):
        if element in ("", "."):
            continue
        if element == "..":
            if kept and kept[-1] != "..":
                kept.pop()
            elif not rooted:
                kept.append("..")
            continue
        kept.append(element)
    joined = SEPARATOR.join(kept)
    if rooted:
        return SEPARATOR + joined
    return joined or "."


def base(path: str) -> str:
    """The last element of path, trailing slashes removed; `.` for "", `/` for slashes only."""
    if not path:
        return "."
    path = path.rstrip(SEPARATOR)
    if not path:
        return SEPARATOR
    return path[path.rfind(SEPARATOR) + 1 :]


def dir_(path: str) -> str:
    """All but the last element of path, cleaned."""
    return clean(path[: path.rfind(SEPARATOR) + 1])


def ext(path: str) -> str:
    """The extension of the last element (from its last dot), or ""."""
    for i in range(len(path) - 1, -1, -1):
        if path[i] == SEPARATOR:
            break
        if path[i] == ".":
            return path[i:]
    return ""


def split(path: str) -> tuple[str, str]:
    """path split after its last separator: directory (with the separator) and file name."""
    i = path.rfind(SEPARATOR) + 1
    return path[:i], path[i:]


def join(*elements: str) -> str:
    """The non-empty elements joined by separators and cleaned; "" if all are empty."""
    used = [element for element in elements if element]
    return clean(SEPARATOR.join(used)) if used else ""


def is_abs(path: str) -> bool:
    """Whether path is absolute."""
    return path.startswith(SEPARATOR)


def split_list(path: str) -> list[str]:
    """A PATH-like list split at colons; "" is an empty list."""
    return path.split(LIST_SEPARATOR) if path else []


def rel(basepath: str, targpath: str) -> str:
    """A path to targpath relative to basepath, lexically (Go's filepath.Rel).

    Raises:
        ValueError: one is absolute and the other not, or basepath climbs out with `..` further than targpath.
    """
    cleaned_base, cleaned_targ = clean(basepath), clean(targpath)
    if cleaned_base == cleaned_targ:
        return "."
    if cleaned_base == ".":
        cleaned_base = ""
    if cleaned_base.startswith(SEPARATOR) != cleaned_targ.startswith(SEPARATOR):
        raise ValueError(f"Rel: can't make {targpath} relative to {basepath}")
    base_parts, targ_parts = _elements(cleaned_base), _elements(cleaned_targ)
    common = 0
    while common < len(base_parts) and common < len(targ_parts) and base_parts[common] == targ_parts[common]:
        common += 1
    rest_base, rest_targ = base_parts[common:], targ_parts[common:]
    if rest_base and rest_base[0] == "..":
        raise ValueError(f"Rel: can't make {targpath} relative to {basepath}")
    return SEPARATOR.join([".."] * len(rest_base) + rest_targ)


def _elements(path: str) -> list[str]:
    """The elements of a cleaned path; a rooted path starts with an empty element (the root alone is [""])."""
    if not path:
        return []
    if path == SEPARATOR:
        return [""]
    return path.split(SEPARATOR)


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    """Split off the leading stars and the text up to the next star outside brackets."""
    stripped = pattern.lstrip("*")
    star = len(stripped) != len(pattern)
    in_range = False
    i = 0
    while i < len(stripped):
        char = stripped[i]
        if char == "\\":
            i += 1
        elif char == "[":
            in_range = True
        elif char == "]":
            in_range = False
        elif char == "*" and not in_range:
            break
        i += 1
    i = min(i, len(stripped))
    return star, stripped[:i], stripped[i:]


def _class_char(chunk: str) -> tuple[str, str]:
    """One (possibly escaped) character of a bracket class and what follows it."""
    if not chunk or chunk[0] in "-]":
        raise BadPatternError
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPatternError
    rest = chunk[1:]
    if not rest:
        raise BadPatternError
    return chunk[0], rest


def _match_chunk(chunk: str, name: str) -> str | None:
    """Match chunk at the start of name: what is left of name, or None.

    The whole chunk is read even after a mismatch so that a malformed chunk is always reported.
    """
    failed = False
    while chunk:
        if not failed and not name:
            failed = True
        head = chunk[0]
        if head == "[":
            char = ""
            if not failed:
                char, name = name[0], name[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched = False
            ranges = 0
            while True:
                if chunk.startswith("]") and ranges > 0:
                    chunk = chunk[1:]
                    break
                low, chunk = _class_char(chunk)
                high = low
                if chunk[0] == "-":
                    high, chunk = _class_char(chunk[1:])
                if low <= char <= high and char:
                    matched = True
                ranges += 1
            if matched == negated:
                failed = True
        elif head == "?":
            if not failed:
                if name[0] == SEPARATOR:
                    failed = True
                name = name[1:]
            chunk = chunk[1:]
        else:
            if head == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise BadPatternError
            if not failed:
                if chunk[0] != name[0]:
                    failed = True
                name = name[1:]
            chunk = chunk[1:]
    return None if failed else name


def match(pattern: str, name: str) -> bool:
    """Whether name matches the shell pattern (Go's filepath.Match).

    Raises:
        BadPatternError: the pattern is malformed.
    """
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            # A trailing star matches the rest of the name, unless it crosses a separator.
            return SEPARATOR not in name
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star:
            found = False
            i = 0
            while i < len(name) and name[i] != SEPARATOR:
                rest = _match_chunk(chunk, name[i + 1 :])
                if rest is not None and (pattern or not rest):
                    name = rest
                    found = True
                    break
                i += 1
            if found:
                continue
        # No match: still report a malformed remainder of the pattern.
        while pattern:
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return not name


class _NotDirectoryError(Exception):
    """A path element that is a file is followed by more elements."""


def _has_meta(path: str) -> bool:
    return any(char in path for char in "*?[\\")


class _Walker:
    """Glob and EvalSymlinks with relative paths taken from the execution's directory."""

    def __init__(self, workdir: str, charge: Callable[[int], None]) -> None:
        self._workdir = workdir
        self._charge = charge

    def _real(self, path: str) -> str:
        return path if is_abs(path) else os.path.join(self._workdir, path)

    def glob(self, pattern: str) -> list[str]:
        """The names matching pattern, sorted per directory (Go's filepath.Glob); I/O errors are ignored.

        Raises:
            BadPatternError: the pattern is malformed.
        """
        match(pattern, "")
        if not _has_meta(pattern):
            try:
                os.lstat(self._real(pattern))
            except OSError:
                return []
            return [pattern]
        directory, file_pattern = split(pattern)
        directory = self._clean_glob_dir(directory)
        if not _has_meta(directory):
            return self._glob_in(directory, file_pattern, [])
        if directory == pattern:
            raise BadPatternError
        found: list[str] = []
        for parent in self.glob(directory):
            found = self._glob_in(parent, file_pattern, found)
        return found

    @staticmethod
    def _clean_glob_dir(directory: str) -> str:
        if directory == "":
            return "."
        if directory == SEPARATOR:
            return directory
        return directory[:-1]

    def _glob_in(self, directory: str, pattern: str, found: list[str]) -> list[str]:
        names: list[str] = []
        try:
            with os.scandir(self._real(directory)) as entries:
                for entry in entries:
                    # A huge directory's listing counts against the script's memory cap.
                    self._charge(len(entry.name) + _NAME_BYTES)
                    names.append(entry.name)
        except OSError:
            return found
        names.sort()
        for name in names:
            if match(pattern, name):
                found.append(join(directory, name))
        return found

    def eval_symlinks(self, path: str) -> str:
        """path with every symbolic link resolved, cleaned; relative links keep a relative result.

        Raises:
            OSError: a component cannot be read (its filename is the path as built so far).
            _NotDirectoryError: a file is used as a directory.
            RuntimeError: more than MAX_LINKS links.
        """
        root_len = 1 if path.startswith(SEPARATOR) else 0
        dest = path[:root_len]
        links = 0
        end = root_len
        while end < len(path):
            start = end
            while start < len(path) and path[start] == SEPARATOR:
                start += 1
            end = start
            while end < len(path) and path[end] != SEPARATOR:
                end += 1
            element = path[start:end]
            if not element:
                break
            if element == ".":
                continue
            if element == "..":
                # Drop the previous element, unless there is none or it is a ".." that had to be kept.
                cut = dest.rfind(SEPARATOR, root_len)
                if cut == -1 or dest[cut + 1 :] == "..":
                    if len(dest) > root_len:
                        dest += SEPARATOR
                    dest += ".."
                else:
                    dest = dest[:cut]
                continue
            if len(dest) > 0 and not dest.endswith(SEPARATOR):
                dest += SEPARATOR
            dest += element
            try:
                info = os.lstat(self._real(dest))
            except OSError as exc:
                exc.filename = dest
                raise
            if not stat.S_ISLNK(info.st_mode):
                if not stat.S_ISDIR(info.st_mode) and end < len(path):
                    raise _NotDirectoryError("not a directory")
                continue
            links += 1
            if links > MAX_LINKS:
                raise RuntimeError("EvalSymlinks: too many links")
            link = os.readlink(self._real(dest))
            path = link + path[end:]
            if is_abs(link):
                dest, end, root_len = SEPARATOR, 1, 1
            else:
                cut = dest.rfind(SEPARATOR, root_len)
                dest = dest[:root_len] if cut == -1 else dest[:cut]
                end = 0
        return clean(dest)


class FilepathModule:
    """Builds the `filepath` table for one execution."""

    name = "filepath"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return the table of functions."""

        as_text = GoFormatter().text

        def arg(value: object, position: int, function: str) -> str:
            return text(check_string(value, position, function))

        def walker() -> _Walker:
            return _Walker(ctx.workdir(), ctx.charge)

        def abs_(path: object = None, *_: object) -> object:
            name = arg(path, 1, "abs")
            return clean(name) if is_abs(name) else join(ctx.workdir(), name)

        def eval_symlinks(path: object = None, *_: object) -> object:
            name = arg(path, 1, "eval_symlinks")
            try:
                return walker().eval_symlinks(name)
            except OSError as exc:
                return ("", f"lstat {exc.filename}: {errno_text(exc)}")
            except (_NotDirectoryError, RuntimeError) as exc:
                return ("", str(exc))

        def glob(pattern: object = None, *_: object) -> object:
            try:
                return walker().glob(arg(pattern, 1, "glob"))
            except BadPatternError as exc:
                return (None, str(exc))

        def match_(pattern: object = None, name: object = None, *_: object) -> object:
            pattern_text, name_text = arg(pattern, 1, "match"), arg(name, 2, "match")
            try:
                return match(pattern_text, name_text)
            except BadPatternError as exc:
                return (False, str(exc))

        def rel_(basepath: object = None, targpath: object = None, *_: object) -> object:
            base_text, targ_text = arg(basepath, 1, "rel"), arg(targpath, 2, "rel")
            try:
                return rel(base_text, targ_text)
            except ValueError as exc:
                return ("", str(exc))

        def join_(first: object = None, *more: object) -> object:
            path = arg(first, 1, "join")
            if not more:
                return path
            # Go joins one element at a time; cleaning once gives the same path without quadratic work.
            return join(path, *(as_text(value) for value in more))

        def split_(path: object = None, *_: object) -> object:
            return split(arg(path, 1, "split"))

        def unary(function: str, convert: Any) -> Any:
            def call(path: object = None, *_: object) -> object:
                return convert(arg(path, 1, function))

            return call

        def constant(value: str) -> Any:
            return lambda *_: value

        return {
            "abs": abs_,
            "basename": unary("basename", base),
            "clean": unary("clean", clean),
            "dir": unary("dir", dir_),
            "eval_symlinks": eval_symlinks,
            "from_slash": unary("from_slash", str),
            "ext": unary("ext", ext),
            "glob": glob,
            "is_abs": unary("is_abs", is_abs),
            "join": join_,
            "list_separator": constant(LIST_SEPARATOR),
            "match": match_,
            "rel": rel_,
            "separator": constant(SEPARATOR),
            "split": split_,
            "split_list": unary("split_list", split_list),
            "to_slash": unary("to_slash", str),
            "volume_name": unary("volume_name", lambda _: ""),
        }


module = FilepathModule()
