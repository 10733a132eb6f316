"""The Store contract, held against every backend: memory (lenient and strict about libraries), file (two real
directories) and etcd (a real server). What only one backend does lives in tests/test_<backend>_store.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from msgscript.compose import open_store
from msgscript.config import Settings
from msgscript.errors import LibraryNotFound
from msgscript.script import Script, parse_script
from msgscript.store.base import Store
from msgscript.store.memory_store import MemoryStore
from tests.servers import run_etcd


@dataclass
class Backend:
    store: Store
    strict_libraries: bool
    """A missing library raises LibraryNotFound (file, etcd, and a memory store asked to); else it is skipped."""


@pytest.fixture(params=["memory", "strict memory", "file", "etcd"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(MemoryStore(), strict_libraries=False)
    elif request.param == "strict memory":
        yield Backend(MemoryStore(missing_libraries_are_errors=True), strict_libraries=True)
    elif request.param == "file":
        scripts, libraries = tmp_path / "scripts", tmp_path / "libs"
        scripts.mkdir()
        libraries.mkdir()
        settings = Settings(backend="file", script_dir=str(scripts), library_dir=str(libraries))
        async with open_store(settings) as store:
            yield Backend(store, strict_libraries=True)
    else:
        async with run_etcd() as etcd_server:
            async with open_store(Settings(backend="etcd", etcd_endpoints=(etcd_server.url,))) as store:
                yield Backend(store, strict_libraries=True)


def script(subject: str, name: str, body: str = "return payload") -> Script:
    """A script as read from a file with these headers."""
    return parse_script(
        f"--* subject: {subject}\n--* name: {name}\n-- {name}\nfunction OnMessage(subject, payload) {body} end\n"
    )


async def names_for(store: Store, subject: str) -> list[str]:
    return sorted(s.name for s in await store.scripts_for(subject))


async def test_an_empty_store_holds_nothing(backend: Backend) -> None:
    store = backend.store
    assert len(store) == 0
    assert await store.subjects() == []
    assert await store.script_names() == []
    assert await store.library_names() == []
    assert await store.scripts_for("funcs.hello") == []
    assert await store.script("funcs.hello", "hello") is None
    assert await store.load_libraries([]) == ()


async def test_a_script_put_is_found_by_subject_and_name(backend: Backend) -> None:
    store = backend.store
    hello = replace(script("funcs.hello", "hello"), libraries=("web",))
    await store.put_script(hello)
    assert await store.script("funcs.hello", "hello") == hello
    assert await store.scripts_for("funcs.hello") == [hello]
    assert await store.script("funcs.hello", "other") is None
    assert await store.script("funcs.other", "hello") is None
    assert await store.subjects() == ["funcs.hello"]
    assert await store.script_names() == [("funcs.hello", "hello")]
    assert len(store) == 1


async def test_a_put_replaces_the_script_under_the_same_subject_and_name(backend: Backend) -> None:
    store = backend.store
    await store.put_script(script("funcs.hello", "hello", "return 'v1'"))
    second = script("funcs.hello", "hello", "return 'v2'")
    await store.put_script(second)
    assert await store.script("funcs.hello", "hello") == second
    assert await store.scripts_for("funcs.hello") == [second]
    assert len(store) == 1


async def test_the_file_text_given_with_a_script_does_not_change_what_is_stored(backend: Backend) -> None:
    text = "-- top\r\n--* require: web\r\n--* subject: old.subject\r\n--* name: old\r\n--* timeout: 2s\r\nX = 1\r\n"
    renamed = replace(parse_script(text), subject="funcs.renamed", name="renamed")
    await backend.store.put_script(renamed, text=text)
    assert await backend.store.script("funcs.renamed", "renamed") == renamed
    library_text = "--* name: web\n-- a comment\nWeb = {}\n"
    await backend.store.put_library("web", parse_script(library_text).content, text=library_text)
    assert await backend.store.load_libraries(["web"]) == ("-- a comment\nWeb = {}",)


async def test_delete_script_says_whether_there_was_one(backend: Backend) -> None:
    store = backend.store
    await store.put_script(script("funcs.hello", "hello"))
    await store.put_script(script("funcs.hello", "other"))
    assert await store.delete_script("funcs.hello", "hello") is True
    assert await store.script("funcs.hello", "hello") is None
    assert await store.script_names() == [("funcs.hello", "other")]
    assert await store.delete_script("funcs.hello", "hello") is False
    assert await store.delete_script("funcs.never", "never") is False
    assert await store.delete_script("funcs.hello", "other") is True
    assert await store.subjects() == []
    assert await store.scripts_for("funcs.hello") == []
    assert len(store) == 0


async def test_scripts_for_takes_exact_subjects_and_wildcard_patterns(backend: Backend) -> None:
    store = backend.store
    for subject, name in [
        ("funcs.hello", "hello"),
        ("funcs.hello_plugin", "plugin"),
        ("funcs.*", "star"),
        ("funcs.>", "tail"),
        (">", "any"),
        ("*.hello", "front"),
    ]:
        await store.put_script(script(subject, name))
    assert await names_for(store, "funcs.hello") == ["any", "front", "hello", "star", "tail"]
    assert await names_for(store, "funcs.other") == ["any", "star", "tail"]
    assert await names_for(store, "funcs.a.b") == ["any", "tail"]
    assert await names_for(store, "funcs") == ["any"]
    assert await names_for(store, "other.hello") == ["any", "front"]
    # A pattern is stored under itself too; removing it stops the matching.
    assert await names_for(store, "funcs.*") == ["any", "star", "tail"]
    assert await store.delete_script("funcs.>", "tail") is True
    assert await store.delete_script(">", "any") is True
    assert await names_for(store, "funcs.a.b") == []
    assert await names_for(store, "funcs.other") == ["star"]


async def test_subjects_and_script_names_are_sorted_and_distinct(backend: Backend) -> None:
    store = backend.store
    for subject, name in [("b.x", "2"), ("a.x", "1"), ("b.x", "1"), ("funcs.*", "z")]:
        await store.put_script(script(subject, name))
    assert await store.subjects() == ["a.x", "b.x", "funcs.*"]
    assert await store.script_names() == [("a.x", "1"), ("b.x", "1"), ("b.x", "2"), ("funcs.*", "z")]
    assert len(store) == 4
    await store.delete_script("b.x", "1")
    await store.delete_script("b.x", "2")
    assert await store.subjects() == ["a.x", "funcs.*"]
    assert len(store) == 2


async def test_libraries_load_in_the_order_asked(backend: Backend) -> None:
    store = backend.store
    await store.put_library("web", "Web = {}")
    await store.put_library("json", "-- json\nJson = {}")
    assert await store.load_libraries(["json", "web"]) == ("-- json\nJson = {}", "Web = {}")
    assert await store.load_libraries(["web", "json"]) == ("Web = {}", "-- json\nJson = {}")
    assert await store.library_names() == ["json", "web"]
    await store.put_library("web", "Web = {v = 2}")
    assert await store.load_libraries(["web"]) == ("Web = {v = 2}",)
    assert await store.library_names() == ["json", "web"]
    assert await store.delete_library("web") is True
    assert await store.delete_library("web") is False
    assert await store.library_names() == ["json"]
    assert len(store) == 0  # libraries are not scripts


async def test_a_missing_library_is_an_error_or_skipped(backend: Backend) -> None:
    store = backend.store
    await store.put_library("web", "Web = {}")
    await store.put_library("json", "Json = {}")
    await store.delete_library("json")
    if not backend.strict_libraries:
        assert await store.load_libraries(["nosuchlib", "web", "json"]) == ("Web = {}",)
        return
    with pytest.raises(LibraryNotFound) as info:
        await store.load_libraries(["web", "nosuchlib"])
    assert info.value.name == "nosuchlib"
    with pytest.raises(LibraryNotFound) as info:
        await store.load_libraries(["json"])  # deleted
    assert info.value.name == "json"


async def test_listeners_hear_of_every_change_to_the_scripts(backend: Backend) -> None:
    store = backend.store
    heard: list[str] = []
    store.add_listener(lambda: heard.append("first"))
    store.add_listener(lambda: heard.append("second"))
    await store.put_script(script("funcs.hello", "hello"))
    assert heard == ["first", "second"]
    await store.put_script(script("funcs.hello", "hello", "return 'v2'"))
    assert heard[2:] == ["first", "second"]
    await store.delete_script("funcs.hello", "hello")
    assert heard[4:] == ["first", "second"]
    # Libraries are read when a script runs: changing them changes no script.
    await store.put_library("web", "Web = {}")
    await store.delete_library("web")
    assert len(heard) == 6
