"""Plugins (msgscript.lua.plugin_loader): loading them from a directory and from entry points, their errors, and the
module contract."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from msgscript.errors import ConfigError
from msgscript.executors.lua import LuaExecutor
from msgscript.lua import api
from msgscript.lua.modules import builtin_modules
from msgscript.lua.plugin_loader import load_plugins
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message
from tests.processes import run_msgscript
from tests.servers import free_port, run_nats_server

BUNDLED_MODULES = {
    "hello",
    "scrape",
    "mysql",
    "sqlite3",
    "postgres",
    "vault",
    *"cmd crypto filepath inspect ioutil log runtime storage strings tac tcp template time yaml".split(),
}


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


GREET_PLUGIN = """
    class Greet:
        name = "greet"
        inline_safe = True

        def load(self, lua, ctx):
            return {"hi": lambda who: b"hi " + who}

    def preload(modules, envs):
        modules.add(Greet())
"""


def test_bundled_plugins_offer_every_documented_module() -> None:
    modules = load_plugins(PLUGIN_DIR, {}, builtin_modules())
    assert set(modules) == BUNDLED_MODULES


def test_bundled_modules_declare_whether_they_are_inline_safe() -> None:
    modules = {**builtin_modules(), **load_plugins(PLUGIN_DIR, {}, builtin_modules())}
    undeclared = {name for name, mod in modules.items() if not isinstance(getattr(mod, "inline_safe", None), bool)}
    assert undeclared == set()


def test_the_public_api_names() -> None:
    assert sorted(api.__all__) == [
        "HandleLimit",
        "LoopCharges",
        "LuaArgumentError",
        "LuaModule",
        "ModuleContext",
        "NO_VALUE",
        "PluginModules",
        "Services",
        "argument",
        "as_text",
        "check_bool",
        "check_number",
        "check_present",
        "check_self",
        "check_string",
        "check_table",
        "check_text",
        "error_text",
        "go_float_text",
        "is_number",
        "is_table",
        "json_decode_bytes",
        "json_module",
        "lua_chunk",
        "lua_number_text",
        "lua_type_name",
        "opt_bool",
        "opt_number",
        "opt_string",
        "parse_number",
        "raw_getter",
        "raw_text",
        "to_integer",
        "to_number",
        "to_string",
        "to_text",
    ]
    assert all(hasattr(api, name) for name in api.__all__)


async def test_plugins_from_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "greet.py", GREET_PLUGIN)
    # A package whose folder name is not a Python identifier, with a relative import.
    write(tmp_path / "my-pkg" / "_words.py", "WORD = 'shout'\n")
    write(
        tmp_path / "my-pkg" / "__init__.py",
        """
        from ._words import WORD

        class Shout:
            name = WORD

            def load(self, lua, ctx):
                return {"it": lambda text: text.upper(), "env": ctx.env.get("PLUGIN_TEST", "")}

        def preload(modules, envs):
            assert envs["PLUGIN_TEST"] == "set"
            modules.add(Shout())
        """,
    )
    write(tmp_path / "_ignored.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path / "notes.txt", "not a plugin\n")
    (tmp_path / "empty-folder").mkdir()
    async with lua_executor(plugin_dir=str(tmp_path), env={"PLUGIN_TEST": "set"}) as ex:
        body = """
            local greet, shout = require("greet"), require("shout")
            return greet.hi(shout.it(payload)) .. " " .. shout.env
        """
        assert await on_message(ex, body, "there") == b"hi THERE set"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"bad.py": "def preload(:\n"}, "failed to open plugin file {dir}/bad.py: SyntaxError"),
        (
            {"boom.py": "raise ImportError('no driver')\n"},
            "failed to open plugin file {dir}/boom.py: ImportError: no driver",
        ),
        ({"nothing.py": "X = 1\n"}, "failed to find Plugin symbol: {dir}/nothing.py defines no preload"),
        ({"wrong.py": "preload = 3\n"}, "invalid plugin: {dir}/wrong.py"),
        (
            {"fails.py": "def preload(modules, envs):\n    raise ValueError('missing setting')\n"},
            "plugin {dir}/fails.py failed to preload: missing setting",
        ),
        (
            {
                "dup.py": "class J:\n    name = 'json'\n    def load(self, lua, ctx): return {}\n"
                "def preload(modules, envs):\n    modules.add(J())\n"
            },
            "invalid plugin: {dir}/dup.py: a Lua module named 'json' already exists",
        ),
        (
            {"a.py": GREET_PLUGIN, "b.py": GREET_PLUGIN},
            "invalid plugin: {dir}/b.py: a Lua module named 'greet' already exists",
        ),
        (
            {"noload.py": "class N:\n    name = 'n'\ndef preload(modules, envs):\n    modules.add(N())\n"},
            "invalid plugin: {dir}/noload.py: module 'n' has no load(lua, ctx) method",
        ),
    ],
)
def test_a_broken_plugin_is_one_clear_error(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, source in files.items():
        write(tmp_path / name, source)
    with pytest.raises(ConfigError) as info:
        load_plugins(str(tmp_path), {}, builtin_modules())
    assert str(info.value).startswith(expected.format(dir=tmp_path))


def test_plugin_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="failed to read plugin directory .*: not a directory"):
        load_plugins(str(tmp_path / "missing"), {}, {})


async def test_server_stops_at_startup_on_a_broken_plugin(tmp_path: Path) -> None:
    write(tmp_path / "plugins" / "bad.py", "import no_such_module_anywhere\n")
    async with run_nats_server() as server:
        code, _, err = await run_msgscript(
            "-natsurl", server.url, "-plugin", str(tmp_path / "plugins"), "-port", str(free_port())
        )
    assert code == 1
    assert "failed to read plugins: failed to open plugin file" in err
    assert "No module named 'no_such_module_anywhere'" in err
    assert "Traceback" not in err


def test_installed_plugins_are_found_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    write(site / "greet_plugin.py", GREET_PLUGIN)
    write(site / "greet_plugin-1.0.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: greet-plugin\nVersion: 1.0\n")
    write(
        site / "greet_plugin-1.0.dist-info" / "entry_points.txt",
        "[msgscript.plugins]\ngreet = greet_plugin:preload\n",
    )
    monkeypatch.syspath_prepend(str(site))
    assert set(load_plugins("", {}, builtin_modules())) == {"greet"}


class Recorder:
    """A module that exercises the context: cleanups, globals, the current directory and to_lua."""

    name = "recorder"

    def __init__(self) -> None:
        self.closed: list[str] = []

    def load(self, lua: object, ctx: object) -> object:
        from msgscript.lua.api import ModuleContext, lua_chunk

        assert isinstance(ctx, ModuleContext)
        ctx.on_close(lambda: self.closed.append("first"))
        ctx.on_close(lambda: self.closed.append("second"))
        ctx.set_global("RecorderKV", {"new": lambda key: {"key": key}})
        make = lua_chunk(lua, "recorder", b"return function(f) return { twice = function(x) return f(f(x)) end } end")
        return {
            "chdir": lambda path: ctx.chdir(path.decode()),
            "cwd": ctx.workdir,
            "doubled": make(ctx.to_lua(lambda x: x * 2)),
        }


async def test_module_context(tmp_path: Path) -> None:
    recorder = Recorder()
    async with LuaExecutor(
        modules={"recorder": recorder}, nats=None, env={}, max_memory_bytes=16 * 1024 * 1024, threads=2
    ) as ex:
        body = """
            local r = require("recorder")
            local scratch = r.cwd()
            assert(RecorderKV.new("k").key == "k")
            local f = assert(io.open("sub", "w")) f:close()
            assert(not pcall(r.chdir, "sub"))
            os.remove("sub")
            assert(os.execute("mkdir sub") == 0)
            r.chdir("sub")
            f = assert(io.open("inside.txt", "w")) f:write("x") f:close()
            r.chdir("..")
            assert(r.cwd() == scratch)
            return scratch .. "|" .. r.doubled.twice(5) .. "|" .. tostring(io.open("sub/inside.txt") ~= nil)
        """
        scratch, doubled, found = (await on_message(ex, body) or b"").decode().split("|")
        assert (doubled, found) == ("20", "true")
        assert not os.path.exists(scratch)
        assert recorder.closed == ["second", "first"]
        # Globals set by a module belong to the execution that required it.
        assert await on_message(ex, "return tostring(RecorderKV)") == b"nil"
        # Cleanups run when the script fails too.
        recorder.closed.clear()
        with pytest.raises(Exception, match="failed to call OnMessage function"):
            await on_message(ex, 'require("recorder") error("boom")')
        assert recorder.closed == ["second", "first"]
