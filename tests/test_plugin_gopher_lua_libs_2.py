"""The gopher-lua-libs modules that touch the OS: cmd, filepath, ioutil, log, storage, tac and tcp.

Scripts run through the daemon's own Lua executor with the bundled plugins loaded; files live in the
execution's scratch directory or in pytest's tmp_path, sockets talk to an asyncio server of the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from msgscript.errors import ScriptError, ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with lua_executor() as executor:
        yield executor


async def lua(executor: Executor, body: str, payload: bytes | str = b"", timeout_s: float = 10.0) -> bytes:
    """Run `body` as OnMessage's body; its string result."""
    result = await on_message(executor, body, payload, timeout_s=timeout_s)
    assert result is not None, "the script returned no string"
    return result


async def lua_error(executor: Executor, body: str) -> str:
    with pytest.raises(ScriptError) as info:
        await on_message(executor, body)
    return str(info.value)


def lua_string(value: str | Path) -> str:
    """A Lua string literal for a path or text."""
    return json.dumps(str(value))


# cmd


async def test_cmd_exec_returns_status_and_both_outputs(ex: Executor) -> None:
    body = """
    local r = require("cmd").exec("echo out; echo err >&2; exit 3")
    return r.status .. "|" .. r.stdout .. "|" .. r.stderr
    """
    assert await lua(ex, body) == b"3|out\n|err\n"


async def test_cmd_exec_runs_in_the_execution_directory(ex: Executor) -> None:
    body = """
    local r = require("cmd").exec("pwd")
    return r.status .. "|" .. r.stdout .. "|" .. require("filepath").abs(".")
    """
    status, cwd, workdir = (await lua(ex, body)).decode().split("|")
    assert status == "0"
    assert cwd.strip() == workdir
    assert Path(workdir).name.startswith("msgscript-lua-")
    assert workdir != os.getcwd()


async def test_cmd_exec_status_of_a_killed_command_is_minus_one(ex: Executor) -> None:
    assert await lua(ex, 'return tostring(require("cmd").exec("kill -9 $$").status)') == b"-1"


async def test_cmd_exec_timeout_kills_the_whole_process_group(ex: Executor, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    command = f"sleep 30 & echo $! > {pid_file}; wait"
    body = f"""
    local r, err = require("cmd").exec({lua_string(command)}, 0.5)
    return tostring(r) .. "|" .. err
    """
    started = time.monotonic()
    assert await lua(ex, body) == b"nil|execute timeout"
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    for _ in range(100):
        if not _is_running(child):
            break
        await asyncio.sleep(0.05)
    assert not _is_running(child), "the background child outlived the timeout"


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_cmd_exec_never_outlasts_the_script_deadline(ex: Executor) -> None:
    started = time.monotonic()
    with pytest.raises(ScriptTimeout):
        await on_message(ex, 'return require("cmd").exec("sleep 30", 60).stdout', timeout_s=0.5)
    assert time.monotonic() - started < 10


async def test_cmd_exec_checks_its_arguments(ex: Executor) -> None:
    error = await lua_error(ex, 'local r = require("cmd").exec() return r')
    assert "bad argument #1 to 'exec' (string expected, got nil)" in error
    error = await lua_error(ex, 'local r = require("cmd").exec("true", "soon") return r')
    assert "bad argument #2 to 'exec' (number expected, got string)" in error


# filepath


async def fp_cases(executor: Executor, expression: str, cases: list[list[Any]]) -> list[str]:
    """Evaluate `expression` (over `a`, `b`) for each case; each result as `value|err` text."""
    body = f"""
    local json, filepath = require("json"), require("filepath")
    local out = {{}}
    for i, case in ipairs(json.decode(payload)) do
      local a, b = case[1], case[2]
      local value, err = {expression}
      out[i] = tostring(value) .. "|" .. tostring(err)
    end
    return json.encode(out)
    """
    return list(json.loads(await lua(executor, body, json.dumps(cases))))


MATCH_CASES = [
    ("abc", "abc", "true"),
    ("*", "abc", "true"),
    ("*c", "abc", "true"),
    ("a*", "a", "true"),
    ("a*", "abc", "true"),
    ("a*", "ab/c", "false"),
    ("a*/b", "abc/b", "true"),
    ("a*/b", "a/c/b", "false"),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", "true"),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", "true"),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", "false"),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", "false"),
    ("a*b?c*x", "abxbbxdbxebxczzx", "true"),
    ("a*b?c*x", "abxbbxdbxebxczzy", "false"),
    ("ab[c]", "abc", "true"),
    ("ab[b-d]", "abc", "true"),
    ("ab[e-g]", "abc", "false"),
    ("ab[^c]", "abc", "false"),
    ("ab[^b-d]", "abc", "false"),
    ("ab[^e-g]", "abc", "true"),
    ("a\\*b", "a*b", "true"),
    ("a\\*b", "ab", "false"),
    ("a?b", "a☺b", "true"),
    ("a[^a]b", "a☺b", "true"),
    ("a???b", "a☺b", "false"),
    ("[a-ζ]*", "α", "true"),
    ("*[a-ζ]", "A", "false"),
    ("a?b", "a/b", "false"),
    ("a*b", "a/b", "false"),
    ("[\\]a]", "]", "true"),
    ("[\\-]", "-", "true"),
    ("[x\\-]", "-", "true"),
    ("[x\\-]", "z", "false"),
    ("[\\-x]", "a", "false"),
    ("*x", "xxx", "true"),
    ("/*/bar", "/foo/bar", "true"),
    ("/*/bar", "/yada/yada", "false"),
    (".*", ".hidden", "true"),
    ("[]a]", "]", "bad"),
    ("[-]", "-", "bad"),
    ("[x-]", "x", "bad"),
    ("[-x]", "x", "bad"),
    ("\\", "a", "bad"),
    ("[a-b-c]", "a", "bad"),
    ("[", "a", "bad"),
    ("[^", "a", "bad"),
    ("[^bc", "a", "bad"),
    ("a[", "a", "bad"),
    ("a[", "ab", "bad"),
    ("a[", "x", "bad"),
    ("a/b[", "x", "bad"),
]


async def test_filepath_match_follows_go(ex: Executor) -> None:
    got = await fp_cases(ex, "filepath.match(a, b)", [[p, s] for p, s, _ in MATCH_CASES])
    want = [
        "false|syntax error in pattern" if expected == "bad" else f"{expected}|nil" for _, _, expected in MATCH_CASES
    ]
    assert got == want


CLEAN_CASES = [
    ("", "."),
    ("abc/def/", "abc/def"),
    (".", "."),
    ("..", ".."),
    ("../../abc", "../../abc"),
    ("/", "/"),
    ("./", "."),
    ("abc//def//ghi", "abc/def/ghi"),
    ("//abc", "/abc"),
    ("///abc//", "/abc"),
    ("abc/./def", "abc/def"),
    ("/./abc/def", "/abc/def"),
    ("abc/def/ghi/../jkl", "abc/def/jkl"),
    ("abc/def/../..", "."),
    ("/abc/def/../..", "/"),
    ("abc/def/../../..", ".."),
    ("/abc/def/../../..", "/"),
    ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
    ("/../abc", "/abc"),
    ("abc/../../././../def", "../../def"),
]


async def test_filepath_clean_follows_go(ex: Executor) -> None:
    got = await fp_cases(ex, "filepath.clean(a)", [[p] for p, _ in CLEAN_CASES])
    assert got == [f"{want}|nil" for _, want in CLEAN_CASES]


REL_CASES = [
    ("a/b", "a/b", "."),
    ("a/b/.", "a/b", "."),
    ("./a/b", "a/b", "."),
    ("ab/cd", "ab/cde", "../cde"),
    ("ab/cd", "ab/c", "../c"),
    ("a/b", "a/b/c/d", "c/d"),
    ("a/b", "a/b/../c", "../c"),
    ("a/b/../c", "a/b", "../b"),
    ("a/b/c", "a/c/d", "../../c/d"),
    ("a/b/c/d/", "a/b/", "../.."),
    ("../../a/b", "../../a/b/c/d", "c/d"),
    ("/a/b", "/c/d", "../../c/d"),
    ("/foo/bar", "/foo/bar/baz", "baz"),
    ("/", "/a/b", "a/b"),
    ("/a", "/", ".."),
    (".", "a/b", "a/b"),
    (".", "..", ".."),
]
REL_ERRORS = [("..", "."), ("..", "a"), ("../..", ".."), ("a", "/a"), ("/foo/bar", "yada/yada/baz")]


async def test_filepath_rel_follows_go(ex: Executor) -> None:
    cases = [[b, t] for b, t, _ in REL_CASES] + [[b, t] for b, t in REL_ERRORS]
    got = await fp_cases(ex, "filepath.rel(a, b)", cases)
    want = [f"{expected}|nil" for _, _, expected in REL_CASES]
    want += [f"|Rel: can't make {t} relative to {b}" for b, t in REL_ERRORS]
    assert got == want


async def test_filepath_path_pieces(ex: Executor) -> None:
    body = """
    local f = require("filepath")
    local d, n = f.split("/foo/bar/baz")
    local d2, n2 = f.split("nodir")
    local list = f.split_list("foo/bar/baz:/yada/yada")
    return table.concat({
      f.basename(""), f.basename("/"), f.basename("////"), f.basename("a/b/c.x/"), f.basename("/."),
      f.dir(""), f.dir("/"), f.dir("/foo"), f.dir("x/"), f.dir("a/b/c.x"), f.dir("a//b"),
      f.ext("path.pb.go"), "[" .. f.ext("a.dir/b") .. "]", f.ext(".bashrc"),
      d, n, "[" .. d2 .. "]", n2,
      f.join("1", "2", "3"), "[" .. f.join("", "") .. "]", f.join("a", "", "b"), f.join("/", "../x"),
      f.join("a", 1, true),
      tostring(f.is_abs("/foo/bar")), tostring(f.is_abs("foo/bar")), tostring(f.is_abs("")),
      #list .. ":" .. list[1] .. ":" .. list[2], tostring(#f.split_list("")),
      f.to_slash("a/b"), f.from_slash("a/b"), "[" .. f.volume_name("/a/b") .. "]",
      f.separator(), f.list_separator(),
    }, " ")
    """
    assert (await lua(ex, body)).decode().split(" ") == [
        ".", "/", "/", "c.x", ".",
        ".", "/", "/", "x", "a/b", "a",
        ".go", "[]", ".bashrc",
        "/foo/bar/", "baz", "[]", "nodir",
        "1/2/3", "[]", "a/b", "/x", "a/1/true",
        "true", "false", "false",
        "2:foo/bar/baz:/yada/yada", "0",
        "a/b", "a/b", "[]",
        "/", ":",
    ]  # fmt: skip


async def test_filepath_abs_starts_at_the_execution_directory(ex: Executor) -> None:
    body = """
    local f = require("filepath")
    local pwd = require("cmd").exec("pwd").stdout
    return f.abs("sub/../x.txt") .. "|" .. f.abs("/a/../b//c") .. "|" .. f.abs("") .. "|" .. pwd
    """
    relative, absolute, empty, cwd = (await lua(ex, body)).decode().split("|")
    assert relative == cwd.strip() + "/x.txt"
    assert absolute == "/b/c"
    assert empty == cwd.strip()


async def test_filepath_glob_lists_matches_sorted(ex: Executor, tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", ".hidden.txt", "c.log"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("x")
    body = f"""
    local f = require("filepath")
    local root = {lua_string(tmp_path)}
    local ioutil = require("ioutil")
    require("lfs").mkdir("here")
    ioutil.write_file("here/one.md", "1")
    ioutil.write_file("two.md", "2")
    local function show(list, err) if list == nil then return "nil:" .. err end return table.concat(list, ",") end
    return table.concat({{
      show(f.glob(root .. "/*.txt")), show(f.glob(root .. "/*/*.txt")), show(f.glob(root .. "/?.log")),
      show(f.glob(root .. "/nothing*")), show(f.glob("*.md")), show(f.glob("*/*.md")), show(f.glob("two.md")),
      show(f.glob("missing.md")), show(f.glob("[")),
    }}, ";")
    """
    root = str(tmp_path)
    assert (await lua(ex, body)).decode().split(";") == [
        f"{root}/.hidden.txt,{root}/a.txt,{root}/b.txt",
        f"{root}/sub/d.txt",
        f"{root}/c.log",
        "",
        "two.md",
        "here/one.md",
        "two.md",
        "",
        "nil:syntax error in pattern",
    ]


async def test_filepath_eval_symlinks(ex: Executor, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "inner").mkdir(parents=True)
    (real / "inner" / "file").write_text("x")
    (tmp_path / "abs_link").symlink_to(real)
    (real / "rel_link").symlink_to("inner")
    (tmp_path / "chain").symlink_to("abs_link/rel_link")
    body = f"""
    local f = require("filepath")
    local root = {lua_string(tmp_path)}
    require("cmd").exec("mkdir -p d/e && ln -s d/e l && ln -s ../up d/up")
    local function show(path, err) return path .. "~" .. tostring(err) end
    return table.concat({{
      show(f.eval_symlinks(root .. "/abs_link/inner/file")), show(f.eval_symlinks(root .. "/chain/file")),
      show(f.eval_symlinks(root .. "/real/rel_link/../inner")), show(f.eval_symlinks("l")),
      show(f.eval_symlinks("l/../d/./e")), show(f.eval_symlinks("l/../../d/./e")),
      show(f.eval_symlinks(root .. "/missing/x")), show(f.eval_symlinks(root .. "/real/inner/file/x")),
      show(f.eval_symlinks("d/up")),
    }}, ";")
    """
    root = str(tmp_path)
    assert (await lua(ex, body)).decode().split(";") == [
        f"{root}/real/inner/file~nil",
        f"{root}/real/inner/file~nil",
        f"{root}/real/inner~nil",
        "d/e~nil",
        "~lstat d/d: no such file or directory",  # ".." after a link goes up from the link's target
        "d/e~nil",
        f"~lstat {root}/missing: no such file or directory",
        "~not a directory",
        "~lstat d/../up: no such file or directory",
    ]


async def test_filepath_checks_its_arguments(ex: Executor) -> None:
    error = await lua_error(ex, 'local x = require("filepath").basename({}) return x')
    assert "bad argument #1 to 'basename' (string expected, got table)" in error
    error = await lua_error(ex, 'local x = require("filepath").rel("a") return x')
    assert "bad argument #2 to 'rel' (string expected, got nil)" in error


# ioutil


async def test_ioutil_write_then_read_a_file(ex: Executor) -> None:
    body = r"""
    local ioutil = require("ioutil")
    local data = "line\n\0\255 end"
    local err = ioutil.write_file("data.bin", data)
    local again = ioutil.write_file("data.bin", "short")
    local read, rerr = ioutil.read_file("data.bin")
    return tostring(err) .. tostring(again) .. tostring(rerr) .. "|" .. read .. "|" .. io.open("data.bin"):read("*a")
    """
    assert await lua(ex, body) == b"nilnilnil|short|short"


async def test_ioutil_keeps_binary_content(ex: Executor, tmp_path: Path) -> None:
    target = tmp_path / "blob"
    data = bytes(range(256))
    body = f'local ioutil = require("ioutil") ioutil.write_file({lua_string(target)}, payload) return "ok"'
    assert await lua(ex, body, data) == b"ok"
    assert target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    body = f'return (require("ioutil").read_file({lua_string(target)}))'
    assert await lua(ex, body) == data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_ioutil_errors_name_the_path(ex: Executor) -> None:
    body = """
    local ioutil = require("ioutil")
    require("lfs").mkdir("dir")
    local a, e1 = ioutil.read_file("missing.txt")
    local b, e2 = ioutil.read_file("dir")
    local e3 = ioutil.write_file("no/such/file", "x")
    return tostring(a) .. tostring(b) .. "|" .. e1 .. "|" .. e2 .. "|" .. e3
    """
    assert (await lua(ex, body)).decode().split("|") == [
        "nilnil",
        "open missing.txt: no such file or directory",
        "read dir: is a directory",
        "open no/such/file: no such file or directory",
    ]


async def test_ioutil_copy_between_files_and_tables(ex: Executor) -> None:
    body = """
    local ioutil = require("ioutil")
    ioutil.write_file("src.txt", string.rep("0123456789", 10000))
    local src, dst = io.open("src.txt", "rb"), io.open("dst.txt", "wb")
    local err = ioutil.copy(dst, src)
    src:close() dst:close()
    local copied = ioutil.read_file("dst.txt")

    local chunks = {}
    local sink = {write = function(self, s) chunks[#chunks + 1] = s end}
    local pieces = {"ab", "cd", "ef"}
    local source = {read = function(self, n) return table.remove(pieces, 1) end}
    local err2 = ioutil.copy(sink, source)
    return tostring(err) .. "|" .. #copied .. "|" .. tostring(copied == string.rep("0123456789", 10000))
      .. "|" .. tostring(err2) .. "|" .. table.concat(chunks, ",")
    """
    assert await lua(ex, body) == b"nil|100000|true|nil|ab,cd,ef"


async def test_ioutil_copyn_copies_n_bytes_or_reports_eof(ex: Executor) -> None:
    body = """
    local ioutil = require("ioutil")
    ioutil.write_file("src.txt", "hello world")
    local out = {}
    local sink = {write = function(self, s) out[#out + 1] = s end}
    local e1 = ioutil.copyn(sink, io.open("src.txt"), 5)
    local first = table.concat(out)
    out = {}
    local e2 = ioutil.copyn(sink, io.open("src.txt"), 50)
    local e3 = ioutil.copyn(sink, io.open("src.txt"), 0)
    return first .. "|" .. tostring(e1) .. "|" .. table.concat(out) .. "|" .. tostring(e2) .. "|" .. tostring(e3)
    """
    assert await lua(ex, body) == b"hello|nil|hello world|EOF|nil"


async def test_ioutil_copy_reports_reader_and_writer_failures(ex: Executor) -> None:
    body = """
    local ioutil = require("ioutil")
    local broken = {read = function() error("reader broke", 0) end}
    local refusing = {write = function() error("writer broke", 0) end}
    local fine = {read = function() return "x" end, write = function() end}
    return ioutil.copy(fine, broken) .. "|" .. ioutil.copyn(refusing, fine, 3)
    """
    assert await lua(ex, body) == b"reader broke|writer broke"


async def test_ioutil_copy_checks_its_arguments(ex: Executor) -> None:
    error = await lua_error(ex, 'local e = require("ioutil").copy({}, {read = function() end}) return e')
    assert "<string>:2: bad argument #1 to 'copy' (expected writer)" in error
    error = await lua_error(ex, 'local e = require("ioutil").copy({write = function() end}, 5) return e')
    assert "bad argument #2 to 'copy' (expected reader)" in error
    error = await lua_error(ex, 'local e = require("ioutil").copyn({write = print}, {read = print}) return e')
    assert "bad argument #3 to 'copyn' (number expected, got nil)" in error


# log

LINE_TIME = r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}"


async def test_log_formats_like_go(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    body = f"""
    local log = require("log")
    local l = log.new({lua_string(path)})
    l:println("1", 2)
    l:set_prefix("[INFO] ")
    l:printf("%s %.2f", "1", 2.2)
    l:print("ok", " ", 1.2)
    l:print(1, 2, "x", true, nil)
    l:println("a", 1, nil, true)
    l:printf("%5d|%-4s|%05.1f|%q|%x|%t|%v|%%|%d", 42, "ab", 3.14159, "q\\n", "hi", false, 7)
    l:printf("%d %s", 1.5, "extra", 9)
    l:print()
    return tostring(l:close())
    """
    assert await lua(ex, body) == b"nil"
    assert path.read_text().splitlines() == [
        "1 2",
        "[INFO] 1 2.20",
        "[INFO] ok 1.2",
        "[INFO] 1 2xtrue nil",
        "[INFO] a 1 nil true",
        '[INFO]    42|ab  |003.1|"q\\n"|6869|false|7|%|%!d(MISSING)',
        "[INFO] %!d(lua.LNumber=1.5) extra%!(EXTRA lua.LNumber=9)",
        "[INFO] ",
    ]


async def test_log_flags_add_date_time_and_script_line(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "flags.log"
    body = f"""
    local l = require("log").new({lua_string(path)}, "P ", {{date = true, time = true}})
    l:print("plain")
    l:set_flags({{date = true, time = true, microseconds = true, msgprefix = true}})
    l:print("micro")
    l:set_flags({{longfile = true}})
    l:printf("ok\\n")
    l:print("ok")
    l:println("ok")
    l:set_flags({{shortfile = true, utc = true, time = true}})
    l:print("short")
    l:close()
    return "done"
    """
    assert await lua(ex, body) == b"done"
    lines = path.read_text().splitlines()
    assert re.fullmatch(rf"P {LINE_TIME} plain", lines[0])
    assert re.fullmatch(rf"{LINE_TIME}\.\d{{6}} P micro", lines[1])
    # Line 1 of the chunk is `function OnMessage(...)`, line 2 the body's first (empty) line.
    assert lines[2:5] == ["P <string>:8: ok", "P <string>:9: ok", "P <string>:10: ok"]
    found = re.fullmatch(r"P (\d{2}):(\d{2}):(\d{2}) <string>:12: short", lines[5])
    assert found is not None
    now = datetime.datetime.now(datetime.UTC)
    logged = now.replace(hour=int(found[1]), minute=int(found[2]), second=int(found[3]))
    assert abs((now - logged).total_seconds()) < 120 or abs((now - logged).total_seconds()) > 86400 - 120


async def test_log_writes_to_stdout_by_default_and_to_stderr_on_request(
    ex: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
    local log = require("log")
    log.new():print("to stdout")
    local l = log.new("STDERR", "E: ")
    l:print("to stderr")
    l:set_output("-")
    l:print("dash")
    l:set_output("STDOUT")
    l:print("named")
    return "done"
    """
    assert await lua(ex, body) == b"done"
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["to stdout", "E: dash", "E: named"]
    assert captured.err.splitlines() == ["E: to stderr"]


async def test_log_set_output_switches_files_and_close_reports_twice(ex: Executor) -> None:
    body = """
    local log, ioutil = require("log"), require("ioutil")
    local l = log.new("first.log")
    l:print("one")
    local err = l:set_output("second.log")
    l:print("two")
    local c1, c2 = l:close(), l:close()
    local bad = l:set_output("no/such/dir.log")
    local other, open_err = log.new("no/such/dir.log")
    other:print("falls back to stdout")
    return ioutil.read_file("first.log") .. ioutil.read_file("second.log") .. tostring(err) .. "|"
      .. tostring(c1) .. "|" .. c2 .. "|" .. bad .. "|" .. open_err
    """
    assert (await lua(ex, body)).decode().split("|") == [
        "one\ntwo\nnil",
        "nil",
        "close second.log: file already closed",
        "open no/such/dir.log: no such file or directory",
        "open no/such/dir.log: no such file or directory",
    ]


async def test_log_file_left_open_is_closed_at_the_end(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "open.log"
    assert await lua(ex, f'require("log").new({lua_string(path)}):print("kept") return "x"') == b"x"
    assert await lua(ex, f'require("log").new({lua_string(path)}):print("appended") return "x"') == b"x"
    assert path.read_text() == "kept\nappended\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())


async def test_log_checks_its_arguments(ex: Executor) -> None:
    error = await lua_error(ex, 'local l = require("log").new() l:set_flags({date = "yes"}) return "x"')
    assert "bad argument #1 to 'set_flags' (date: must be bool)" in error
    error = await lua_error(ex, 'local l = require("log").new() l.print("x") return "x"')
    assert "<string>:2: bad argument #1 to 'print' (logger_ud expected, got string)" in error
    error = await lua_error(ex, 'local l = require("log").new() l:printf() return "x"')
    assert "<string>:2: bad argument #2 to 'printf' (string expected, got nil)" in error
    error = await lua_error(ex, 'local l = require("log").new("-", "p", 5) return "x"')
    assert "bad argument #3 to 'new' (table expected, got number)" in error


# storage


def storage_script(path: Path, body: str) -> str:
    return f'local s, err = require("storage").open({lua_string(path)})\nassert(s, err)\n{body}'


async def test_storage_set_get_keys_dump(ex: Executor, tmp_path: Path) -> None:
    body = storage_script(
        tmp_path / "db.json",
        """
        local json = require("json")
        assert(s:set("list", {"one", "two", 1}, 60) == nil)
        s:set("map", {a = {b = true}})
        s:set("number", 10.64, nil)
        s:set("nothing", nil)
        local list, found = s:get("list")
        local gone, found2 = s:get("absent")
        local nothing, found3 = s:get("nothing")
        local dump = s:dump()
        return json.encode({list, found, tostring(gone), found2, tostring(nothing), found3, s:keys(),
          dump.map.a.b, dump.number, tostring(s:sync()), tostring(s:close())})
        """,
    )
    assert json.loads(await lua(ex, body)) == [
        ["one", "two", 1],
        True,
        "nil",
        False,
        "nil",
        True,
        ["list", "map", "nothing", "number"],
        True,
        10.64,
        "nil",
        "nil",
    ]


async def test_storage_persists_across_executions_in_the_go_format(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "db.json"
    # Written without sync or close: the end of the execution writes the file.
    assert await lua(ex, storage_script(path, 's:set("k", {x = 1}) s:set("short", "v", 0.3) return "set"')) == b"set"
    document = json.loads(path.read_text())
    assert set(document["data"]) == {"k", "short"}
    assert base64.b64decode(document["data"]["k"]["value"]) == b'{"x":1}'
    assert document["data"]["k"]["max_valid_at"] == 2**63 - 1
    assert document["data"]["short"]["max_valid_at"] < time.time_ns() + 10**9
    await asyncio.sleep(0.5)
    body = storage_script(path, 'local v, found = s:get("k") local w, f2 = s:get("short") return v.x .. tostring(f2)')
    assert await lua(ex, body) == b"1false"
    # Expired keys leave the file at the next sync.
    assert set(json.loads(path.read_text())["data"]) == {"k"}


async def test_storage_expired_keys_vanish_from_get_keys_and_dump(ex: Executor, tmp_path: Path) -> None:
    body = storage_script(
        tmp_path / "ttl.json",
        """
        s:set("brief", "x", 0.2)
        s:set("long", "y", 60)
        local before = #s:keys()
        require("cmd").exec("sleep 0.4")
        local v, found = s:get("brief")
        local dump = s:dump()
        return before .. "|" .. tostring(v) .. tostring(found) .. "|" .. table.concat(s:keys(), ",")
          .. "|" .. tostring(dump.brief) .. dump.long
        """,
    )
    assert await lua(ex, body) == b"2|nilfalse|long|nily"


async def test_storage_reads_a_file_written_by_go(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "go.json"
    future = time.time_ns() + 60 * 10**9
    entries = {
        "name": {"value": base64.b64encode(b'"gopher"').decode(), "max_valid_at": future},
        "old": {"value": base64.b64encode(b"1").decode(), "max_valid_at": 1},
    }
    path.write_text(json.dumps({"data": entries}))
    body = storage_script(path, 'local v = s:get("name") local o, f = s:get("old") return v .. tostring(f)')
    assert await lua(ex, body) == b"gopherfalse"


async def test_storage_is_shared_by_concurrent_executions(ex: Executor, tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    runs = [
        lua(ex, storage_script(path, f's:set("key{i}", {i}) require("cmd").exec("sleep 0.3") return "ok"'))
        for i in range(6)
    ]
    assert await asyncio.gather(*runs) == [b"ok"] * 6
    body = storage_script(path, 'return table.concat(s:keys(), ",")')
    assert await lua(ex, body) == b",".join(f"key{i}".encode() for i in range(6))
    assert set(json.loads(path.read_text())["data"]) == {f"key{i}" for i in range(6)}


async def test_storage_errors(ex: Executor, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "empty.json").write_text("")
    body = f"""
    local storage = require("storage")
    local a, e1 = storage.open({lua_string(tmp_path / "bad.json")})
    local b, e2 = storage.open({lua_string(tmp_path / "empty.json")})
    local c, e3 = storage.open({lua_string(tmp_path / "x.json")}, "badger")
    local d, e4 = storage.open({lua_string(tmp_path / "no" / "x.json")})
    local s = storage.open({lua_string(tmp_path / "ok.json")})
    local e5 = s:set("f", function() end)
    return table.concat({{tostring(a), e1, e2, e3, e4, e5}}, "|")
    """
    parts = (await lua(ex, body)).decode().split("|")
    assert parts[0] == "nil"
    assert parts[1].startswith(f"invalid storage file {tmp_path}/bad.json")
    assert parts[2:] == [
        "unexpected end of JSON input",
        "driver not found",
        f"open {tmp_path}/no/x.json: no such file or directory",
        "cannot encode function to JSON",
    ]
    error = await lua_error(ex, storage_script(tmp_path / "t.json", 's:set("k", 1, "soon") return "x"'))
    assert "bad argument #4 to 'set' (must be integer or nil)" in error


# tac


async def tac_lines(executor: Executor, content: bytes) -> list[str]:
    body = """
    require("ioutil").write_file("input.txt", payload)
    local scanner, err = require("tac").open("input.txt")
    assert(scanner, err)
    local out = {}
    while true do
      local line = scanner:line()
      if line == nil then break end
      out[#out + 1] = line
    end
    scanner:close()
    return require("json").encode(out)
    """
    return list(json.loads(await lua(executor, body, content)))


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"1\n2\n3\n", ["3", "2", "1"]),
        (b"1\n2\n3", ["3", "2", "1"]),
        (b"", []),
        (b"\n", [""]),
        (b"a\n\nb\n\n", ["", "b", "", "a"]),
        (b"dos\r\nlines\r\n", ["lines", "dos"]),
        (b"only", ["only"]),
    ],
)
async def test_tac_reads_lines_backwards(ex: Executor, content: bytes, lines: list[str]) -> None:
    assert await tac_lines(ex, content) == lines


async def test_tac_reads_a_file_larger_than_its_block(ex: Executor) -> None:
    lines = [f"line {i} " + "x" * (i % 300) for i in range(3000)]
    assert await tac_lines(ex, "\n".join(lines).encode()) == lines[::-1]


async def test_tac_open_errors_and_closed_scanner(ex: Executor) -> None:
    body = """
    local tac = require("tac")
    local none, err = tac.open("missing.txt")
    require("ioutil").write_file("f.txt", "a\\nb\\n")
    local s = tac.open("f.txt")
    local first = s:line()
    s:close()
    return tostring(none) .. "|" .. err .. "|" .. first .. "|" .. tostring(s:line())
    """
    assert await lua(ex, body) == b"nil|open missing.txt: no such file or directory|b|nil"


# tcp


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler, connections: int = 1) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 and a free port, running `handler` per connection.

    On exit it waits for the `connections` the test makes to be accepted and handled (the scripts have
    closed their ends by then), so that no socket outlives the test.
    """
    handlers: list[asyncio.Task[Any]] = []
    all_accepted = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.append(task)
        if len(handlers) >= connections:
            all_accepted.set()
        try:
            await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            if connections:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_accepted.wait(), 5)
            if handlers:
                _, pending = await asyncio.wait(handlers, timeout=5)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)


async def ping_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4):
        if data == b"ping":
            writer.write(b"pong\n")
        else:
            writer.write(data.upper())
        await writer.drain()


async def test_tcp_ping_pong_and_reads(ex: Executor) -> None:
    async with tcp_server(ping_pong) as port:
        body = f"""
        local conn, err = require("tcp").open("127.0.0.1:{port}")
        assert(conn, err)
        conn:write("ping")
        local line = conn:read("*l")
        conn:write("ping")
        local bytes = {{}}
        for i = 1, 5 do bytes[i] = conn:read(1) end
        conn:write("abcd")
        local rest = conn:read()
        conn:close()
        return line .. "|" .. table.concat(bytes, ",") .. "|" .. rest
        """
        assert await lua(ex, body) == b"pong|p,o,n,g,\n|ABCD"


async def test_tcp_read_all_until_the_peer_closes(ex: Executor) -> None:
    async def talk_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(b"first line\nsecond")
        await writer.drain()

    async with tcp_server(talk_then_close) as port:
        body = f"""
        local conn = require("tcp").open(":{port}")
        conn:write("hello")
        local line = conn:read("*l")
        local rest = conn:read("*a")
        return line .. "|" .. rest .. "|" .. tostring(conn:read(10)) .. "|" .. tostring(conn:read("*l"))
        """
        assert await lua(ex, body) == b"first line|second|nil|nil"


async def test_tcp_read_number(ex: Executor) -> None:
    async def numbers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"  42.5")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"\n-7 0x10 rest")
        await writer.drain()

    async with tcp_server(numbers) as port:
        body = f"""
        local conn = require("tcp").open("127.0.0.1:{port}")
        local a, b, c = conn:read("*n"), conn:read("*n"), conn:read("*n")
        local rest = conn:read("*a")
        local last = conn:read("*n")
        conn:close()
        return a .. "," .. b .. "," .. c .. "," .. rest .. "," .. last
        """
        assert await lua(ex, body) == b"42.5,-7,16, rest,0"


async def test_tcp_timeout_fields(ex: Executor) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with tcp_server(silent) as port:
        body = f"""
        local conn = require("tcp").open("127.0.0.1:{port}")
        local defaults = table.concat({{conn.dialTimeout, conn.writeTimeout, conn.readTimeout, conn.closeTimeout}}, ",")
        conn.closeTimeout = 2
        conn.readTimeout = 0.2
        conn.other = 5
        local ok, err = pcall(conn.read, conn, 10)
        return defaults .. "|" .. conn.closeTimeout .. "," .. conn.readTimeout .. "|" .. tostring(conn.other)
          .. "|" .. tostring(ok) .. "|" .. err
        """
        started = time.monotonic()
        fields, changed, other, ok, error = (await lua(ex, body)).decode().split("|")
        assert time.monotonic() - started < 5
    assert (fields, changed, other, ok) == ("5,1,1,1", "2,0.2", "nil", "false")
    assert re.fullmatch(rf"read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{port}: i/o timeout", error)


async def test_tcp_open_failures(ex: Executor) -> None:
    async with tcp_server(ping_pong, connections=0) as port:
        pass  # the port is free again
    body = f"""
    local tcp = require("tcp")
    local a, e1 = tcp.open("127.0.0.1:{port}")
    local b, e2 = tcp.open("127.0.0.1")
    local c, e3 = tcp.open("host.invalid:80", 2)
    return tostring(a) .. tostring(b) .. tostring(c) .. "|" .. e1 .. "|" .. e2 .. "|" .. e3
    """
    results = (await lua(ex, body)).decode().split("|")
    assert results[:3] == [
        "nilnilnil",
        f"dial tcp 127.0.0.1:{port}: connect: connection refused",
        "dial tcp: address 127.0.0.1: missing port in address",
    ]
    # "i/o timeout" where the resolver cannot answer within the dial timeout.
    assert results[3] in ("dial tcp: lookup host.invalid: no such host", "dial tcp: lookup host.invalid: i/o timeout")


async def test_tcp_use_after_close_and_bad_arguments(ex: Executor) -> None:
    async with tcp_server(ping_pong) as port:
        body = f"""
        local conn = require("tcp").open("127.0.0.1:{port}")
        conn:close()
        local ok1, e1 = pcall(conn.close, conn)
        local ok2, e2 = pcall(conn.write, conn, "x")
        local ok3, e3 = pcall(conn.read, conn, "*x")
        local ok4, e4 = pcall(conn.write, conn, {{}})
        return table.concat({{e1, e2, e3, e4}}, "|")
        """
        errors = (await lua(ex, body)).decode().split("|")
    closed = rf"127\.0\.0\.1:\d+->127\.0\.0\.1:{port}: use of closed network connection"
    assert re.fullmatch(f"close tcp {closed}", errors[0])
    assert re.search(rf"bad argument #2 to 'write' \(write tcp {closed}\)$", errors[1])
    assert errors[2].endswith("bad argument #2 to 'read' (unknown fmt string)")
    assert errors[3].endswith("bad argument #2 to 'write' (string expected, got table)")


async def test_tcp_connection_left_open_is_closed_at_the_end(ex: Executor) -> None:
    closed = asyncio.Event()

    async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        closed.set()

    async with tcp_server(wait_for_eof) as port:
        assert await lua(ex, f'require("tcp").open("127.0.0.1:{port}") return "left open"') == b"left open"
        await asyncio.wait_for(closed.wait(), 5)


# What one execution may hold open, and what it leaves behind


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


ABANDON = """
local tac, log, lfs, ioutil = require("tac"), require("log"), require("lfs"), require("ioutil")
ioutil.write_file("f.txt", "a\\nb\\n")
lfs.mkdir("d")
ioutil.write_file("d/x", "x")
ioutil.write_file("d/y", "y")
local kept = {}
for i = 1, 10 do
  kept[#kept + 1] = tac.open("f.txt")
  kept[#kept + 1] = log.new("f" .. i .. ".log")
  local next_name = lfs.dir("d")
  next_name()
  kept[#kept + 1] = next_name
end
kept[#kept + 1] = require("tcp").open("127.0.0.1:PORT")
return tostring(#kept)
"""


async def test_files_and_sockets_a_script_leaves_open_are_closed_when_it_ends(ex: Executor) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with tcp_server(hold, connections=2) as port:
        body = ABANDON.replace("PORT", str(port))
        assert await lua(ex, body) == b"31"
        before = open_fds()
        assert await lua(ex, body) == b"31"
        assert open_fds() == before


async def test_an_execution_holds_at_most_64_of_each_kind_open(ex: Executor) -> None:
    body = """
    local tac, lfs = require("tac"), require("lfs")
    require("ioutil").write_file("f.txt", "a\\n")
    local scanners, dirs = {}, {}
    for i = 1, 64 do
      scanners[i] = assert(tac.open("f.txt"))
      dirs[i] = lfs.dir(".")
    end
    local none, err = tac.open("f.txt")
    local ok, dir_err = pcall(lfs.dir, ".")
    scanners[1]:close()
    for _ in dirs[1] do end
    local again = tac.open("f.txt") ~= nil and lfs.dir(".") ~= nil
    return tostring(none) .. "|" .. err .. "|" .. tostring(ok) .. "|" .. dir_err .. "|" .. tostring(again)
    """
    expected = b"nil|open f.txt: too many open files|false|open .: too many open files|true"
    assert await lua(ex, body) == expected
    # The count is the execution's: the next one starts afresh.
    assert await lua(ex, body) == expected


async def test_log_prints_tables_without_their_tostring(ex: Executor, tmp_path: Path) -> None:
    # gopher-lua prints a table as `table: 0x...`; a __tostring of the script's would run with the memory cap
    # lifted, inside the module call.
    path = tmp_path / "t.log"
    body = f"""
    local t = setmetatable({{}}, {{__tostring = function() error("called") end}})
    local flags = setmetatable({{}}, {{__index = function() error("called") end}})
    local l = require("log").new({lua_string(path)})
    l:set_flags(flags)
    l:print(t)
    l:printf("%v %s", t, t)
    return "logged"
    """
    assert await lua(ex, body) == b"logged"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"table: 0x[0-9a-f]+", lines[0])
    assert re.fullmatch(r"(table: 0x[0-9a-f]+) \1", lines[1])


async def test_a_named_pipe_never_holds_a_thread_past_the_deadline(ex: Executor, tmp_path: Path) -> None:
    # Opening a pipe without a peer would wait forever; reading one waits only until the deadline.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    body = f"""
    local path = {lua_string(fifo)}
    local scanner, tac_err = require("tac").open(path)
    local _, log_err = require("log").new(path)
    local write_err = require("ioutil").write_file(path, "x")
    local store, store_err = require("storage").open(path)
    return table.concat({{tostring(scanner), tac_err, log_err, write_err, tostring(store), store_err}}, "|")
    """
    started = time.monotonic()
    assert (await lua(ex, body, timeout_s=5)).decode().split("|") == [
        "nil",
        f"read {fifo}: illegal seek",
        f"open {fifo}: no such device or address",
        f"open {fifo}: no such device or address",
        "nil",
        f"invalid storage file {fifo}: not a regular file",
    ]
    with pytest.raises(ScriptTimeout):
        await on_message(ex, f'return require("ioutil").read_file({lua_string(fifo)})', timeout_s=1)
    assert time.monotonic() - started < 4
    assert await lua(ex, 'return "free"') == b"free"


async def test_time_sleep_waits_its_time(ex: Executor) -> None:
    started = time.monotonic()
    assert await lua(ex, 'require("time").sleep(0.2) return "slept"') == b"slept"
    assert 0.2 <= time.monotonic() - started < 5


# End to end through a daemon over NATS

E2E_SCRIPT = """--* subject: funcs.oslibs
--* name: oslibs
local cmd = require("cmd")
local filepath = require("filepath")
local ioutil = require("ioutil")
local log = require("log")
local tac = require("tac")

function OnMessage(subject, payload)
  local logger = log.new("run.log", "> ")
  logger:print(payload)
  local dir = filepath.dir(filepath.abs("run.log"))
  local r = cmd.exec("printf 'a\\nb\\n' >> run.log; ls")
  local scanner = tac.open("run.log")
  local last = scanner:line()
  local s = require("storage").open(STORE)
  local count = (s:get("count") or 0) + 1
  s:set("count", count)
  return table.concat({last, r.stdout:gsub("\\n", ","), tostring(filepath.is_abs(dir)), count,
    ioutil.read_file("run.log")}, "|")
end
"""


async def test_modules_end_to_end_through_the_daemon(make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path) -> None:
    scripts = tmp_path / "oslibs"
    scripts.mkdir()
    store = tmp_path / "count.json"
    (scripts / "oslibs.lua").write_text(E2E_SCRIPT.replace("STORE", lua_string(store)))
    async with make_daemon(plugin_dir=PLUGIN_DIR, script_dir=str(scripts)):
        payloads = []
        for _ in range(2):
            msg = await nc.request("funcs.oslibs", b"hello", timeout=10)
            reply = Reply.from_json(msg.data)
            assert reply.results is not None and reply.results[0].error == ""
            payloads.append(reply.results[0].payload)
    assert payloads == [b"b|run.log,|true|1|> hello\na\nb\n", b"b|run.log,|true|2|> hello\na\nb\n"]
