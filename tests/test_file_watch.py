"""Hot reload of the file backend (FileStore.watching, msgscript.store.file_watch) on real directories and real
inotify: the store on its own, then daemons answering over NATS and HTTP, then the `msgscript` command.

Waits poll with a deadline (`eventually`); what must not happen is shown against something that must happen
after it (a later file, or a second store on the same directory that follows it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import click
import nats
import pytest
from nats.aio.msg import Msg

from msgscript.app import running
from msgscript.cli.server import command as daemon_command
from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.lua.syntax import LuaSyntaxCheck
from msgscript.message import Reply
from msgscript.store.base import Store
from msgscript.store.file_store import FileStore
from msgscript.store.script_files import is_lua_file_name
from tests.conftest import fixture_settings
from tests.processes import daemon_running
from tests.servers import NatsServer, free_port
from tests.test_cli_devhttp import devhttp
from tests.test_etcd_store import answer, answers_with, has_no_responders

WITHIN_S = 2.0
"""The deadline of a change that must show (the watch shows it in about 0.1 s; the product promises 1 s)."""
T = 5.0


def hello(version: str) -> str:
    return (
        "--* subject: funcs.hello\n--* name: hello\n"
        f"function OnMessage(subject, payload) return '{version} ' .. payload end\n"
    )


GREETER = """--* subject: funcs.greet
--* name: greet
--* require: greeting
function OnMessage(subject, payload) return Greeting(payload) end
"""


def greeting(word: str) -> str:
    return f"--* name: greeting\nfunction Greeting(n) return '{word} ' .. n end\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = WITHIN_S) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.01)


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async def seen() -> bool:
        return text in caplog.text

    await eventually(seen, f"{text!r} logged")


async def content(store: Store, subject: str = "funcs.hello", name: str = "hello") -> str | None:
    script = await store.script(subject, name)
    return None if script is None else script.content


async def serves(store: Store, version: str) -> bool:
    return f"return '{version} '" in (await content(store) or "")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    scripts, libraries = tmp_path / "scripts", tmp_path / "libs"
    scripts.mkdir()
    libraries.mkdir()
    write(scripts / "hello.lua", hello("v1"))
    write(scripts / "greet.lua", GREETER)
    write(libraries / "greeting.lua", greeting("hi"))
    return scripts, libraries


@pytest.fixture(autouse=True)
def _store_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="msgscript.store")


@contextlib.asynccontextmanager
async def watched(scripts: Path, libraries: Path | str = "") -> AsyncIterator[FileStore]:
    store = FileStore(scripts, libraries)
    await store.load()
    async with store.watching(check=LuaSyntaxCheck()):
        yield store


# -- the store on its own ----------------------------------------------------------------------------------------


async def test_an_edit_is_served_and_the_listeners_hear_of_it(dirs: tuple[Path, Path]) -> None:
    scripts, _ = dirs
    heard: list[None] = []
    async with watched(scripts) as store:
        store.add_listener(lambda: heard.append(None))
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: serves(store, "v2"), "edit served")
        assert heard


async def test_added_renamed_and_removed_files(dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    scripts, _ = dirs

    async def subjects_are(*expected: str) -> bool:
        return await store.subjects() == sorted(expected)

    async with watched(scripts) as store:
        added = write(scripts / "other.lua", "--* subject: funcs.other\n--* name: other\nfunction OnMessage() end\n")
        await eventually(lambda: subjects_are("funcs.greet", "funcs.hello", "funcs.other"), "new subject")
        # Renamed within the directory: still served, under the same key.
        os.rename(added, scripts / "renamed.lua")
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: serves(store, "v2"), "later edit")
        assert await subjects_are("funcs.greet", "funcs.hello", "funcs.other")
        # Renamed to a name that does not count: gone.
        os.rename(scripts / "renamed.lua", scripts / "renamed.lua.bak")
        await eventually(lambda: subjects_are("funcs.greet", "funcs.hello"), "renamed away")
        (scripts / "greet.lua").unlink()
        await eventually(lambda: subjects_are("funcs.hello"), "removed")
    assert f"script file {scripts / 'greet.lua'} removed" in caplog.text


async def test_a_changed_library_is_read_by_the_next_run(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    async with watched(scripts, libraries) as store:
        assert await store.load_libraries(["greeting"]) == ("function Greeting(n) return 'hi ' .. n end",)
        write(libraries / "greeting.lua", greeting("yo"))

        async def changed() -> bool:
            return "'yo '" in (await store.load_libraries(["greeting"]))[0]

        await eventually(changed, "library edit")


@pytest.mark.parametrize(
    ("text", "where", "error"),
    [
        (hello("v2").replace("--* name: hello\n", "--* name: hello\n--* timeout: soon\n"), ":3: ", "invalid timeout"),
        (hello("v2") + "end\n", ":4: ", "'<eof>' expected near 'end'"),
        (hello("v2").replace(" end\n", "\n"), ":4: ", "'end' expected"),
        ("", ": ", "missing headers --* subject:, --* name:"),
        ("--* subject: funcs.hello\n--* na", ": ", "missing header --* name:"),
    ],
    ids=["bad-header", "lua-syntax", "cut-in-the-code", "empty", "cut-in-a-header"],
)
async def test_a_broken_edit_keeps_the_previous_version(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture, text: str, where: str, error: str
) -> None:
    scripts, _ = dirs
    path = scripts / "hello.lua"
    async with watched(scripts) as store:
        write(path, text)
        await logged(caplog, f"{path}{where}{error}")
        assert "its previous version keeps serving" in caplog.text
        assert await serves(store, "v1")
        # Fixed: served again.
        write(path, hello("v3"))
        await eventually(lambda: serves(store, "v3"), "fixed edit")


async def test_a_new_file_that_does_not_read_is_not_served(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    scripts, _ = dirs
    path = scripts / "new.lua"
    async with watched(scripts) as store:
        write(path, "--* subject: funcs.new\n--* name: new\nfunction OnMessage(\n")
        await logged(caplog, f"skipping script {path}:4: ")
        assert "funcs.new" not in await store.subjects()
        write(path, "--* subject: funcs.new\n--* name: new\nfunction OnMessage() end\n")
        await eventually(lambda: content(store, "funcs.new", "new"), "fixed new file")


@pytest.mark.parametrize(
    "name", [".hello.lua.swp", "hello.lua~", ".#hello.lua", "4913", "hello.lua.tmp", ".hidden.lua", "notes.txt"]
)
async def test_editor_files_are_not_scripts(dirs: tuple[Path, Path], name: str) -> None:
    assert not is_lua_file_name(name)
    scripts, _ = dirs
    async with watched(scripts) as store:
        write(scripts / name, "--* subject: funcs.temp\n--* name: temp\nfunction OnMessage() end\n")
        # A later edit is read with the whole directory: the temporary file would be served by then.
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: serves(store, "v2"), "later edit")
        assert "funcs.temp" not in await store.subjects()


async def test_an_editors_save_replaces_the_script_in_one_step(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """vim's way (backup by rename, new file, backup removed) and the atomic way (temporary file renamed over)."""
    scripts, _ = dirs
    path = scripts / "hello.lua"
    async with watched(scripts) as store:
        os.rename(path, scripts / "hello.lua~")
        write(scripts / "4913", "")
        (scripts / "4913").unlink()
        write(path, hello("v2"))
        (scripts / "hello.lua~").unlink()
        await eventually(lambda: serves(store, "v2"), "vim save")
        write(scripts / ".hello.lua.tmp", hello("v3"))
        os.replace(scripts / ".hello.lua.tmp", path)
        await eventually(lambda: serves(store, "v3"), "atomic save")
    assert "removed" not in caplog.text


async def watch_is_up(store: Store, path: Path) -> None:
    """Edit the hello script until the store serves the edit: the watch is in place."""
    write(path, hello("up"))
    await eventually(lambda: serves(store, "up"), "watch in place")


async def test_a_removed_directory_keeps_serving_until_it_is_back(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    scripts, _ = dirs
    async with watched(scripts) as store:
        await watch_is_up(store, scripts / "hello.lua")
        shutil.rmtree(scripts)
        await logged(caplog, f"the script directory {scripts} cannot be watched any more: No such file or directory")
        assert "serving what was read from it until it can be watched again" in caplog.text
        assert await serves(store, "up")
        assert await store.subjects() == ["funcs.greet", "funcs.hello"]
        scripts.mkdir()
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: serves(store, "v2"), "directory back", within=T)
        await logged(caplog, f"watching the script directory {scripts} again")
        assert await store.subjects() == ["funcs.hello"]


async def test_a_directory_swapped_behind_a_link_is_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "scripts"
    first.mkdir()
    second.mkdir()
    write(first / "hello.lua", hello("v1"))
    write(second / "hello.lua", hello("v2"))
    link.symlink_to(first)
    async with watched(link) as store:
        await watch_is_up(store, first / "hello.lua")
        swap = tmp_path / "swap"
        swap.symlink_to(second)
        os.replace(swap, link)
        await eventually(lambda: serves(store, "v2"), "swapped directory")
        write(second / "hello.lua", hello("v3"))
        await eventually(lambda: serves(store, "v3"), "edit in the new directory")
    assert f"the script directory {link} is another directory now" in caplog.text


async def test_one_directory_for_scripts_and_libraries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "greet.lua", GREETER)
    write(tmp_path / "greeting.lua", greeting("hi"))
    async with watched(tmp_path, tmp_path) as store:
        write(tmp_path / "greeting.lua", greeting("yo"))
        write(tmp_path / "hello.lua", hello("v1"))
        await eventually(lambda: serves(store, "v1"), "new script")

        async def changed() -> bool:
            return "'yo '" in (await store.load_libraries(["greeting"]))[0]

        await eventually(changed, "library edit")
    # A library is not a script without a subject: nothing to complain about.
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_the_watches_end_with_the_block(dirs: tuple[Path, Path]) -> None:
    async with watched(*dirs):
        assert len(_watch_tasks()) == 2
    assert _watch_tasks() == []


def _watch_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("msgscript:watch:") and not task.done()]


async def test_without_watch_the_directories_are_read_once(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    settings = Settings(backend="file", script_dir=str(scripts), library_dir=str(libraries), watch=False)
    async with open_store(settings) as unwatched, watched(scripts) as follower:
        assert len(_watch_tasks()) == 1  # the follower's
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: serves(follower, "v2"), "edit seen by a watching store")
        assert await serves(unwatched, "v1")


@pytest.mark.parametrize(
    ("args", "watch"),
    [((), True), (("-watch",), True), (("-watch=false",), False), (("--watch=0",), False), (("-watch=true",), True)],
)
def test_the_watch_flag_reads_as_a_go_boolean(args: tuple[str, ...], watch: bool) -> None:
    with daemon_command.make_context("msgscript", list(args)) as ctx:
        assert ctx.params["watch"] is watch


def test_the_watch_flag_refuses_what_go_refuses() -> None:
    with pytest.raises(click.BadParameter, match="invalid boolean value 'yes': use true or false"):
        daemon_command.make_context("msgscript", ["-watch=yes"])


# -- a daemon ----------------------------------------------------------------------------------------------------


async def test_a_daemon_follows_the_files_over_nats_and_http(
    dirs: tuple[Path, Path], nats_server: NatsServer, nc: nats.NATS, client: aiohttp.ClientSession
) -> None:
    scripts, libraries = dirs
    port = free_port()
    async with running(fixture_settings(nats_server.url, scripts, libraries, http_port=port)):
        assert await answer(nc, "funcs.hello") == b"v1 John"
        write(scripts / "hello.lua", hello("v2"))
        await eventually(lambda: answers_with(nc, "funcs.hello", b"v2 John"), "edit over NATS")
        async with client.post(f"http://127.0.0.1:{port}/funcs.hello", data=b"Jane") as response:
            assert response.status == 200
            results = json.loads(await response.read())
            assert [base64.b64decode(result["payload"]) for result in results] == [b"v2 Jane"]

        # A new subject is subscribed; a removed one is not any more (no responders).
        write(scripts / "other.lua", "--* subject: funcs.other\n--* name: other\nfunction OnMessage() return 'o' end\n")
        await eventually(lambda: answers_with(nc, "funcs.other", b"o"), "new subject")
        os.rename(scripts / "other.lua", scripts / "other.lua.off")
        await eventually(lambda: has_no_responders(nc, "funcs.other"), "renamed away")
        (scripts / "hello.lua").unlink()
        await eventually(lambda: has_no_responders(nc, "funcs.hello"), "removed")

        # A library edit reaches the script that requires it.
        assert await answer(nc, "funcs.greet") == b"hi John"
        write(libraries / "greeting.lua", greeting("yo"))
        await eventually(lambda: answers_with(nc, "funcs.greet", b"yo John"), "library edit")


async def test_a_broken_edit_leaves_the_daemon_serving_the_previous_version(
    dirs: tuple[Path, Path], nats_server: NatsServer, nc: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    scripts, libraries = dirs
    path = scripts / "hello.lua"
    async with running(fixture_settings(nats_server.url, scripts, libraries)):
        write(path, hello("v2").replace("return", "retrun"))
        await logged(caplog, f"{path}:3: ")
        assert await answer(nc, "funcs.hello") == b"v1 John"


async def test_a_message_in_flight_finishes_on_its_version(
    dirs: tuple[Path, Path], nats_server: NatsServer, nc: nats.NATS
) -> None:
    scripts, libraries = dirs
    gated = (
        "--* subject: funcs.gated\n--* name: gated\n"
        "local nats = require('nats')\n"
        "function OnMessage(subject, payload)\n"
        "    local reply, err = nats.request('test.gate', payload, 10)\n"
        "    return '{version} ' .. (reply or err)\n"
        "end\n"
    )
    write(scripts / "gated.lua", gated.format(version="v1"))
    at_the_gate: asyncio.Queue[Msg] = asyncio.Queue()
    await nc.subscribe("test.gate", cb=at_the_gate.put)
    async with running(fixture_settings(nats_server.url, scripts, libraries)):
        first = asyncio.ensure_future(nc.request("funcs.gated", b"first", timeout=T * 2))
        held = await asyncio.wait_for(at_the_gate.get(), T)
        write(scripts / "gated.lua", gated.format(version="v2"))

        async def a_new_run_is_v2() -> bool:
            second = asyncio.ensure_future(nc.request("funcs.gated", b"second", timeout=T))
            await (await asyncio.wait_for(at_the_gate.get(), T)).respond(b"open")
            return _payload(await second) == b"v2 open"

        await eventually(a_new_run_is_v2, "new version runs", within=T)
        await held.respond(b"open")
        assert _payload(await first) == b"v1 open"


def _payload(msg: Msg) -> bytes | None:
    results = Reply.from_json(msg.data).results
    assert results is not None and len(results) == 1
    return results[0].payload


# -- the command -------------------------------------------------------------------------------------------------


async def test_the_command_follows_by_default_and_not_with_watch_false(
    dirs: tuple[Path, Path], nats_server: NatsServer, nc: nats.NATS
) -> None:
    scripts, libraries = dirs
    common = ("-natsurl", nats_server.url, "-script", str(scripts), "-library", str(libraries))
    async with (
        daemon_running(*common, "-port", str(free_port()), "-queue-group=", "-watch=false") as unwatched,
        daemon_running(*common, "-port", str(free_port()), "-queue-group=") as watching,
    ):
        assert "watching" not in unwatched.log
        await watching.wait_for_log(f"watching {scripts} for changes")
        write(scripts / "hello.lua", hello("v2").replace("return", "retrun"))
        await watching.wait_for_log(f"{scripts / 'hello.lua'}:3: ")
        write(scripts / "hello.lua", hello("v2"))
        # Without a queue group both daemons answer every request: the watching one has v2, the other v1.
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)

        async def both_answer() -> bool:
            await nc.publish("funcs.hello", b"John", reply=inbox)
            got = []
            with contextlib.suppress(TimeoutError):
                for _ in range(2):
                    got.append(await replies.next_msg(timeout=T))
            payloads = sorted(_payload(msg) or b"" for msg in got)
            return payloads == [b"v1 John", b"v2 John"]

        await eventually(both_answer, "v2 from the watching daemon, v1 from the other", within=T)
    assert "its previous version keeps serving" in watching.log


# -- devhttp -----------------------------------------------------------------------------------------------------


async def test_devhttp_answers_each_save_and_names_the_line_of_a_broken_one(
    dirs: tuple[Path, Path], client: aiohttp.ClientSession
) -> None:
    """devhttp reads the file on every request rather than watching it: no delay, and a broken save is answered
    with its error."""
    scripts, _ = dirs
    path = scripts / "hello.lua"
    async with devhttp(str(path)) as server:
        for version in ("v2", "v3"):
            write(path, hello(version))
            async with client.post(server.url + "/funcs.hello", data=b"John") as response:
                assert (response.status, await response.read()) == (200, f"{version} John".encode())
        write(path, hello("v4") + "end\n")
        async with client.post(server.url + "/funcs.hello", data=b"John") as response:
            assert response.status == 500
            assert await response.text() == f"Error: {path}:4: '<eof>' expected near 'end'"
        write(path, hello("v5"))
        async with client.post(server.url + "/funcs.hello", data=b"John") as response:
            assert (response.status, await response.read()) == (200, b"v5 John")
        status, err = await server.stop()
    assert status == 0
    assert f"{path}:4: '<eof>' expected near 'end'" in err
