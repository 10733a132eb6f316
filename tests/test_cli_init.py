"""`msgscriptcli init DIR`: the project it writes, served by a real daemon, and its refusal to overwrite."""

from __future__ import annotations

import base64
import json
from pathlib import Path, PurePosixPath

import aiohttp
import nats
import pytest

from msgscript.cli.init import write_project
from msgscript.cli.main import cli
from msgscript.message import Reply
from tests.processes import daemon_running, run_msgscriptcli
from tests.servers import NatsServer, free_port
from tests.test_cluster import answers, wait_until

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "Containerfile",
    "README.md",
    "flake.nix",
    "libraries/web.lua",
    "scripts/hello.lua",
    "scripts/web.lua",
    "tests/hello_test.lua",
    "tests/web_test.lua",
]


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


@pytest.fixture
async def project(tmp_path: Path) -> Path:
    """A project written by `msgscriptcli init`."""
    directory = tmp_path / "demo"
    code, out, err = await run_msgscriptcli("init", directory)
    assert (code, err) == (0, "")
    assert f"msgscript -script {directory}/scripts -library {directory}/libraries" in out
    assert f"msgscriptcli test {directory}/tests" in out
    return directory


async def test_init_writes_a_project(project: Path) -> None:
    assert files_under(project) == FILES
    # The router is the daemon's own libraries/web.lua.
    assert (project / "libraries" / "web.lua").read_bytes() == (ROOT / "libraries" / "web.lua").read_bytes()
    assert not (project / "libraries" / "web.lua").is_symlink()
    readme = (project / "README.md").read_text()
    assert "msgscript -script scripts -library libraries" in readme
    assert "msgscriptcli test tests" in readme
    for deploy in ("flake.nix", "Containerfile"):
        assert "docs/deploy.md" in (project / deploy).read_text()
    for test_file in ("hello_test.lua", "web_test.lua"):
        text = (project / "tests" / test_file).read_text()
        assert 'require("test")' in text
        assert "function test_" in text


async def test_the_project_is_served_by_the_daemon(
    project: Path, nats_server: NatsServer, nc: nats.NATS, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The command of the README, with no plugin directory.
    command = ("-script", str(project / "scripts"), "-library", str(project / "libraries"))
    command += ("-natsurl", nats_server.url, "-http-host", "127.0.0.1", "-port", str(port))
    async with daemon_running(*command):
        await wait_until(lambda: answers(nc, "funcs.hello"), 10)
        reply = Reply.from_json((await nc.request("funcs.hello", b"world", timeout=10)).data)
        assert [(r.payload, r.error) for r in reply.results or ()] == [(b"Hello, world!", "")]

        async with client.post(base + "/funcs.hello", data=b"NATS") as resp:
            (result,) = json.loads(await resp.read())
            assert base64.b64decode(result["payload"]) == b"Hello, NATS!"

        async with client.get(base + "/web/") as resp:
            assert (resp.status, resp.headers["Content-Type"]) == (200, "text/html")
            page = await resp.text()
            assert page.startswith("<!DOCTYPE html>")
            assert "<h1>It works</h1>" in page

        async def json_route(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
            async with client.request(method, base + "/web" + path, data=body) as resp:
                assert resp.headers["Content-Type"] == "application/json"
                return resp.status, await resp.read()

        assert await json_route("GET", "/api/hello?name=Ada") == (200, b'{"greeting":"Hello, Ada!"}')
        assert await json_route("POST", "/api/hello", b'{"name": "Grace"}') == (200, b'{"greeting":"Hello, Grace!"}')
        assert await json_route("POST", "/api/hello", b"name=Linus") == (200, b'{"greeting":"Hello, Linus!"}')
        assert await json_route("GET", "/api/hello") == (400, b'{"error":"name is required"}')
        assert await json_route("POST", "/api/hello", b'{"name": 42}') == (400, b'{"error":"name is required"}')
        status, body = await json_route("POST", "/api/hello", b'{"name": ')
        assert (status, json.loads(body)["error"][:19]) == (400, "invalid JSON body: ")
        assert await json_route("GET", "/nothing") == (404, b'{"error":"not found"}')


@pytest.mark.skipif("test" not in cli.commands, reason="msgscriptcli has no test command")
async def test_the_project_tests_pass(project: Path) -> None:
    code, out, err = await run_msgscriptcli("test", project / "tests", timeout=60)
    assert code == 0, out + err


async def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    (directory / "scripts").mkdir(parents=True)
    (directory / "scripts" / "hello.lua").write_text("mine")
    (directory / "notes.txt").write_text("kept")
    code, out, err = await run_msgscriptcli("init", directory)
    assert (code, out) == (1, "")
    assert err.startswith(f"refusing to overwrite existing files in {directory} (nothing was written): ")
    assert str(directory / "scripts" / "hello.lua") in err
    assert files_under(directory) == ["notes.txt", "scripts/hello.lua"]
    assert (directory / "scripts" / "hello.lua").read_text() == "mine"


async def test_init_into_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("kept")
    code, _, err = await run_msgscriptcli("init", tmp_path)
    assert (code, err) == (0, "")
    assert files_under(tmp_path) == sorted([*FILES, "notes.txt"])


async def test_init_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = await run_msgscriptcli("init", tmp_path / "file")
    assert code == 1
    assert str(tmp_path / "file") in err
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "tests").write_text("not a directory")
    code, _, err = await run_msgscriptcli("init", tmp_path / "demo")
    assert code == 1
    assert str(tmp_path / "demo" / "tests") in err
    assert files_under(tmp_path) == ["demo/tests", "file"]


async def test_init_needs_a_directory() -> None:
    code, _, err = await run_msgscriptcli("init")
    assert code == 2
    assert "Missing argument 'DIRECTORY'" in err


def test_a_failed_write_keeps_nothing(tmp_path: Path) -> None:
    # `b` turns into a file after the checks: writing b/y fails, and a/x and a/ are removed again.
    (tmp_path / "b").write_text("in the way")
    files = {PurePosixPath("a/x"): b"x", PurePosixPath("b/y"): b"y"}
    with pytest.raises(NotADirectoryError):
        write_project(tmp_path, files)
    assert files_under(tmp_path) == ["b"]
    assert not (tmp_path / "a").exists()
