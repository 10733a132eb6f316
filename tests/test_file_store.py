"""The file store on real directories: what `load` reads, how files are named, rewritten and removed, and what
it refuses. The contract it shares with the other stores is in tests/test_store.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.errors import ConfigError, LibraryNotFound, StoreError
from msgscript.script import Script, parse_script
from msgscript.store.file_store import FileStore
from msgscript.store.script_files import library_file_name, script_file_name
from tests.test_cli_scripts import write

HELLO = "--* subject: funcs.hello\n--* name: hello\nfunction OnMessage(subject, payload) return payload end\n"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    scripts, libraries = tmp_path / "scripts", tmp_path / "libs"
    scripts.mkdir()
    libraries.mkdir()
    return scripts, libraries


async def loaded(scripts: Path | str = "", libraries: Path | str = "") -> FileStore:
    store = FileStore(scripts, libraries)
    await store.load()
    return store


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_load_reads_the_lua_files_directly_inside(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    scripts, libraries = dirs
    caplog.set_level(logging.INFO, logger="msgscript.store.file_store")
    write(scripts / "hello.lua", HELLO)
    write(scripts / "anonymous.lua", "function OnMessage() end\n")
    write(scripts / "bad.lua", "--* subject: funcs.bad\n--* name: bad\n--* timeout: soon\n")
    write(scripts / "notes.txt", "--* subject: funcs.txt\n--* name: txt\n")
    write(scripts / "nested" / "deep.lua", "--* subject: funcs.deep\n--* name: deep\n")
    write(libraries / "web.lua", "--* name: web\nWeb = {}\n")
    store = await loaded(scripts, libraries)
    assert await store.script("funcs.hello", "hello") == parse_script(HELLO)
    # A script without headers is held (as the daemon always did) but cannot be listed by subject and name.
    assert len(store) == 2
    assert await store.script_names() == [("funcs.hello", "hello")]
    assert await store.load_libraries(["web"]) == ("Web = {}",)
    assert f"skipping script {scripts / 'bad.lua'}: invalid timeout header 'soon'" in caplog.text
    assert f"loaded 2 scripts from {scripts}" in caplog.text
    assert f"loaded 1 libraries from {libraries}" in caplog.text


async def test_the_last_file_by_name_is_served(dirs: tuple[Path, Path]) -> None:
    scripts, _ = dirs
    write(scripts / "a.lua", HELLO.replace("return payload", "return 'a'"))
    write(scripts / "b.lua", HELLO.replace("return payload", "return 'b'"))
    store = await loaded(scripts)
    served = await store.script("funcs.hello", "hello")
    assert served is not None and "'b'" in served.content
    assert len(store) == 1


async def test_a_missing_library_has_the_store_text(dirs: tuple[Path, Path]) -> None:
    store = await loaded(*dirs)
    with pytest.raises(LibraryNotFound, match="^library 'nosuchlib' not found$"):
        await store.load_libraries(["nosuchlib"])


async def test_open_store_needs_a_readable_script_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^script directory cannot be empty$"):
        async with open_store(Settings(backend="file", script_dir="")):
            pass
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        async with open_store(Settings(backend="file", script_dir=str(missing))):
            pass
    assert str(info.value) == f"failed to read directory {missing}: No such file or directory"


async def test_new_files_are_named_after_subject_and_name(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    store = await loaded(scripts, libraries)
    await store.put_script(parse_script(HELLO))
    await store.put_script(replace(parse_script(HELLO), subject="funcs.*", name="a b"))
    await store.put_library("sub/x", "X = 1")
    await store.put_library(".hidden", "H = 1")
    assert names(scripts) == ["funcs.%2A@a%20b.lua", "funcs.hello@hello.lua"]
    assert names(libraries) == ["%2Ehidden.lua", "sub%2Fx.lua"]
    assert script_file_name("funcs.*", "a b") == "funcs.%2A@a%20b.lua"
    assert library_file_name("sub/x") == "sub%2Fx.lua"


async def test_a_script_without_text_is_rendered_and_reads_back_the_same(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    script = Script(
        subject="funcs.page",
        name="page",
        content="--* timeout: 2s\nfunction GET(url) return 'hi' end",
        executor_header="lua",
        html=True,
        libraries=("web", "json"),
        timeout_s=2.0,
    )
    store = await loaded(scripts, libraries)
    await store.put_script(script)
    await store.put_library("web", "Web = {}")
    assert (scripts / "funcs.page@page.lua").read_text() == (
        "--* subject: funcs.page\n--* name: page\n--* require: web\n--* require: json\n--* html: true\n"
        "--* executor: lua\n--* timeout: 2s\nfunction GET(url) return 'hi' end\n"
    )
    assert (libraries / "web.lua").read_text() == "--* name: web\nWeb = {}\n"
    again = await loaded(scripts, libraries)
    assert await again.script("funcs.page", "page") == script
    assert await again.load_libraries(["web"]) == ("Web = {}",)


async def test_a_text_is_written_as_it_is_with_its_headers_set(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    text = "-- top\r\n--* subject: old.subject\r\n--* require: web\r\n--* name: old\r\nX = 1\r\n"
    store = await loaded(scripts, libraries)
    await store.put_script(replace(parse_script(text), subject="funcs.new"), text=text)
    assert (scripts / "funcs.new@old.lua").read_bytes() == (
        b"--* subject: funcs.new\r\n-- top\r\n--* require: web\r\n--* name: old\r\nX = 1\r\n"
    )
    library = "--* name: web\n\n-- kept as it is\nWeb = {}"
    await store.put_library("web", parse_script(library).content, text=library)
    assert (libraries / "web.lua").read_text() == library


async def test_a_put_rewrites_the_served_file_and_removes_the_other_holders(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    write(scripts / "a-old.lua", HELLO)
    write(scripts / "b-current.lua", HELLO)
    write(scripts / "other.lua", HELLO.replace("funcs.hello", "funcs.other"))
    write(libraries / "1.lua", "--* name: web\nWeb = 1\n")
    write(libraries / "2.lua", "--* name: web\nWeb = 2\n")
    store = await loaded(scripts, libraries)
    new = HELLO.replace("return payload", "return 'v2'")
    await store.put_script(parse_script(new), text=new)
    assert names(scripts) == ["b-current.lua", "other.lua"]
    assert (scripts / "b-current.lua").read_text() == new
    await store.put_library("web", "Web = 3")
    assert names(libraries) == ["2.lua"]
    assert (libraries / "2.lua").read_text() == "--* name: web\nWeb = 3\n"


async def test_delete_removes_every_holder(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    write(scripts / "a.lua", HELLO)
    write(scripts / "b.lua", HELLO)
    write(scripts / "c.lua", HELLO.replace("name: hello", "name: other"))
    write(libraries / "1.lua", "--* name: web\n")
    write(libraries / "2.lua", "--* name: web\n")
    store = await loaded(scripts, libraries)
    assert await store.delete_script("funcs.hello", "hello") is True
    assert names(scripts) == ["c.lua"]
    assert await store.delete_library("web") is True
    assert names(libraries) == []
    assert await store.delete_script("funcs.hello", "hello") is False
    assert await store.delete_library("web") is False


async def test_a_file_name_taken_by_something_else_is_refused(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    squatter = write(scripts / script_file_name("funcs.hello", "hello"), "-- no headers\n")
    write(libraries / "web.lua", "--* name: not-web\n")
    store = await loaded(scripts, libraries)
    with pytest.raises(StoreError) as info:
        await store.put_script(parse_script(HELLO))
    assert str(info.value) == (
        f"cannot write {squatter}: the file exists and does not hold script hello of subject funcs.hello"
    )
    assert squatter.read_text() == "-- no headers\n"
    assert await store.script("funcs.hello", "hello") is None
    with pytest.raises(StoreError, match="does not hold library web$"):
        await store.put_library("web", "Web = {}")


async def test_what_would_not_read_back_the_same_is_refused(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    store = await loaded(scripts, libraries)
    with pytest.raises(StoreError, match="would not read back as the same script"):
        await store.put_script(parse_script(HELLO), text=HELLO.replace("return payload", "return 1"))
    with pytest.raises(StoreError, match="would not read back as the same script"):
        await store.put_script(Script(subject="funcs.x", name="two\nlines"))
    with pytest.raises(StoreError, match="needs a subject and a name"):
        await store.put_script(Script(subject="funcs.x"))
    with pytest.raises(StoreError, match="would not read back as the same library"):
        await store.put_library("web", "Web = {}", text="--* name: web\nWeb = 2\n")
    with pytest.raises(StoreError, match="^cannot write library web: invalid timeout header"):
        await store.put_library("web", "--* timeout: soon")
    assert names(scripts) == names(libraries) == []


async def test_without_a_directory_writing_and_listing_fail(dirs: tuple[Path, Path]) -> None:
    scripts, libraries = dirs
    only_libraries, only_scripts = await loaded(libraries=libraries), await loaded(scripts=scripts)
    for attempt in (
        only_libraries.put_script(parse_script(HELLO)),
        only_libraries.delete_script("funcs.hello", "hello"),
        only_libraries.script_names(),
    ):
        with pytest.raises(StoreError, match="^script directory cannot be empty$"):
            await attempt
    for attempt in (
        only_scripts.put_library("web", "Web = {}"),
        only_scripts.delete_library("web"),
        only_scripts.library_names(),
    ):
        with pytest.raises(StoreError, match="^library directory cannot be empty$"):
            await attempt
    assert await only_libraries.scripts_for("funcs.hello") == []
