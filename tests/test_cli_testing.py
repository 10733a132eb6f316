"""`msgscriptcli test`: Lua test files run against the scripts in-process, the examples' tests included."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from msgscript.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

ECHO = """--* subject: funcs.echo
--* name: echo
function OnMessage(subject, payload)
    return payload
end
"""


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


def project(root: Path, tests: dict[str, str], scripts: dict[str, str] | None = None) -> Path:
    """A project as `msgscriptcli init` lays it out: scripts/, libraries/ and tests/ under `root`."""
    for directory, files in (("scripts", scripts or {"echo.lua": ECHO}), ("tests", tests)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / directory / name).write_text(text)
    (root / "libraries").mkdir(exist_ok=True)
    return root


def test_the_examples_pass() -> None:
    code, out, err = run("--script", EXAMPLES, "test", "-p", ROOT / "plugins", EXAMPLES / "tests")
    assert (code, err) == (0, ""), out
    assert re.search(r"^ok: \d+ tests passed \(8 files, [\d.]+s\)$", out, re.MULTILINE), out


def test_the_examples_pass_with_nats() -> None:
    code, out, err = run("--script", EXAMPLES, "test", "--nats", "-p", ROOT / "plugins", EXAMPLES / "tests")
    assert (code, err) == (0, ""), out


FAILING = """local test = require("test")

function test_passes()
    test.assert_equal(test.invoke("funcs.echo", "hi").payload, "hi")
end

function test_fails()
    test.assert_equal(test.invoke("funcs.echo", "hi").payload, "bye")
end
"""


def test_a_failure_names_the_file_the_line_and_the_test(tmp_path: Path) -> None:
    root = project(tmp_path, {"echo_test.lua": FAILING})
    code, out, err = run("test", root / "tests")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == f'{root}/tests/echo_test.lua:8: test_fails: expected "bye", got "hi"'
    assert re.fullmatch(r"FAILED: 1 of 2 tests \(1 file, [\d.]+s\)", lines[1])
    assert len(lines) == 2


def test_tap_output(tmp_path: Path) -> None:
    root = project(tmp_path, {"echo_test.lua": FAILING, "broken_test.lua": "function test_x(\n"})
    code, out, _ = run("test", "--tap", root / "tests")
    assert code == 1
    shown = f"{root}/tests"
    assert out.splitlines()[:-1] == [
        "TAP version 13",
        "1..3",
        f"not ok 1 - {shown}/broken_test.lua",
        "  ---",
        "  message: |-",
        "    <name> or '...' expected near '<eof>'",
        f"  at: {shown}/broken_test.lua:2",
        "  ...",
        f"ok 2 - {shown}/echo_test.lua:test_passes",
        f"not ok 3 - {shown}/echo_test.lua:test_fails",
        "  ---",
        "  message: |-",
        '    expected "bye", got "hi"',
        f"  at: {shown}/echo_test.lua:8",
        "  stack: |-",
        f"    {shown}/echo_test.lua:8: in function 'test_fails'",
        "  ...",
    ]
    assert re.fullmatch(r"# 1 passed, 2 failed \([\d.]+s\)", out.splitlines()[-1])


def test_passing_tests_exit_0_and_print_only_the_counts(tmp_path: Path) -> None:
    root = project(tmp_path, {"echo_test.lua": FAILING.split("function test_fails")[0]})
    code, out, _ = run("test", root / "tests" / "echo_test.lua")
    assert code == 0
    assert re.fullmatch(r"ok: 1 test passed \(1 file, [\d.]+s\)\n", out)


ORDER_AND_STATE = """local test = require("test")
runs = (runs or 0) + 1

function test_zeta()
    test.assert_equal(runs, 1, "the top level ran once for this test")
    leaked = "zeta"
end

function test_alpha()
    test.assert_nil(leaked, "a global of the previous test")
    test.assert_equal(runs, 1)
    test.fail("ran second")
end

function helper_is_not_a_test()
    test.fail("helper")
end
"""


def test_tests_run_in_file_order_each_in_a_fresh_environment(tmp_path: Path) -> None:
    root = project(tmp_path, {"order_test.lua": ORDER_AND_STATE})
    code, out, _ = run("test", "--tap", root / "tests")
    assert code == 1
    results = [line for line in out.splitlines() if line.startswith(("ok", "not ok"))]
    assert [line.rsplit(":", 1)[1] for line in results] == ["test_zeta", "test_alpha"]
    assert results[0].startswith("ok 1 - ")
    assert "    ran second" in out


ASSERTIONS = """local test = require("test")

local function shout(text)
    test.assert_equal(text, string.upper(text))
end

function test_equal() test.assert_equal({1, "a\\n", {x = true}}, {1, "a\\n", {x = false}}, "deep") end
function test_not_equal() test.assert_not_equal({1}, {1}) end
function test_true() test.assert_true(nil) end
function test_false() test.assert_false(0) end
function test_nil() test.assert_nil("x") end
function test_not_nil() test.assert_not_nil(nil) end
function test_match() test.assert_match("abc", "^b") end
function test_match_not_a_string() test.assert_match(nil, "x") end
function test_contains_text() test.assert_contains("abc", "%a") end
function test_contains_item() test.assert_contains({"a", {1}}, {2}) end
function test_error_none() test.assert_error(function() end) end
function test_error_other() test.assert_error(function() error("boom", 0) end, "bang") end
function test_in_a_helper() shout("quiet") end
function test_lua_error() local t = nil; return t.field end
function test_bad_argument() test.invoke() end
function test_passing_assertions()
    test.assert_equal(1, 1.0)
    test.assert_equal({a = {1, 2}}, {a = {1, 2}})
    test.assert_true(0)
    test.assert_false(nil)
    test.assert_match("abc", "^a.c$")
    test.assert_contains("a%b", "%b")
    test.assert_contains({"x", {y = 1}}, {y = 1})
    test.assert_equal(test.assert_error(function() error("boom", 0) end, "^bo"), "boom")
end
"""


def test_assertion_messages(tmp_path: Path) -> None:
    root = project(tmp_path, {"assert_test.lua": ASSERTIONS})
    code, out, _ = run("test", root / "tests")
    assert code == 1
    prefix = f"{root}/tests/assert_test.lua:"
    assert out.splitlines()[:-1] == [
        prefix + '7: test_equal: deep: expected {1, "a\\n", {x = false}}, got {1, "a\\n", {x = true}}',
        prefix + "8: test_not_equal: expected a value other than {1}",
        prefix + "9: test_true: expected a true value (not nil or false), got nil",
        prefix + "10: test_false: expected nil or false, got 0",
        prefix + '11: test_nil: expected nil, got "x"',
        prefix + "12: test_not_nil: expected a value, got nil",
        prefix + '13: test_match: "abc" does not match the pattern "^b"',
        prefix + '14: test_match_not_a_string: expected a string matching "x", got nil',
        prefix + '15: test_contains_text: "abc" does not contain "%a"',
        prefix + '16: test_contains_item: {"a", {1}} does not contain {2}',
        prefix + "17: test_error_none: expected an error, but the function returned",
        prefix + '18: test_error_other: the error "boom" does not match the pattern "bang"',
        prefix + '4: test_in_a_helper: expected "QUIET", got "quiet"',
        prefix + "20: test_lua_error: attempt to index local 't' (a nil value)",
        prefix + "21: test_bad_argument: bad argument #1 to 'invoke' (string expected, got nil)",
    ]


FILE_ERRORS = {
    "a_syntax_test.lua": "local x = = 1\n",
    "b_top_level_test.lua": "local test = require('test')\n\nerror('top level fails')\n",
    "c_empty_test.lua": "local function test_local() end\n",
}


def test_a_file_that_cannot_run_fails_as_a_whole(tmp_path: Path) -> None:
    root = project(tmp_path, FILE_ERRORS)
    code, out, _ = run("test", root / "tests")
    assert code == 1
    shown = f"{root}/tests"
    assert out.splitlines()[:-1] == [
        f"{shown}/a_syntax_test.lua:1: unexpected symbol near '='",
        f"{shown}/b_top_level_test.lua:3: top level fails",
        f"{shown}/c_empty_test.lua: no tests: a test is a global function whose name starts with test_",
    ]
    assert out.splitlines()[-1].startswith("FAILED: 3 of 3 tests (3 files, ")


def test_a_test_past_its_deadline_fails(tmp_path: Path) -> None:
    spin = "function test_spins()\n    while true do end\nend\n"
    root = project(tmp_path, {"spin_test.lua": spin})
    code, out, _ = run("test", "--timeout", "200ms", root / "tests")
    assert code == 1
    assert out.splitlines()[0] == f"{root}/tests/spin_test.lua:1: test_spins: timed out after 200ms"


def test_the_test_module_is_not_for_scripts(tmp_path: Path) -> None:
    script = """--* subject: funcs.t
--* name: t
function OnMessage()
    local ok, err = pcall(require, "test")
    return tostring(ok) .. " " .. tostring(err)
end
"""
    check = """local test = require("test")
function test_x()
    test.assert_match(test.invoke("funcs.t", "").payload, "^false module 'test' not found")
end
"""
    root = project(tmp_path, {"t_test.lua": check}, {"t.lua": script})
    code, out, _ = run("test", root / "tests")
    assert code == 0, out


NATS_SCRIPTS = {
    "echo.lua": ECHO,
    "relay.lua": """--* subject: funcs.relay
--* name: relay
local nats = require("nats")
function OnMessage(subject, payload)
    local reply, err = nats.request("funcs.echo", payload, 5)
    if reply == nil then return "error: " .. err end
    return reply
end
""",
}

NATS_TESTS = """local test = require("test")
local json = require("json")
local nats = require("nats")

function test_a_script_calls_another_through_nats()
    local payload = test.invoke("funcs.relay", "ping").payload
    test.assert_match(payload, "^{")
    test.assert_equal(json.decode(payload).script_result[1].payload, "cGluZw==")
end

function test_the_test_file_talks_to_nats()
    local ok, err = nats.publish("anything", "x")
    test.assert_nil(err)
    test.assert_true(ok)
end
"""


def test_nats_with_the_flag_is_a_real_server(tmp_path: Path) -> None:
    root = project(tmp_path, {"nats_test.lua": NATS_TESTS}, NATS_SCRIPTS)
    code, out, _ = run("test", "--nats", root / "tests")
    assert code == 0, out


def test_nats_without_the_flag_fails_clearly(tmp_path: Path) -> None:
    root = project(tmp_path, {"nats_test.lua": NATS_TESTS}, NATS_SCRIPTS)
    code, out, _ = run("test", root / "tests")
    assert code == 1
    shown = f"{root}/tests/nats_test.lua"
    assert out.splitlines()[:-1] == [
        f'{shown}:7: test_a_script_calls_another_through_nats: "error: no NATS in tests (use --nats)" does not match'
        ' the pattern "^{"',
        f'{shown}:13: test_the_test_file_talks_to_nats: expected nil, got "Failed to publish message: no NATS in'
        ' tests (use --nats)"',
    ]


def test_default_places(tmp_path: Path) -> None:
    library = "--* name: shout\nfunction Shout(s) return string.upper(s) end\n"
    script = (
        "--* subject: funcs.shout\n--* name: shout\n--* require: shout\nfunction OnMessage(_, p) return Shout(p) end\n"
    )
    check = """local test = require("test")
function test_x() test.assert_equal(test.invoke("funcs.shout", "a").payload, "A") end
"""
    root = project(tmp_path, {"shout_test.lua": check}, {"shout.lua": script})
    (root / "libraries" / "shout.lua").write_text(library)
    # The scripts and libraries beside the tests directory, a test file, the project's root.
    assert run("test", root / "tests")[0] == 0
    assert run("test", root / "tests" / "shout_test.lua")[0] == 0
    assert run("test", root)[0] == 0
    # The tests beside --script.
    assert run("--script", root / "scripts", "test")[0] == 0


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    root = project(tmp_path / "project", {"echo_test.lua": FAILING})
    (tmp_path / "empty").mkdir()
    cases = [
        (("test", tmp_path / "missing"), f"{tmp_path}/missing: no such file or directory"),
        (("test", tmp_path / "empty"), f"no test files (*_test.lua) in {tmp_path}/empty"),
        (("--script", tmp_path / "empty", "test"), "no tests directory"),
        (("test", EXAMPLES / "tests"), "give --script DIR"),
        (("--script", tmp_path / "missing", "test", root / "tests"), "not a directory"),
        (("--library", tmp_path / "missing", "test", root / "tests"), "not a directory"),
        (("test", "-p", tmp_path / "missing", root / "tests"), "does not exist"),
        (("test", "--timeout", "soon", root / "tests"), "--timeout"),
    ]
    for args, text in cases:
        code, out, err = run(*args)
        assert (code, out) == (2, ""), args
        assert text in err, (args, err)
