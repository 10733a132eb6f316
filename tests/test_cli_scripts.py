"""`msgscriptcli` store commands (add, list, rm, lib, completion), run as a real process against a real etcd
and against script and library directories that a real daemon then loads."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import nats
import pytest

from msgscript.etcd_client import EtcdClient
from msgscript.message import Reply
from msgscript.script import Script, parse_script
from msgscript.store.file_store import FileStore
from msgscript.store.script_files import script_file_name
from tests.conftest import DaemonFactory
from tests.servers import EtcdServer, free_port

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
HELLO = EXAMPLES / "hello.lua"
CLI = (sys.executable, str(ROOT / "cmd" / "msgscriptcli"))
T = 5.0

LIBRARY = """--* name: shout
-- Upper-cases a greeting.
function Shout(text) return string.upper(text) .. "!" end
"""
USES_LIBRARY = """--* subject: funcs.shout
--* name: shouter
--* require: shout
function OnMessage(subject, payload) return Shout(payload) end
"""


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    """Run msgscriptcli in its own process; the test's own etcd/NATS variables are not inherited."""
    environ = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "NATS_URL", "DEBUG")}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    scripts, libs = tmp_path / "cli-scripts", tmp_path / "cli-libs"
    scripts.mkdir()
    libs.mkdir()
    return scripts, libs


def file_cli(scripts: Path, libs: Path) -> tuple[str, ...]:
    return ("-b", "file", "--script", str(scripts), "--library", str(libs))


# The file backend -------------------------------------------------------------------------------------


async def test_add_writes_the_file_as_it_is(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    run = await cli(*file_cli(scripts, libs), "add", HELLO)
    assert (run.code, run.out, run.err) == (0, "", "Script added successfully for subject funcs.hello named hello \n")
    assert [p.name for p in scripts.iterdir()] == ["funcs.hello@hello.lua"]
    assert (scripts / "funcs.hello@hello.lua").read_bytes() == HELLO.read_bytes()


async def test_add_with_flags_rewrites_the_headers_and_keeps_the_rest(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    source = write(
        tmp_path / "in.lua",
        "-- top comment\r\n--* subject: old.subject\r\n--* require: shout\r\n--* name: old\r\n"
        "--* timeout: 2s\r\nfunction OnMessage(s, p) return p end\r\n",
    )
    run = await cli(*file_cli(scripts, libs), "add", "-s", "funcs.*", "-n", "any", source)
    assert run.code == 0, run.err
    assert run.err == "Script added successfully for subject funcs.* named any \n"
    written = scripts / "funcs.%2A@any.lua"
    assert written.read_bytes() == (
        b"--* subject: funcs.*\r\n--* name: any\r\n-- top comment\r\n--* require: shout\r\n"
        b"--* timeout: 2s\r\nfunction OnMessage(s, p) return p end\r\n"
    )
    before, after = parse_script(source.read_text()), parse_script(written.read_text())
    assert after == replace(before, subject="funcs.*", name="any")


async def test_add_overriding_only_the_name_keeps_the_subject_header(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    assert (await cli(*file_cli(scripts, libs), "add", "-n", "hi", HELLO)).code == 0
    text = (scripts / "funcs.hello@hi.lua").read_text()
    assert text == "--* name: hi\n" + HELLO.read_text().replace("--* name: hello\n", "")


async def test_add_replaces_the_files_holding_the_same_script(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    write(scripts / "a-old.lua", HELLO.read_text())
    write(scripts / "b-current.lua", HELLO.read_text())
    write(scripts / "other.lua", "--* subject: funcs.other\n--* name: hello\nfunction OnMessage() end\n")
    new = write(
        tmp_path / "new.lua", "--* subject: funcs.hello\n--* name: hello\nfunction OnMessage() return 'v2' end\n"
    )
    assert (await cli(*file_cli(scripts, libs), "add", new)).code == 0
    # The file the daemon served is rewritten in place; the older duplicate is gone; others stay.
    assert sorted(p.name for p in scripts.iterdir()) == ["b-current.lua", "other.lua"]
    assert (scripts / "b-current.lua").read_bytes() == new.read_bytes()


async def test_add_refuses_to_overwrite_a_file_holding_another_script(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    squatter = write(scripts / script_file_name("funcs.hello", "hello"), "-- no headers\n")
    run = await cli(*file_cli(scripts, libs), "add", HELLO)
    assert run.code == 1
    assert (
        run.err == f"cannot write {squatter}: the file exists and does not hold script hello of subject funcs.hello\n"
    )
    assert squatter.read_text() == "-- no headers\n"


async def test_add_needs_a_subject_and_a_name(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    anonymous = write(tmp_path / "anon.lua", "function OnMessage() end\n")
    assert (await cli(*file_cli(scripts, libs), "add", anonymous)).err == "subject is required\n"
    run = await cli(*file_cli(scripts, libs), "add", "-s", "x", anonymous)
    assert (run.code, run.err) == (1, "name is required\n")
    assert list(scripts.iterdir()) == []


async def test_add_refuses_subjects_the_daemon_cannot_serve(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    run = await cli(*file_cli(scripts, libs), "add", "-s", "funcs..x", HELLO)
    assert (run.code, run.err) == (1, "invalid subject 'funcs..x': not a NATS subject\n")
    run = await cli(*file_cli(scripts, libs), "add", "-s", "a/b", HELLO)
    assert (run.code, run.err) == (1, "invalid subject 'a/b': '/' is not allowed\n")
    assert list(scripts.iterdir()) == []


async def test_add_of_a_missing_file_is_a_usage_error(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    run = await cli(*file_cli(*dirs), "add", tmp_path / "nope.lua")
    assert run.code == 2
    assert "does not exist" in run.err
    assert (await cli(*file_cli(*dirs), "add")).code == 2


async def test_file_backend_needs_a_script_directory(dirs: tuple[Path, Path]) -> None:
    for args in (("add", str(HELLO)), ("list",), ("rm", "-s", "a", "-n", "b")):
        run = await cli("-b", "file", *args)
        assert (run.code, run.out, run.err) == (1, "", "script directory cannot be empty\n")
    run = await cli("-b", "file", "--script", str(dirs[0]), "lib", "list")
    assert (run.code, run.err) == (1, "library directory cannot be empty\n")


async def test_a_missing_script_directory_is_an_error(tmp_path: Path) -> None:
    run = await cli("-b", "file", "--script", tmp_path / "nope", "add", HELLO)
    assert run.code == 1
    assert run.err == f"failed to read directory {tmp_path / 'nope'}: No such file or directory\n"


async def test_unknown_backend() -> None:
    run = await cli("-b", "sqlite", "list")
    assert (run.code, run.out, run.err) == (1, "", "Unknown backend: sqlite\n")


async def test_list_prints_an_aligned_table_on_stdout(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    run = await cli(*file_cli(scripts, libs), "list")
    assert (run.code, run.out, run.err) == (0, "", "No script in store\n")
    shutil.copy(HELLO, scripts / "hello.lua")
    write(scripts / "z.lua", "--* subject: a.long.subject.name\n--* name: z\n")
    write(scripts / "helper.lua", "-- no headers: never served\n")
    write(scripts / "notes.txt", "--* subject: not.a.script\n--* name: txt\n")
    assert (await cli(*file_cli(scripts, libs), "add", "-n", "again", HELLO)).code == 0
    expected = (
        "SUBJECT              NAME\na.long.subject.name  z\nfuncs.hello          again\nfuncs.hello          hello\n"
    )
    for command in ("list", "ls"):
        run = await cli(*file_cli(scripts, libs), command)
        assert (run.code, run.out, run.err) == (0, expected, "")


async def test_rm_removes_the_script_files(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    shutil.copy(HELLO, scripts / "a.lua")
    shutil.copy(HELLO, scripts / "b.lua")
    write(scripts / "c.lua", "--* subject: funcs.hello\n--* name: other\n")
    run = await cli(*file_cli(scripts, libs), "rm", "-s", "funcs.hello", "-n", "hello")
    assert (run.code, run.out, run.err) == (0, "", "Script removed\n")
    assert [p.name for p in scripts.iterdir()] == ["c.lua"]


async def test_rm_of_a_missing_script_is_an_error(dirs: tuple[Path, Path]) -> None:
    run = await cli(*file_cli(*dirs), "rm", "-s", "funcs.hello", "-n", "hello")
    assert (run.code, run.err) == (1, "script hello not found for subject funcs.hello\n")


async def test_rm_needs_both_flags(dirs: tuple[Path, Path]) -> None:
    run = await cli(*file_cli(*dirs), "rm", "-s", "funcs.hello")
    assert run.code == 2
    assert "Missing option '-n' / '--name'" in run.err
    assert (await cli(*file_cli(*dirs), "rm", "-n", "hello")).code == 2


async def test_lib_add_files_and_directories(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    src = tmp_path / "src"
    one = write(src / "one.lua", LIBRARY)
    write(src / "dir" / "a.lua", "--* name: a\nA = 1\n")
    write(src / "dir" / "b.lua", "--* name: b\nB = 2\n")
    write(src / "dir" / "notes.txt", "not a library")
    write(src / "dir" / "deep" / "c.lua", "--* name: deep/c\nC = 3\n")
    run = await cli(*file_cli(scripts, libs), "lib", "add", one, src / "dir")
    assert (run.code, run.out, run.err) == (0, "", "Added 3 libraries\n")
    assert sorted(p.name for p in libs.iterdir()) == ["a.lua", "b.lua", "shout.lua"]
    assert (libs / "shout.lua").read_text() == LIBRARY
    run = await cli(*file_cli(scripts, libs), "lib", "add", "-r", src / "dir")
    assert (run.code, run.err) == (0, "Added 3 libraries\n")
    assert (libs / "deep%2Fc.lua").read_text() == "--* name: deep/c\nC = 3\n"
    store = FileStore(scripts, libs)
    await store.load()
    assert await store.load_libraries(["shout", "a", "deep/c"]) == (parse_script(LIBRARY).content, "A = 1", "C = 3")


async def test_lib_add_needs_a_name_header(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    named = write(tmp_path / "named.lua", LIBRARY)
    anonymous = write(tmp_path / "anon.lua", "function X() end\n")
    run = await cli(*file_cli(scripts, libs), "lib", "add", named, anonymous)
    assert (run.code, run.out, run.err) == (1, "", f"script at {anonymous} requires to have the 'name' header\n")
    assert list(libs.iterdir()) == []  # nothing is written when one library is refused


async def test_lib_add_refuses_two_libraries_with_one_name(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = write(tmp_path / "1.lua", LIBRARY), write(tmp_path / "2.lua", LIBRARY)
    run = await cli(*file_cli(*dirs), "lib", "add", first, second)
    assert (run.code, run.err) == (1, f"{first} and {second} both have the name shout\n")


async def test_lib_add_replaces_the_file_holding_the_name(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scripts, libs = dirs
    write(libs / "my-shout.lua", "--* name: shout\nfunction Shout(t) return t end\n")
    source = write(tmp_path / "s.lua", LIBRARY)
    assert (await cli(*file_cli(scripts, libs), "lib", "add", source)).code == 0
    assert [p.name for p in libs.iterdir()] == ["my-shout.lua"]
    assert (libs / "my-shout.lua").read_text() == LIBRARY


async def test_lib_list_and_rm(dirs: tuple[Path, Path]) -> None:
    scripts, libs = dirs
    run = await cli(*file_cli(scripts, libs), "lib", "list")
    assert (run.code, run.out, run.err) == (0, "", "No library in store\n")
    write(libs / "x.lua", LIBRARY)
    write(libs / "y.lua", "--* name: web\n")
    for command in ("list", "ls"):
        run = await cli(*file_cli(scripts, libs), "lib", command)
        assert (run.code, run.out, run.err) == (0, "NAME\nshout\nweb\n", "")
    run = await cli(*file_cli(scripts, libs), "lib", "rm", "shout")
    assert (run.code, run.err) == (0, "Library removed\n")
    assert [p.name for p in libs.iterdir()] == ["y.lua"]
    run = await cli(*file_cli(scripts, libs), "lib", "rm", "shout")
    assert (run.code, run.err) == (1, "library shout not found\n")


async def test_daemon_serves_what_the_file_backend_wrote(
    dirs: tuple[Path, Path], tmp_path: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    scripts, libs = dirs
    assert (await cli(*file_cli(scripts, libs), "add", "-s", "funcs.greet", "-n", "greet", HELLO)).code == 0
    assert (await cli(*file_cli(scripts, libs), "lib", "add", write(tmp_path / "shout.lua", LIBRARY))).code == 0
    assert (await cli(*file_cli(scripts, libs), "add", write(tmp_path / "uses.lua", USES_LIBRARY))).code == 0
    async with make_daemon(script_dir=str(scripts), library_dir=str(libs)):
        reply = Reply.from_json((await nc.request("funcs.greet", b"Ann", timeout=T)).data)
        assert [r.payload for r in reply.results or ()] == [b"Processed subject: funcs.greet with payload: Ann"]
        reply = Reply.from_json((await nc.request("funcs.shout", b"hey", timeout=T)).data)
        assert [r.payload for r in reply.results or ()] == [b"HEY!"]


# Completion -------------------------------------------------------------------------------------------


async def test_completion_scripts_for_each_shell() -> None:
    bash = await cli("completion", "bash")
    assert bash.code == 0
    assert "_msgscriptcli_completion()" in bash.out
    assert "_MSGSCRIPTCLI_COMPLETE=bash_complete" in bash.out
    assert "complete -o nosort -F _msgscriptcli_completion msgscriptcli" in bash.out
    zsh = await cli("completion", "zsh")
    assert zsh.code == 0
    assert zsh.out.startswith("#compdef msgscriptcli")
    assert "_MSGSCRIPTCLI_COMPLETE=zsh_complete" in zsh.out
    fish = await cli("completion", "fish")
    assert fish.code == 0
    assert "_MSGSCRIPTCLI_COMPLETE=fish_complete" in fish.out
    assert 'complete --no-files --command msgscriptcli --arguments "(_msgscriptcli_completion)"' in fish.out


async def test_completion_rejects_other_shells() -> None:
    run = await cli("completion", "powershell")
    assert (run.code, run.out) == (2, "")
    assert "'powershell' is not supported; choose one of bash, zsh, fish" in run.err
    assert (await cli("completion")).code == 2


async def test_bash_completion_completes_commands(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    launcher = write(tmp_path / "bin" / "msgscriptcli", f'#!/bin/sh\nexec {" ".join(CLI)} "$@"\n')
    launcher.chmod(0o755)
    script = (
        "source <(msgscriptcli completion bash)\n"
        "COMP_WORDS=(msgscriptcli lib ''); COMP_CWORD=2; _msgscriptcli_completion msgscriptcli\n"
        'echo "${COMPREPLY[*]}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PATH": f"{launcher.parent}:{os.environ['PATH']}"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().split() == ["add", "list", "rm"]


# The etcd backend -------------------------------------------------------------------------------------


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


async def get(etcd: EtcdClient, key: str) -> bytes | None:
    kv = await etcd.get(key, timeout_s=T)
    return None if kv is None else kv.value


async def test_etcd_add_puts_the_script_json(etcd_server: EtcdServer, etcd: EtcdClient) -> None:
    run = await cli("-e", etcd_server.url, "add", HELLO)
    assert (run.code, run.out, run.err) == (0, "", "Script added successfully for subject funcs.hello named hello \n")
    expected = parse_script(HELLO.read_text()).to_json()
    assert await get(etcd, "msgscript/scripts/funcs.hello/hello") == expected
    assert Script.from_json(expected).content.startswith("-- The classic")


async def test_etcd_add_with_flags_stores_under_the_flag_values(etcd_server: EtcdServer, etcd: EtcdClient) -> None:
    run = await cli("-e", etcd_server.endpoint, "add", "-s", "funcs.other", "-n", "hi", HELLO)
    assert run.code == 0, run.err
    value = await get(etcd, "msgscript/scripts/funcs.other/hi")
    assert value is not None
    assert Script.from_json(value) == replace(parse_script(HELLO.read_text()), subject="funcs.other", name="hi")
    assert await get(etcd, "msgscript/scripts/funcs.hello/hello") is None


async def test_etcd_endpoints_from_the_environment(etcd_server: EtcdServer, etcd: EtcdClient) -> None:
    run = await cli("add", HELLO, env={"ETCD_ENDPOINTS": f"127.0.0.1:{free_port()},{etcd_server.url}"})
    assert run.code == 0, run.err
    assert await get(etcd, "msgscript/scripts/funcs.hello/hello") is not None


async def test_etcd_list_and_rm(etcd_server: EtcdServer, etcd: EtcdClient) -> None:
    e = ("-e", etcd_server.url)
    run = await cli(*e, "list")
    assert (run.code, run.out, run.err) == (0, "", "No script in store\n")
    for args in (("-n", "b"), ("-n", "a"), ("-s", "funcs.hello_plugin", "-n", "plugin")):
        assert (await cli(*e, "add", *args, HELLO)).code == 0
    expected = "SUBJECT             NAME\nfuncs.hello         a\nfuncs.hello         b\nfuncs.hello_plugin  plugin\n"
    for command in ("list", "ls"):
        run = await cli(*e, command)
        assert (run.code, run.out, run.err) == (0, expected, "")
    run = await cli(*e, "rm", "-s", "funcs.hello", "-n", "a")
    assert (run.code, run.out, run.err) == (0, "", "Script removed\n")
    assert await get(etcd, "msgscript/scripts/funcs.hello/a") is None
    assert await get(etcd, "msgscript/scripts/funcs.hello/b") is not None
    run = await cli(*e, "rm", "-s", "funcs.hello", "-n", "a")
    assert (run.code, run.err) == (1, "script a not found for subject funcs.hello\n")


async def test_etcd_lists_scripts_written_by_other_tools(etcd_server: EtcdServer, etcd: EtcdClient) -> None:
    await etcd.put(
        "msgscript/scripts/funcs.x/from-go", Script(subject="funcs.x", name="from-go").to_json(), timeout_s=T
    )
    await etcd.put("msgscript/libs/handmade", "X = 1", timeout_s=T)
    run = await cli("-e", etcd_server.url, "list")
    assert run.out == "SUBJECT  NAME\nfuncs.x  from-go\n"
    run = await cli("-e", etcd_server.url, "lib", "list")
    assert run.out == "NAME\nhandmade\n"


async def test_etcd_lib_add_list_rm(etcd_server: EtcdServer, etcd: EtcdClient, tmp_path: Path) -> None:
    e = ("-e", etcd_server.url)
    run = await cli(*e, "lib", "list")
    assert (run.code, run.out, run.err) == (0, "", "No library in store\n")
    write(tmp_path / "libs" / "shout.lua", LIBRARY)
    write(tmp_path / "libs" / "nested" / "web.lua", "--* name: web\n-- router\nRouter = {}\n")
    run = await cli(*e, "lib", "add", "-r", tmp_path / "libs")
    assert (run.code, run.out, run.err) == (0, "", "Added 2 libraries\n")
    assert await get(etcd, "msgscript/libs/shout") == parse_script(LIBRARY).content.encode()
    assert await get(etcd, "msgscript/libs/web") == b"-- router\nRouter = {}"
    run = await cli(*e, "lib", "list")
    assert (run.code, run.out) == (0, "NAME\nshout\nweb\n")
    run = await cli(*e, "lib", "rm", "web")
    assert (run.code, run.err) == (0, "Library removed\n")
    assert await get(etcd, "msgscript/libs/web") is None
    run = await cli(*e, "lib", "rm", "web")
    assert (run.code, run.err) == (1, "library web not found\n")


async def test_etcd_unreachable_is_one_line_and_exit_1(tmp_path: Path) -> None:
    run = await cli("-e", f"127.0.0.1:{free_port()}", "add", HELLO)
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith("failed to get script store: ")
    assert run.err.count("\n") == 1
    with socket.socket() as silent:  # takes connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        run = await cli("-e", f"127.0.0.1:{silent.getsockname()[1]}", "lib", "add", write(tmp_path / "l.lua", LIBRARY))
    assert (run.code, run.out) == (1, "")
    assert run.err.startswith("failed to get script store: ")
    assert run.err.count("\n") == 1
    run = await cli("-e", "unix:///run/etcd.sock", "list")
    assert run.code == 1
    assert run.err.startswith("failed to get script store: invalid etcd endpoint")


async def test_daemon_serves_what_the_etcd_backend_wrote(
    etcd_server: EtcdServer, make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    e = ("-e", etcd_server.url)
    assert (await cli(*e, "lib", "add", write(tmp_path / "shout.lua", LIBRARY))).code == 0
    assert (await cli(*e, "add", write(tmp_path / "uses.lua", USES_LIBRARY))).code == 0
    async with make_daemon(backend="etcd", etcd_endpoints=(etcd_server.url,)):
        reply = Reply.from_json((await nc.request("funcs.shout", b"hey", timeout=T)).data)
        assert [r.payload for r in reply.results or ()] == [b"HEY!"]
