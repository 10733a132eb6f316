"""The Lua sandbox against hostile scripts: what an execution can reach, what stops it, what it leaves behind.

Each test is a script written to break one guarantee (the deadline, the memory cap, isolation between
executions, the event loop's responsiveness); the daemon-level versions, with a concurrent hello, are in
test_isolation.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from msgscript.errors import ScriptTimeout
from msgscript.executors.lua import LuaExecutor
from msgscript.lua.api import ModuleContext
from msgscript.lua.modules import builtin_modules
from msgscript.lua.runtime import INLINE_PYTHON_BYTES, MAX_OPEN_FILES
from tests.test_executor_lua import MEMORY_CAP, error_of, run

BINARY = "attempt to load a binary chunk (mode is 't')"
# A pattern whose backtracking takes seconds in one C call, which no instruction hook can interrupt: about 3.6 s
# here, so that it outlasts the 2.5 s after which an abandoned thread is reported stuck (at 350 letters, 2.2 s
# did not).
STUCK_FIND = 'string.find(string.rep("a", 400), ".-.-.-b")'


def make(threads: int = 4, **kwargs: Any) -> LuaExecutor:
    modules = builtin_modules() | kwargs.pop("modules", {})
    return LuaExecutor(modules=modules, nats=None, env={}, max_memory_bytes=MEMORY_CAP, threads=threads, **kwargs)


@pytest.fixture
async def ex() -> AsyncIterator[LuaExecutor]:
    async with make() as executor:
        yield executor


async def payload(ex: LuaExecutor, body: str, **kwargs: Any) -> str:
    result = await run(ex, body, **kwargs)
    assert result.payload is not None
    return result.payload.decode()


async def max_loop_lag(work: Awaitable[Any]) -> tuple[float, Any]:
    """Run `work` while measuring how late a 5 ms timer fires at worst: the event loop's longest stall."""
    lag = 0.0
    done = False

    async def probe() -> None:
        nonlocal lag
        while not done:
            started = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - started - 0.005)

    task = asyncio.create_task(probe())
    try:
        outcome: Any = await work
    except Exception as exc:
        outcome = exc
    finally:
        done = True
        await task
    return lag, outcome


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# The deadline, whatever the script does


@pytest.mark.parametrize(
    "body",
    [
        # The hook raises the timeout error, and Lua runs an error handler with the hook off.
        'while true do xpcall(function() error("x") end, function() while true do end end) end',
        "xpcall(function() while true do end end, function() while true do end end)",
        "xpcall(function() while true do end end, function(e) return xpcall(error, function() while 1 do end end) end)",
        # An error value whose __tostring loops, for the sandbox's own handler.
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
        "coroutine.wrap(function() xpcall(function() while true do end end, function() while 1 do end end) end)()",
        'string.gsub(("x"):rep(10), ".", function() while true do end end)',
        "while true do local ok = pcall(coroutine.wrap(function() while true do end end)) end",
    ],
)
async def test_no_script_outlives_its_deadline(ex: LuaExecutor, body: str) -> None:
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match="^script timed out after 300ms$"):
        await run(ex, f"function OnMessage() {body} end", timeout_s=0.3)
    assert time.monotonic() - started < 0.3 + 0.2
    # Stopped by the hook, not abandoned: the thread is back.
    assert ex.abandoned == 0


async def test_the_driver_is_out_of_reach(ex: LuaExecutor) -> None:
    script = """
        function OnMessage()
            local seen = {}
            for level = 1, 30 do
                local info = debug.getinfo(level, "f")
                if info == nil then break end
                seen[#seen + 1] = tostring(info.func == OnMessage or info.func)
            end
            local inner = {}
            xpcall(function()
                for level = 1, 10 do
                    local info = debug.getinfo(level, "f")
                    if info then inner[#inner + 1] = tostring(info.func ~= nil) end
                end
            end, print)
            return table.concat(seen, ",") .. "|" .. table.concat(inner, ",")
        end
    """
    seen, inner = (await payload(ex, script)).split("|")
    # Only the script's own function is visible; every frame above it (the driver) has no func.
    assert seen.split(",")[0] == "true"
    assert set(seen.split(",")[1:]) == {"nil"}
    # Inside xpcall: the anonymous function, then the raw xpcall and its wrapper (hidden), then OnMessage.
    frames = inner.split(",")
    assert frames[:4] == ["true", "false", "false", "true"]
    assert set(frames[4:]) == {"false"}


async def test_debug_keeps_only_traceback_and_getinfo(ex: LuaExecutor) -> None:
    script = """
        function OnMessage()
            local out = {}
            for _, name in ipairs({"getlocal", "setlocal", "getupvalue", "setupvalue", "getfenv", "setfenv",
                                   "getmetatable", "setmetatable", "sethook", "gethook", "getregistry"}) do
                local ok, err = pcall(debug[name], 1, 1)
                out[#out + 1] = tostring(ok) .. ":" .. tostring(err):match("debug%.%a+ is not allowed")
            end
            out[#out + 1] = tostring(debug.traceback("tb"):find("^tb\\nstack traceback:") ~= nil)
            out[#out + 1] = debug.getinfo(math.floor).what .. debug.getinfo(1, "S").what
            return table.concat(out, "|")
        end
    """
    parts = (await payload(ex, script)).split("|")
    refused = ("getlocal", "setlocal", "getupvalue", "setupvalue", "getfenv", "setfenv", "getmetatable")
    refused += ("setmetatable", "sethook", "gethook", "getregistry")
    assert parts[:-2] == [f"false:debug.{name} is not allowed" for name in refused]
    assert parts[-2:] == ["true", "CLua"]


async def test_userdata_environments_cannot_be_replaced(ex: LuaExecutor) -> None:
    # debug.setfenv(io.stdout, {}) used to crash the process when the file was closed.
    assert "debug.setfenv is not allowed" in await error_of(ex, "function OnMessage() debug.setfenv(io.stdout, {}) end")
    assert await payload(ex, "function OnMessage() return io.type(io.stdout) end") == "file"


# Bytecode


async def test_binary_chunks_are_refused(ex: LuaExecutor) -> None:
    script = """
        function OnMessage()
            local dumped = string.dump(function() return 1 end)
            local out = {}
            out[1] = select(2, loadstring(dumped))
            local pieces = {dumped}
            out[2] = select(2, load(function() return table.remove(pieces, 1) end))
            local f = io.open("chunk.lua", "wb") f:write(dumped) f:close()
            out[3] = select(2, loadfile("chunk.lua"))
            out[4] = select(2, pcall(dofile, "chunk.lua"))
            f = io.open("shebang.lua", "wb") f:write("#!/usr/bin/lua\\n" .. dumped) f:close()
            out[5] = select(2, loadfile("shebang.lua"))
            package.path = "./?.lua"
            f = io.open("evil.lua", "wb") f:write(dumped) f:close()
            out[6] = select(2, pcall(require, "evil"))
            return table.concat(out, "\\n")
        end
    """
    lines = (await payload(ex, script)).split("\n")
    assert lines[:3] == [BINARY] * 3
    assert lines[3].endswith(BINARY) and lines[4] == BINARY
    assert "error loading module 'evil'" in lines[5] and BINARY in lines[6]


async def test_source_chunks_still_load(ex: LuaExecutor) -> None:
    script = """
        function OnMessage()
            local f = io.open("ok.lua", "w")
            f:write("#!/usr/bin/lua\\nlocal n = ...\\nif n then return 40 + n end\\nerror('line four')")
            f:close()
            local chunk = assert(loadfile("ok.lua"))
            local _, err = pcall(chunk)
            local n = 0
            local parts = {"return ", "1", " + 1"}
            local g = load(function() n = n + 1 return parts[n] end)
            return tostring(assert(loadstring("return 7"))()) .. " " .. g() .. " " .. chunk(2) .. " "
                .. err:match(":(%d+):")
        end
    """
    assert await payload(ex, script) == "7 2 42 4"


async def test_loadfile_never_reads_the_daemon_stdin(ex: LuaExecutor) -> None:
    assert await payload(ex, "function OnMessage() return select(2, loadfile()) end") == (
        "loadfile without a file name is not allowed"
    )


# Shared state between executions


async def test_file_metatable_is_protected_and_never_leaks(ex: LuaExecutor) -> None:
    poison = """
        function OnMessage()
            local mt = getmetatable(io.stdout)
            local ok = pcall(function() mt.read = function() return "poisoned" end end)
            local ok2 = pcall(setmetatable, io.stdout, {})
            return tostring(mt) .. tostring(ok) .. tostring(ok2)
        end
    """
    assert await payload(ex, poison) == "falsefalsefalse"
    check = "function OnMessage() return tostring(io.stdout.read == io.stdin.read) .. type(io.stdout.read) end"
    for _ in range(20):
        assert await payload(ex, check) == "truefunction"


async def test_newproxy_is_not_available(ex: LuaExecutor) -> None:
    # Userdata with a script-made __gc would run script code with the hook off, whenever collected.
    assert await payload(ex, "function OnMessage() return type(newproxy) end") == "nil"


async def test_shared_tables_are_clean_for_the_next_execution(ex: LuaExecutor) -> None:
    poison = """
        local smt = getmetatable("")
        smt.__index = {upper = function() return "poisoned" end}
        smt.__call = function() return "poisoned" end
        rawset(getmetatable(_G).__index, "leak", "poisoned")
        table.insert = function() return "poisoned" end
        coroutine.create = nil
        package.loaded.json = "poisoned"
        function OnMessage() return "poisoned" end
    """
    await run(ex, poison)
    check = """
        function OnMessage()
            return ("a"):upper() .. tostring(leak) .. tostring(pcall(function() return ("x")() end))
                .. type(coroutine.create) .. type(require("json")) .. tostring(select("#", table.insert({}, 1)))
        end
    """
    for _ in range(8):
        assert await payload(ex, check) == "Anilfalsefunctiontable0"


# Files and other handles


async def test_files_left_open_are_closed_when_the_execution_ends(ex: LuaExecutor, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("one\ntwo\nthree\n")
    script = f"""
        function OnMessage()
            local kept = {{}}
            for i = 1, 10 do kept[#kept + 1] = io.open("{data}") end
            kept[#kept + 1] = io.tmpfile()
            for line in io.lines("{data}") do break end
            io.input("{data}")
            io.output("out.txt")
            return tostring(#kept)
        end
    """
    before = open_fds()
    assert await payload(ex, script) == "11"
    assert open_fds() <= before


async def test_open_files_are_capped_per_execution(ex: LuaExecutor) -> None:
    script = """
        function OnMessage()
            local files = {}
            while true do
                local f, err, code = io.tmpfile()
                if f == nil then
                    files[1]:close()
                    local again = io.tmpfile()
                    return #files .. " " .. err .. " " .. code .. " " .. io.type(again)
                end
                files[#files + 1] = f
            end
        end
    """
    assert await payload(ex, script) == f"{MAX_OPEN_FILES} Too many open files 24 file"


async def test_tmpname_files_are_removed_afterwards(ex: LuaExecutor) -> None:
    names = (await payload(ex, "function OnMessage() return os.tmpname() .. ' ' .. os.tmpname() end")).split()
    assert len(names) == 2 and not any(Path(name).exists() for name in names)


# Long C calls and the memory cap


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Lua 5.1 moves elements one by one to a position converted to a C int: billions of moves.
        ("local t = {} table.insert(t, 1e18, 1) return tostring(t[1e18])", "1"),
        ("local t = {} table.insert(t, -2^31 + 2, 'x') return t[-2^31 + 2]", "x"),
        ("local t = {1, 2} table.insert(t, 0, 'z') return t[0] .. #t", "z2"),
        ("local t = {'a', 'c'} table.insert(t, 2, 'b') return table.concat(t)", "abc"),
        ("local t = {'a'} table.insert(t, 'b') return table.concat(t)", "ab"),
        ("return tostring(pcall(table.insert, {}, 0/0, 1))", "false"),
        # The count converted to a C int gave "" for 2^31 and one copy for 2^32 + 1.
        ("return select(2, pcall(string.rep, 'x', 2^31))", "not enough memory"),
        ("return select(2, pcall(string.rep, 'x', 2^32 + 1))", "not enough memory"),
        ("return select(2, pcall(string.rep, 'abc', 1e12))", "not enough memory"),
        ("return '[' .. string.rep('', 2^40) .. ']'", "[]"),
        ("return ('ab'):rep(3) .. ('x'):rep(0) .. ('x'):rep(-5)", "ababab"),
    ],
)
async def test_c_functions_cannot_be_turned_into_endless_loops(ex: LuaExecutor, body: str, expected: str) -> None:
    started = time.monotonic()
    assert await payload(ex, f"function OnMessage() {body} end") == expected
    assert time.monotonic() - started < 1


async def test_module_results_past_the_cap_are_a_memory_error() -> None:
    class Blob:
        name = "blob"

        def load(self, lua: Any, ctx: ModuleContext) -> object:
            def charge(n: float) -> str:
                ctx.charge(int(n))
                return "charged"

            return {"make": lambda n: b"z" * int(n), "charge": charge}

    async with make(modules={"blob": Blob()}) as ex:
        script = """
            local blob = require("blob")
            function OnMessage()
                local ok1, e1 = pcall(blob.make, 4 * MEMORY_CAP)
                local ok2, e2 = pcall(blob.charge, 4 * MEMORY_CAP)
                return tostring(e1) .. "|" .. tostring(e2) .. "|" .. #blob.make(1000) .. blob.charge(1000)
            end
        """.replace("MEMORY_CAP", str(MEMORY_CAP))
        text = await payload(ex, script)
    assert text == "not enough memory|not enough memory|1000charged"


async def test_executions_that_reach_the_cap_end_cleanly_and_leave_the_next_its_whole_cap(ex: LuaExecutor) -> None:
    # Without files to close, the driver finishes with the cap still on (Python takes it off): what it does after
    # the script must need no memory, whether the script caught its memory error or not.
    caught = """
        function OnMessage()
            local t, i = {}, 0
            local ok, err = pcall(function() while true do i = i + 1; t[i] = string.rep("x", 1024) .. i end end)
            t = nil
            collectgarbage()
            return tostring(ok) .. " " .. tostring(err)
        end
    """
    uncaught = 'function OnMessage() local t = {} for i = 1, 1e9 do t[i] = string.rep("y", 1024) .. i end end'
    at_the_top = 'local t = {} for i = 1, 1e9 do t[i] = string.rep("z", 1024) .. i end function OnMessage() end'
    quarter = f'function OnMessage() return tostring(#string.rep("w", {MEMORY_CAP // 4})) end'
    hello = 'function OnMessage(s, p) return "hello " .. p end'
    for _ in range(3):
        # A small script answers meanwhile: the executions at the cap hold nobody up.
        filled, answered = await asyncio.gather(payload(ex, caught), payload(ex, hello, payload=b"there"))
        assert (filled, answered) == ("false not enough memory", "hello there")
        assert (await error_of(ex, uncaught)).startswith("failed to call OnMessage function: not enough memory")
        assert (await error_of(ex, at_the_top)).startswith("error executing Lua script: not enough memory")
        assert await payload(ex, quarter) == str(MEMORY_CAP // 4)


async def test_inline_executions_move_instead_of_failing_at_their_small_cap() -> None:
    class Where:
        name = "where"
        inline_safe = True

        def load(self, lua: Any, ctx: ModuleContext) -> object:
            def big(n: float) -> str:
                ctx.charge(int(n))
                return threading.current_thread().name

            return {"thread": lambda: threading.current_thread().name, "big": big}

    async with make(modules={"where": Where()}) as ex:
        # More than the inline cap holds: on a worker, with the real cap, it fits.
        script = """
            local where = require("where")
            function OnMessage()
                local ok = pcall(function()
                    local t = {}
                    for i = 1, 8 do t[i] = string.rep("x", 600 * 1024) .. i end  -- distinct: Lua interns strings
                end)
                return tostring(ok) .. " " .. where.thread()
            end
        """
        ok, thread = (await payload(ex, script)).split()
        assert ok == "true" and thread.startswith("msgscript-lua")
        charged = f'local w = require("where")\nfunction OnMessage() return w.big({2 * INLINE_PYTHON_BYTES}) end'
        assert (await payload(ex, charged)).startswith("msgscript-lua")
        small = 'local w = require("where")\nfunction OnMessage() return w.big(1000) end'
        assert await payload(ex, small) == threading.current_thread().name


@pytest.mark.parametrize(
    "body",
    [
        # Each takes a few hundred milliseconds in one C call: on the event loop, a visible stall.
        'string.find(string.rep("a", 220), ".-.-.-b")',
        'string.find(string.rep("a", 700), "a*a*b")',
        'string.find(string.rep("a", 2e5), string.rep("a", 1e4) .. "b", 1, true)',
        "table.sort((function() local t = {} for i = 1, 300000 do t[i] = -i end return t end)())",
    ],
)
async def test_long_c_calls_never_run_on_the_event_loop(ex: LuaExecutor, body: str) -> None:
    lag, result = await max_loop_lag(run(ex, f"function OnMessage() {body} return 'done' end", timeout_s=5))
    assert result.payload == b"done"
    assert lag < 0.05


# Threads the event loop stopped waiting for


async def test_a_stuck_c_call_is_answered_at_its_deadline_and_its_thread_replaced() -> None:
    stuck: list[str] = []
    async with make(threads=1, on_stuck=stuck.append) as ex:
        started = time.monotonic()
        with pytest.raises(ScriptTimeout):
            await run(ex, f"function OnMessage() {STUCK_FIND} end", timeout_s=0.3)
        assert time.monotonic() - started < 0.3 + 0.25 + 0.3
        assert ex.abandoned == 1
        # The pool's one thread is stuck; a new one serves the next execution at once.
        started = time.monotonic()
        assert (
            await payload(ex, 'function OnMessage() local n = 0 for i = 1, 1e6 do n = n + i end return "ok" end')
            == "ok"
        )
        assert time.monotonic() - started < 0.5
        for _ in range(40):
            if stuck:
                break
            await asyncio.sleep(0.1)
        assert stuck == ["script test on funcs.test"]
        # When the C call returns, the hook ends the execution and the abandoned thread exits.
        for _ in range(100):
            if ex.abandoned == 0:
                break
            await asyncio.sleep(0.1)
        assert ex.abandoned == 0


async def test_cancelling_an_execution_frees_its_thread() -> None:
    async with make(threads=1) as ex:
        for body in ("while true do end", 'os.execute("sleep 30")'):
            task = asyncio.create_task(run(ex, f"function OnMessage() {body} end", timeout_s=30))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            assert await payload(ex, 'function OnMessage() io.write("") return "next" end') == "next"
            assert time.monotonic() - started < 0.5, body
            assert ex.abandoned == 0


async def test_closing_does_not_wait_for_stuck_threads() -> None:
    ex = make(threads=2)
    async with ex:
        with pytest.raises(ScriptTimeout):
            await run(ex, 'function OnMessage() string.find(string.rep("a", 300), ".-.-.-b") end', timeout_s=0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 1.5


async def test_scripts_queued_behind_busy_threads_time_out_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with make(threads=1) as ex:
        blocker = asyncio.create_task(run(ex, 'function OnMessage() os.execute("sleep 1") end', timeout_s=5))
        await asyncio.sleep(0.2)
        with pytest.raises(ScriptTimeout):
            await run(ex, f'function OnMessage() io.open("{marker}", "w"):close() end', timeout_s=0.2)
        await blocker
    assert not marker.exists()


# Entry points


@pytest.mark.parametrize("method", ["dofile", "require", "loadstring", "print", "setfenv", "collectgarbage"])
async def test_an_html_method_never_calls_a_built_in(ex: LuaExecutor, method: str) -> None:
    # Over NATS the method comes from the envelope: any global name a client likes.
    script = 'function GET(url, body) return "page" end'
    result = await run(ex, script, b"", html=True, method=method, url="/etc/passwd")
    assert (result.http_code, result.payload, result.error) == (200, b"", "")


async def test_html_methods_may_come_from_the_scripts_own_metatable(ex: LuaExecutor) -> None:
    script = """
        local handlers = {PATCH = function(url) return "patched " .. url end}
        setmetatable(_G, {__index = handlers})
    """
    result = await run(ex, script, b"", html=True, method="PATCH", url="/x")
    assert (result.http_code, result.payload) == (200, b"patched /x")
