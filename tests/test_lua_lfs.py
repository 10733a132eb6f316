"""The `lfs` Lua module: gopher-lfs's functions on the execution's own current directory."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from msgscript.executors.base import Executor
from msgscript.lua.modules.lfs import module as lfs_module
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message

PACK = """local lfs = require("lfs")
local function show(...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = tostring((select(i, ...))) end
  return table.concat(out, "|")
end
local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end
"""


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    async with lua_executor(plugins=False) as ex:
        yield ex


async def lua(ex: Executor, body: str) -> str:
    """Run body with `lfs` required, `show(...)` and `write(path, text)`; returns the payload as text."""
    payload = await on_message(ex, PACK + body)
    assert payload is not None
    return payload.decode("utf-8", "surrogateescape")


async def test_attributes_of_a_file(executor: Executor, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"12345")
    os.utime(path, (1_000_000, 2_000_000))
    fields = "dev ino mode nlink uid gid rdev access modification change size blocks blksize"
    body = f"""local a = lfs.attributes("{path}")
        local out = {{}}
        for name in ("{fields}"):gmatch("%S+") do out[#out + 1] = tostring(a[name]) end
        return show(unpack(out))"""
    st = path.stat()
    expected = [
        st.st_dev,
        st.st_ino,
        "file",
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        1_000_000,
        2_000_000,
        int(st.st_ctime),
        5,
        st.st_blocks,
        st.st_blksize,
    ]
    assert await lua(executor, body) == "|".join(str(v) for v in expected)


async def test_attributes_single_field(executor: Executor) -> None:
    body = """write("f.txt", "abc")
        local a = lfs.attributes
        return show(a("f.txt", "size"), a("f.txt", "mode"), a("f.txt", "nope"))"""
    assert await lua(executor, body) == "3|file|nil"


async def test_attributes_of_a_missing_path(executor: Executor) -> None:
    assert await lua(executor, 'return show(lfs.attributes("nope"))') == "nil|stat nope: no such file or directory"
    body = 'return show(lfs.symlinkattributes("nope"))'
    assert await lua(executor, body) == "nil|lstat nope: no such file or directory"


async def test_attribute_modes(executor: Executor, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        body = f"""return show(
            lfs.attributes("{tmp_path}", "mode"),
            lfs.attributes("{tmp_path}/pipe", "mode"),
            lfs.attributes("{tmp_path}/sock", "mode"),
            lfs.attributes("/dev/null", "mode"))"""
        assert await lua(executor, body) == "directory|named pipe|socket|char device"


async def test_symlinks(executor: Executor) -> None:
    body = """write("target.txt", "abc")
        local ok = lfs.link("target.txt", "ln", true)
        local l, a = lfs.symlinkattributes("ln"), lfs.attributes("ln")
        return show(ok, l.mode, l.target, a.mode, a.size, a.target)"""
    assert await lua(executor, body) == "true|link|target.txt|file|3|nil"


async def test_dangling_symlink_has_no_target(executor: Executor) -> None:
    body = 'lfs.link("missing", "ln", true) local l = lfs.symlinkattributes("ln") return show(l.mode, l.target)'
    assert await lua(executor, body) == "link|nil"


async def test_symlink_target_outside_is_absolute(executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "far.txt").write_text("x")
    body = f'lfs.link("{tmp_path}/far.txt", "ln", true) return lfs.symlinkattributes("ln", "target")'
    assert await lua(executor, body) == str((tmp_path / "far.txt").resolve())


async def test_hard_links(executor: Executor) -> None:
    body = """write("a.txt", "abc")
        local ok = lfs.link("a.txt", "b.txt")
        local again, err = lfs.link("a.txt", "b.txt")
        local f = io.open("b.txt") local text = f:read("*a") f:close()
        return show(ok, lfs.attributes("a.txt", "nlink"), text, again, err)"""
    assert await lua(executor, body) == "true|2|abc|nil|link a.txt b.txt: file exists"


async def test_symlink_failure(executor: Executor) -> None:
    body = 'write("x", "") return show(lfs.link("anything", "x", true))'
    assert await lua(executor, body) == "nil|symlink anything x: file exists"


async def test_currentdir_starts_in_the_scratch_directory(executor: Executor) -> None:
    cwd = os.getcwd()
    result = await lua(executor, "return lfs.currentdir()")
    assert Path(result).name.startswith("msgscript-lua-")
    assert not Path(result).exists()  # removed when the execution ended
    assert os.getcwd() == cwd


async def test_chdir_moves_io_and_lfs_together(executor: Executor) -> None:
    cwd = os.getcwd()
    body = """
        local start = lfs.currentdir()
        assert(lfs.mkdir("sub"))
        local moved = lfs.chdir("sub")
        local here = lfs.currentdir()
        write("inside.txt", "from sub")
        assert(lfs.chdir(".."))
        local f = io.open("sub/inside.txt") local text = f:read("*a") f:close()
        return show(moved, here == start .. "/sub", text, lfs.currentdir() == start)"""
    assert await lua(executor, body) == "true|true|from sub|true"
    assert os.getcwd() == cwd


async def test_chdir_lasts_one_execution_only(executor: Executor) -> None:
    assert await lua(executor, 'lfs.mkdir("sub") lfs.chdir("sub") return lfs.currentdir()')
    assert not (await lua(executor, "return lfs.currentdir()")).endswith("/sub")


async def test_chdir_failures(executor: Executor) -> None:
    body = 'write("file", "") return show(lfs.chdir("nope")) .. "|" .. show(lfs.chdir("file"))'
    assert await lua(executor, body) == "nil|chdir nope: no such file or directory|nil|chdir file: not a directory"


async def test_chdir_to_an_absolute_path(executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "seen.txt").write_text("outside")
    body = f'lfs.chdir("{tmp_path}") local f = io.open("seen.txt") return show(lfs.currentdir(), f:read("*a"))'
    assert await lua(executor, body) == f"{tmp_path}|outside"


async def test_dir_lists_the_entries(executor: Executor) -> None:
    body = """write("a.txt", "") write("b.txt", "") lfs.mkdir("c")
        local names = {}
        for name in lfs.dir(".") do names[#names + 1] = name end
        table.sort(names)
        return show(unpack(names))"""
    assert await lua(executor, body) == "a.txt|b.txt|c"


async def test_dir_errors(executor: Executor) -> None:
    body = """write("file", "")
        local a, e1 = pcall(lfs.dir, "nope")
        local b, e2 = pcall(lfs.dir, "file")
        return show(a, e1, b, e2)"""
    assert await lua(executor, body) == "false|open nope: no such file or directory|false|not a directory"


async def test_mkdir(executor: Executor, tmp_path: Path) -> None:
    made = tmp_path / "made"
    body = f'return show(lfs.mkdir("{made}"), lfs.mkdir("{made}"))'
    assert await lua(executor, body) == f"true|nil|mkdir {made}: file exists"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(made.stat().st_mode) == 0o755 & ~umask


async def test_rmdir(executor: Executor) -> None:
    body = """lfs.mkdir("empty") lfs.mkdir("full") write("full/x", "") write("file", "")
        local out = {show(lfs.rmdir("empty")), show(lfs.attributes("empty"))}
        for _, name in ipairs({"full", "file", "nope"}) do out[#out + 1] = show(lfs.rmdir(name)) end
        return table.concat(out, "|")"""
    assert await lua(executor, body) == (
        "true|nil|stat empty: no such file or directory|nil|remove full: directory not empty"
        "|nil|not a directory|nil|stat nope: no such file or directory"
    )


async def test_touch(executor: Executor) -> None:
    before = int(time.time())
    body = """write("f", "")
        local a = lfs.touch("f", 1000, 2000)
        local t1 = lfs.attributes("f")
        local b = lfs.touch("f", 1500)
        local t2 = lfs.attributes("f")
        local c = lfs.touch("f")
        local t3 = lfs.attributes("f")
        return show(a, t1.access, t1.modification, b, t2.access, t2.modification, c, t3.modification)"""
    result = (await lua(executor, body)).split("|")
    assert result[:7] == ["true", "1000", "2000", "true", "1500", "1500", "true"]
    assert int(result[7]) >= before


async def test_touch_does_not_create(executor: Executor) -> None:
    body = 'return show(lfs.touch("nope")) .. "|" .. show(lfs.attributes("nope", "mode"))'
    assert (
        await lua(executor, body)
        == "nil|chtimes nope: no such file or directory|nil|stat nope: no such file or directory"
    )


@pytest.mark.parametrize("function", ["lock", "unlock", "lock_dir", "setmode"])
async def test_unimplemented_functions_raise(executor: Executor, function: str) -> None:
    assert await lua(executor, f'return show(pcall(lfs.{function}, "x"))') == "false|unimplemented function"


async def test_arguments_are_checked(executor: Executor) -> None:
    body = "return show(pcall(lfs.mkdir))"
    assert await lua(executor, body) == "false|bad argument #1 to 'mkdir' (string expected, got nil)"


def test_lfs_scripts_run_on_worker_threads() -> None:
    assert not getattr(lfs_module, "inline_safe", False)


async def test_lfs_through_the_daemon(make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path) -> None:
    scripts = tmp_path / "lfs-scripts"
    scripts.mkdir()
    (scripts / "files.lua").write_text(
        """--* subject: funcs.files
--* name: files
local lfs = require("lfs")
function OnMessage(subject, payload)
    assert(lfs.mkdir("work"))
    assert(lfs.chdir("work"))
    local f = io.open(payload, "w")
    f:write("x")
    f:close()
    local names = {}
    for name in lfs.dir(".") do names[#names + 1] = name end
    return table.concat(names, ",") .. " " .. lfs.attributes(payload, "mode")
end
"""
    )
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR):
        msg = await nc.request("funcs.files", b"note.txt", timeout=10)
    (result,) = Reply.from_json(msg.data).results or ()
    assert (result.payload, result.error) == (b"note.txt file", "")
