"""The `lfs` Lua module (LuaFileSystem as gopher-lfs, the Go msgscript's, provides it).

Relative paths resolve against the execution's current directory, which starts as its scratch directory;
`lfs.chdir` moves that directory for this execution only (the process's working directory never
changes), and `io.open`, `os.remove` and the other `lfs` calls then resolve against the new one.

Successes return true, failures `nil, message` with Go's error texts (`mkdir x: file exists`).
`lfs.dir` raises on a missing or non-directory path and lists entry names without `.` and `..`, as
gopher-lfs does; an iterator holds its directory open until it ends or is closed (or the execution ends),
and an execution may hold 64 open at once. `lock`, `unlock`, `lock_dir` and `setmode` raise `unimplemented function`.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from msgscript.lua.args import check_string, opt_number
from msgscript.lua.contract import ModuleContext
from msgscript.lua.modules.support import HandleLimit
from msgscript.lua.runtime import as_text

_MODES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "link",
    stat.S_IFSOCK: "socket",
    stat.S_IFIFO: "named pipe",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
}


def _time(value: object, default: int, position: int) -> int:
    """touch's optional atime and mtime: whole seconds (numbers are truncated, numeric strings refused)."""
    return int(opt_number(value, position, "touch", default, numeric_strings=False))


def _go_error(op: str, paths: tuple[bytes, ...], exc: OSError) -> str:
    """An OSError as Go's os package words it: `<op> <path>: <reason>` (`link a b: file exists`)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    reason = reason[:1].lower() + reason[1:]
    return f"{op} {' '.join(as_text(p) for p in paths)}: {reason}"


def _mode_name(mode: int) -> str:
    return _MODES.get(stat.S_IFMT(mode), "other")


def _attributes(st: os.stat_result) -> dict[str, object]:
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "mode": _mode_name(st.st_mode),
        "nlink": st.st_nlink,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "rdev": st.st_rdev,
        "access": st.st_atime_ns // 10**9,
        "modification": st.st_mtime_ns // 10**9,
        "change": st.st_ctime_ns // 10**9,
        "size": st.st_size,
        "blocks": st.st_blocks,
        "blksize": st.st_blksize,
    }


def _unimplemented(*_: object) -> None:
    raise RuntimeError("unimplemented function")


class LfsModule:
    """Builds the `lfs` table for one execution, bound to its current directory."""

    name = "lfs"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return the LuaFileSystem functions."""

        def resolve(path: bytes) -> bytes:
            return os.path.join(os.fsencode(ctx.workdir()), path)

        def target_of(path: bytes) -> bytes:
            """Where a link finally leads (relative when the link was named relatively and leads inside the
            current directory); OSError for a dangling link or a loop, which then gets no `target`."""
            real = os.path.realpath(resolve(path), strict=True)
            if os.path.isabs(path):
                return real
            base = os.path.realpath(os.fsencode(ctx.workdir()))
            relative = os.path.relpath(real, base)
            return real if relative == b".." or relative.startswith(b"../") else relative

        def attributes_of(function: str, follow: bool) -> Callable[..., tuple[object, ...]]:
            def attributes(path: object = None, field: object = None, *_: object) -> tuple[object, ...]:
                name = check_string(path, 1, function)
                try:
                    st = os.stat(resolve(name)) if follow else os.lstat(resolve(name))
                except OSError as exc:
                    return (None, _go_error("lstat" if not follow else "stat", (name,), exc))
                table = _attributes(st)
                if table["mode"] == "link":
                    try:
                        table["target"] = target_of(name)
                    except OSError:
                        pass
                if field is not None:
                    return (table.get(as_text(check_string(field, 2, function))),)
                return (table,)

            return attributes

        def chdir(path: object = None, *_: object) -> tuple[object, ...]:
            name = check_string(path, 1, "chdir")
            target = resolve(name)
            try:
                if not stat.S_ISDIR(os.stat(target).st_mode):
                    raise NotADirectoryError(20, os.strerror(20))
                if not os.access(target, os.X_OK):
                    raise PermissionError(13, os.strerror(13))
                ctx.chdir(os.fsdecode(target))
            except OSError as exc:
                return (None, _go_error("chdir", (name,), exc))
            return (True,)

        def currentdir(*_: object) -> tuple[object, ...]:
            return (ctx.workdir(),)

        handles = HandleLimit()

        def dir_(path: object = None, *_: object) -> tuple[object, ...]:
            name = check_string(path, 1, "dir")
            target = resolve(name)
            try:
                if not stat.S_ISDIR(os.stat(target).st_mode):
                    raise RuntimeError("not a directory")
                # Each iterator holds a directory open until it ends, is closed, or the execution ends.
                if not handles.acquire():
                    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
                try:
                    entries = os.scandir(target)
                except OSError:
                    handles.release()
                    raise
            except OSError as exc:
                raise RuntimeError(_go_error("open", (name,), exc)) from None
            done = False

            def finish() -> None:
                nonlocal done
                if not done:
                    done = True
                    entries.close()
                    handles.release()

            ctx.on_close(finish)

            def step(*_: object) -> object:
                entry = next(entries, None)
                if entry is None:
                    finish()
                    return None
                return entry.name

            def close(*_: object) -> bool:
                finish()
                return True

            return (step, {"next": step, "close": close})

        def mkdir(path: object = None, *_: object) -> tuple[object, ...]:
            name = check_string(path, 1, "mkdir")
            try:
                os.mkdir(resolve(name), 0o755)
            except OSError as exc:
                return (None, _go_error("mkdir", (name,), exc))
            return (True,)

        def rmdir(path: object = None, *_: object) -> tuple[object, ...]:
            name = check_string(path, 1, "rmdir")
            target = resolve(name)
            try:
                if not stat.S_ISDIR(os.stat(target).st_mode):
                    return (None, "not a directory")
            except OSError as exc:
                return (None, _go_error("stat", (name,), exc))
            try:
                os.rmdir(target)
            except OSError as exc:
                return (None, _go_error("remove", (name,), exc))
            return (True,)

        def link(old: object = None, new: object = None, symlink: object = None, *_: object) -> tuple[object, ...]:
            source = check_string(old, 1, "link")
            name = check_string(new, 2, "link")
            is_symlink = symlink is not None and symlink is not False
            try:
                if is_symlink:
                    # A symbolic link stores its target as written: relative targets are relative to the link.
                    os.symlink(source, resolve(name))
                else:
                    os.link(resolve(source), resolve(name))
            except OSError as exc:
                return (None, _go_error("symlink" if is_symlink else "link", (source, name), exc))
            return (True,)

        def touch(path: object = None, atime: object = None, mtime: object = None, *_: object) -> tuple[object, ...]:
            name = check_string(path, 1, "touch")
            access = _time(atime, int(time.time()), 2)
            modification = _time(mtime, access, 3)
            try:
                os.utime(resolve(name), (access, modification))
            except OSError as exc:
                return (None, _go_error("chtimes", (name,), exc))
            return (True,)

        return {
            "attributes": attributes_of("attributes", True),
            "symlinkattributes": attributes_of("symlinkattributes", False),
            "chdir": chdir,
            "currentdir": currentdir,
            "dir": dir_,
            "mkdir": mkdir,
            "rmdir": rmdir,
            "link": link,
            "touch": touch,
            "lock": _unimplemented,
            "unlock": _unimplemented,
            "lock_dir": _unimplemented,
            "setmode": _unimplemented,
        }


module = LfsModule()
