"""The `re` Lua module: Go (RE2) patterns with Lua's string-library conventions, through the real executor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.lua.modules.re import module as re_module
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message

PACK = """local re = require("re")
local function show(...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = tostring((select(i, ...))) end
  return table.concat(out, "|")
end
"""


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    async with lua_executor(plugins=False) as ex:
        yield ex


async def lua(ex: Executor, body: str, timeout_s: float = 5.0) -> str:
    """Run body with `re` required and `show(...)` (the values joined by "|"); returns the payload as text."""
    payload = await on_message(ex, PACK + body, timeout_s=timeout_s)
    assert payload is not None
    return payload.decode("utf-8", "surrogateescape")


async def values(ex: Executor, expression: str) -> str:
    """All the values of one expression, as show() writes them."""
    return await lua(ex, f"return show({expression})")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('re.find("abcd efgh ijk", "i([jk])")', "11|12|j"),
        ('re.find("", "")', "1|0"),
        ('re.find("m", "m")', "1|1"),
        ('re.find("aaaa", "(b|c)*")', "nil"),
        ('re.find("hello", "z")', "nil"),
        ('re.find("xaby", "(a)b")', "2|3|a"),
        ('re.find("hello hello", "hello", -5)', "7|11"),
        ('re.find("hello hello", "hello", 2)', "7|11"),
        ('re.find("hello", "l", 0)', "3|3"),
        ('re.find("hello", "l", 100)', "nil"),
        ('re.find("xab", "^a", 2)', "2|2"),
        ('re.find("b", "(a)|(b)")', "nil"),
        ('re.find("a", "(a)|(b)")', "1|1|a|"),
        ('re.find("a.b", ".", 1, true)', "2|2"),
        ('re.find("abcd efgh ijk", "cd e", 1, true)', "3|6"),
        ('re.find("abcd efgh ijk", "cd e", -1, true)', "nil"),
        ("re.find(12345, 3)", "3|3"),
        ('re.find("h\\195\\169llo", "l")', "4|4"),
        ('re.find("\\255\\254abc", "abc")', "3|5"),
        ('re.find("ABC", "(?i)b")', "2|2"),
    ],
)
async def test_find(executor: Executor, expression: str, expected: str) -> None:
    assert await values(executor, expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('re.match("$$$ hello", "z")', "nil"),
        ('re.match("$$$ hello", "\\\\w+")', "hello"),
        ('re.match("hello world", "\\\\w+", 6)', "world"),
        ('re.match("hello world", "\\\\w+", -5)', "world"),
        ('re.match("from=world", "(\\\\w+)=(\\\\w+)")', "from|world"),
        ('re.match("123ab", "([0-9]+)([a-z]+)|(bc)")', "123|ab|"),
        ('re.match("h\\195\\169llo", "^..")', "h\u00e9"),
        ('re.match("abc", "^b", 2)', "b"),
    ],
)
async def test_match(executor: Executor, expression: str, expected: str) -> None:
    assert await values(executor, expression) == expected


async def test_gmatch_words(executor: Executor) -> None:
    body = 'local t = {} for w in re.gmatch("hello world", "\\\\w+") do t[#t + 1] = w end return show(unpack(t))'
    assert await lua(executor, body) == "hello|world"


async def test_gmatch_captures(executor: Executor) -> None:
    body = """local t = {}
        for k, v in re.gmatch("from=world, to=Lua", "(\\\\w+)=(\\\\w+)") do t[#t + 1] = k .. ":" .. v end
        return show(unpack(t))"""
    assert await lua(executor, body) == "from:world|to:Lua"


async def test_gmatch_skips_an_empty_match_after_a_match_as_go_does(executor: Executor) -> None:
    body = """local t = {}
        for w in re.gmatch("a,b", "[^,]*") do t[#t + 1] = "<" .. w .. ">" end
        for w in re.gmatch("abc", "x*") do t[#t + 1] = "[" .. w .. "]" end
        return show(unpack(t))"""
    assert await lua(executor, body) == "<a>|<b>|[]|[]|[]|[]"


async def test_gmatch_rejects_an_invalid_pattern_when_called(executor: Executor) -> None:
    body = 'return show(pcall(re.gmatch, "hello world", "(aaaaa"))'
    assert await lua(executor, body) == "false|error parsing regexp: missing closing ): `(aaaaa`"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('re.gsub("hello world", "(\\\\w+)", "${1} ${1}")', "hello hello world world|2"),
        ('re.gsub("aaaa", "bbbb", "")', "aaaa|0"),
        ('re.gsub("ab", "(a)", "$1x")', "b|1"),
        ('re.gsub("ab", "(a)", "${1}x")', "axb|1"),
        ('re.gsub("ab", "(a)", "$$1")', "$1b|1"),
        ('re.gsub("ab", "(a)", "%1")', "%1b|1"),
        ('re.gsub("ab", "(a)", "[$5]")', "[]b|1"),
        ('re.gsub("ab", "(a)", "$!")', "$!b|1"),
        ('re.gsub("ab", "(a)", "${1")', "${1b|1"),
        ('re.gsub("ab", "(a)", "$01")', "b|1"),
        ('re.gsub("ab", "(a)", "$0$0")', "aab|1"),
        ('re.gsub("john smith", "(?P<first>\\\\w+) (?P<last>\\\\w+)", "${last}, $first")', "smith, john|1"),
        ('re.gsub("aaa", "a", "b", 2)', "bba|2"),
        ('re.gsub("aaa", "a", "b", 0)', "aaa|0"),
        ('re.gsub("aaa", "a", "b", -1)', "bbb|3"),
        ('re.gsub("abc", "", "-")', "-a-b-c-|4"),
        ('re.gsub("a1", "1", 2)', "a2|1"),
    ],
)
async def test_gsub_with_a_string(executor: Executor, expression: str, expected: str) -> None:
    assert await values(executor, expression) == expected


async def test_gsub_with_a_table(executor: Executor) -> None:
    body = """local t = {name = "lua", version = "5.1", skip = false}
        local a = re.gsub("$name-$version.tar.gz", "\\\\$(\\\\w+)", t)
        local b = re.gsub("name version skip other", "\\\\w+", t)
        return show(a, b)"""
    assert await lua(executor, body) == "lua-5.1.tar.gz|lua 5.1 skip other"


async def test_gsub_with_a_function(executor: Executor) -> None:
    body = """
        local a, n = re.gsub("$ world", "\\\\w+", string.upper)
        local b = re.gsub("4+5 = $return 4+5$", "\\\\$(.*)\\\\$", function(s) return loadstring(s)() end)
        local c = re.gsub("k1=v1 k2=v2", "(\\\\w+)=(\\\\w+)", function(k, v) return v .. "=" .. k end)
        local d = re.gsub("a b", "\\\\w", function(s) if s == "a" then return nil end return false end)
        return show(a, n, b, c, d)"""
    assert await lua(executor, body) == "$ WORLD|1|4+5 = 9|v1=k1 v2=k2|a b"


async def test_gsub_rejects_an_invalid_replacement_value(executor: Executor) -> None:
    body = 'return show(pcall(re.gsub, "a", "a", function() return {} end))'
    assert await lua(executor, body) == "false|invalid replacement value (a table)"


async def test_gsub_rejects_a_replacement_of_the_wrong_type(executor: Executor) -> None:
    body = 'return show(pcall(re.gsub, "a", "a", true))'
    assert await lua(executor, body) == "false|bad argument #3 to 'gsub' (string/table/function expected, got boolean)"


async def test_gsub_function_errors_reach_the_script(executor: Executor) -> None:
    body = 'local ok, err = pcall(re.gsub, "a", "a", function() error("boom", 0) end) return show(ok, err)'
    assert await lua(executor, body) == "false|boom"


async def test_gsub_callbacks_are_bound_by_the_deadline(executor: Executor) -> None:
    with pytest.raises(ScriptTimeout):
        await lua(executor, 'return re.gsub("a", "a", function() while true do end end)', timeout_s=0.5)


async def test_quote(executor: Executor) -> None:
    body = 'return show(re.quote("^$.?a"), re.quote("a_b-c"), re.find("a.b*c", re.quote(".b*")))'
    assert await lua(executor, body) == "\\^\\$\\.\\?a|a_b-c|2|4"


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("(aaaa", "error parsing regexp: missing closing ): `(aaaa`"),
        ("a)", "error parsing regexp: unexpected ): `a)`"),
        ("[a", "error parsing regexp: missing closing ]: `[a`"),
        ("a**", "error parsing regexp: invalid nested repetition operator: `**`"),
        ("x{2,1}", "error parsing regexp: invalid repeat count: `{2,1}`"),
        # RE2 only: no backreferences, no look-around.
        ("(a)\\\\1", "error parsing regexp: invalid escape sequence: `\\1`"),
        ("a(?=b)", "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
        ("(?<!a)b", "error parsing regexp: invalid or unsupported Perl syntax: `(?<!`"),
    ],
)
async def test_invalid_patterns_are_errors(executor: Executor, pattern: str, error: str) -> None:
    for function in ("find", "match", "gmatch"):
        assert await lua(executor, f'return show(pcall(re.{function}, "aab", "{pattern}"))') == f"false|{error}"
    assert await lua(executor, f'return show(pcall(re.gsub, "aab", "{pattern}", "x"))') == f"false|{error}"


async def test_invalid_pattern_error_carries_the_script_position(executor: Executor) -> None:
    body = 'local ok, err = pcall(function() local s = re.gsub("a", "(", "") return s end) return err'
    assert await lua(executor, body) == "<string>:8: error parsing regexp: missing closing ): `(`"


@pytest.mark.parametrize("function", ["find", "match", "gmatch", "gsub", "quote"])
async def test_missing_subject_is_an_argument_error(executor: Executor, function: str) -> None:
    body = f"return show(pcall(re.{function}, nil, 'x', 'y'))"
    assert await lua(executor, body) == f"false|bad argument #1 to '{function}' (string expected, got nil)"


async def test_gmatch_over_a_number_and_unmatched_groups(executor: Executor) -> None:
    body = """
    local t = {}
    for d in re.gmatch(12345, "[0-9]") do t[#t + 1] = d end
    for a, b in re.gmatch("x1 y", "([a-z])([0-9])?") do t[#t + 1] = a .. "<" .. b .. ">" end
    return show(unpack(t))
    """
    assert await lua(executor, body) == "1|2|3|4|5|x<1>|y<>"


async def test_big_results_move_off_the_event_loop_and_past_the_cap_fail(executor: Executor) -> None:
    # Past the small budget of an execution on the event loop, it moves to a worker, where it succeeds; past
    # the memory cap (32 MiB here) the result is never built.
    body = """
    local s = ("ab"):rep(64 * 1024)
    local swapped, n = re.gsub(s, "(a)(b)", "$2$1")
    local count = 0
    for _ in re.gmatch(s, "a") do count = count + 1 end
    local ok, err = pcall(re.gsub, s, "a", ("y"):rep(1000))
    return show(swapped:sub(1, 4), n, count, ok, err:match("not enough memory$"))
    """
    assert await lua(executor, body) == "baba|65536|65536|false|not enough memory"


def test_re_is_inline_safe() -> None:
    assert re_module.inline_safe is True


async def test_re_through_the_daemon(make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path) -> None:
    scripts = tmp_path / "re-scripts"
    scripts.mkdir()
    (scripts / "swap.lua").write_text(
        """--* subject: funcs.swap
--* name: swap
local re = require("re")
function OnMessage(subject, payload)
    return (re.gsub(payload, "(?P<first>\\\\w+) (?P<last>\\\\w+)", "${last}, ${first}"))
end
"""
    )
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR):
        msg = await nc.request("funcs.swap", b"John Smith", timeout=10)
    (result,) = Reply.from_json(msg.data).results or ()
    assert (result.payload, result.error) == (b"Smith, John", "")
