"""The gopher-lua-libs plugin's text and value modules: template, time, strings, yaml, inspect, crypto, runtime.

Scripts run through the daemon's own Lua executor with the bundled plugins loaded, and once end to end
through a daemon answering over NATS.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import nats
import pytest

from msgscript.errors import ScriptTimeout
from msgscript.executors.base import Executor
from msgscript.lua.modules import builtin_modules
from msgscript.lua.plugin_loader import load_plugins
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message, run_lua


@pytest.fixture
async def ex() -> AsyncIterator[Executor]:
    async with lua_executor() as executor:
        yield executor


async def lua(executor: Executor, body: str, payload: bytes = b"", timeout_s: float = 10.0) -> bytes:
    """Run body as OnMessage's body and return its string result."""
    result = await on_message(executor, body, payload, timeout_s=timeout_s)
    assert result is not None, "the script returned no string"
    return result


def plugin_module(name: str) -> ModuleType:
    """One of the plugin's Python modules (imported under the name the plugin loader gives it)."""
    load_plugins(PLUGIN_DIR, {}, builtin_modules())
    return importlib.import_module(f"msgscript_plugin_gopher_lua_libs.{name}")


def test_pure_modules_may_run_inline_and_the_others_may_not() -> None:
    modules = load_plugins(PLUGIN_DIR, {}, builtin_modules())
    inline = {
        name
        for name in ("template", "time", "strings", "yaml", "inspect", "crypto", "runtime")
        if getattr(modules[name], "inline_safe", False)
    }
    assert inline == {"strings", "yaml", "inspect", "crypto", "runtime"}


# --- strings ---------------------------------------------------------------------------------------------

JOIN = 'local function j(t) return table.concat(t, "|") .. "#" .. #t end\nlocal s = require("strings")\n'


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('s.split("a,b,,c", ",")', b"a|b||c#4"),
        ('s.split("", ",")', b"#1"),
        ('s.split("abc", "")', b"a|b|c#3"),
        ('s.split("h\\195\\169\\255!", "")', b"h|\xc3\xa9|\xff|!#4"),
        ('s.split("")', b"#0"),
        ('s.split("a b", " ")', b"a|b#2"),
        ('s.split(12.5, ".")', b"12|5#2"),
        ('s.fields("  a b\\t\\n c  ")', b"a|b|c#3"),
        ('s.fields("x\\194\\160y\\226\\128\\131z\\255 w")', b"x|y|z\xff|w#4"),
        ('s.fields("   ")', b"#0"),
    ],
)
async def test_split_and_fields_follow_go(ex: Executor, call: str, expected: bytes) -> None:
    assert await lua(ex, JOIN + f"return j({call})") == expected


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('s.trim("xxhixx", "x")', b"hi"),
        ('s.trim("hello world", "world")', b"hello "),
        ('s.trim("hello world", "hello ")', b"world"),
        ('s.trim("\\226\\152\\133a\\226\\152\\133", "\\226\\152\\133")', b"a"),
        ('s.trim("abc", "")', b"abc"),
        ('s.trim_space(" \\t\\n x y \\194\\160\\227\\128\\128")', b"x y"),
        ('s.trim_space("\\255 ")', b"\xff"),
        ('s.trim_prefix("hello world", "hello ")', b"world"),
        ('s.trim_prefix("hello world", "world")', b"hello world"),
        ('s.trim_suffix("hello world", " world")', b"hello"),
        ('s.trim_suffix("hello world", "hello ")', b"hello world"),
        ('s.trim_suffix("abc", "")', b"abc"),
        ('tostring(s.has_prefix("abcd", "ab")) .. tostring(s.has_prefix("abcd", "bc"))', b"truefalse"),
        ('tostring(s.has_suffix("abcd", "cd")) .. tostring(s.has_suffix("abcd", "c"))', b"truefalse"),
        (
            'tostring(s.contains("abcd", "bc")) .. tostring(s.contains("abcd", "x")) .. tostring(s.contains("a", ""))',
            b"truefalsetrue",
        ),
    ],
)
async def test_trimming_and_predicates_follow_go(ex: Executor, call: str, expected: bytes) -> None:
    assert await lua(ex, f'local s = require("strings")\nreturn {call}') == expected


async def test_trimming_takes_linear_time(ex: Executor) -> None:
    # strings is inline-safe: a long run of space inside the string (where trailing space was searched with
    # backtracking) or a long trimmed edge must not hold the event loop.
    body = """
    local s = require("strings")
    local inner = "x" .. (" "):rep(200000) .. "x"
    local edges = ("\\227\\128\\128"):rep(100000) .. "y" .. ("\\227\\128\\128"):rep(100000)
    return #s.trim_space(inner) .. "|" .. s.trim_space(edges) .. "|" .. s.trim(edges, "\\227\\128\\128")
    """
    started = time.monotonic()
    assert await lua(ex, body, timeout_s=5) == b"200002|y|y"
    assert time.monotonic() - started < 2


async def test_strings_argument_errors(ex: Executor) -> None:
    body = """
    local s = require("strings")
    local out = {}
    for _, f in ipairs({
      function() return s.split(nil, ",") end,
      function() return s.trim("x") end,
      function() return s.contains("x", {}) end,
    }) do
      local ok, err = pcall(f)
      out[#out + 1] = err:gsub("^<string>:%d+: ", "")
    end
    return table.concat(out, "\\n")
    """
    assert (await lua(ex, body)).split(b"\n") == [
        b"bad argument #1 to 'split' (string expected, got nil)",
        b"bad argument #2 to 'trim' (string expected, got nil)",
        b"bad argument #2 to 'contains' (string expected, got table)",
    ]


async def test_reader_reads_like_a_file(ex: Executor) -> None:
    body = """
    local s = require("strings")
    local r = s.new_reader("line 1\\nline 2\\n12 rest")
    local out = {r:read(), r:read("*l"), tostring(r:read("*n")), r:read(3), r:read("*a")}
    out[#out + 1] = tostring(r:read()) .. tostring(r:read(4)) .. "[" .. r:read("*a") .. "]" .. r:read(0)
    r:close()
    out[#out + 1] = tostring(getmetatable(r) == s.Reader)
    return table.concat(out, "|")
    """
    assert await lua(ex, body) == b"line 1|line 2|12| re|st|nilnil[]|true"


async def test_builder_collects_writes(ex: Executor) -> None:
    body = """
    local s = require("strings")
    local b = s.new_builder()
    b:write("a", "b")
    b:write(1, 2.5)
    local first = b:string()
    b:write("!")
    b:close()
    local ok, err = pcall(b.write, b, true)
    local ok2, err2 = pcall(b.string)
    return first .. "|" .. b:string() .. "|" .. err .. "|" .. err2 .. "|" .. tostring(getmetatable(b) == s.Builder)
    """
    assert await lua(ex, body) == (
        b"ab12.5|ab12.5!|bad argument #2 to 'write' (string expected, got boolean)"
        b"|bad argument #1 to 'string' (strings.Builder expected, got nil)|true"
    )


# --- inspect ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("inspect({1, 2, 3})", "{ 1, 2, 3 }"),
        ("inspect({})", "{}"),
        ("inspect({a = 1, b = 'x'})", '{\n  a = 1,\n  b = "x"\n}'),
        ("inspect({1, a = {b = {}}})", "{ 1,\n  a = {\n    b = {}\n  }\n}"),
        (
            "inspect({[2.5] = 'n', [true] = 'b', s = 's', ['not id'] = 1, [10] = 0, [{}] = 't'})",
            '{\n  [2.5] = "n",\n  [10] = 0,\n  [true] = "b",\n  ["not id"] = 1,\n  s = "s",\n  [{}] = "t"\n}',
        ),
        ("inspect({1, 2, nil, 4})", "{ 1, 2,\n  [4] = 4\n}"),
        ("inspect(setmetatable({a = 1}, {x = 2}))", "{\n  a = 1,\n  <metatable> = {\n    x = 2\n  }\n}"),
        ("inspect({a = {b = 1}}, {newline = '', indent = ''})", "{a = {b = 1}}"),
        ("inspect({a = {b = {c = 1}}}, {depth = 1})", "{\n  a = {...}\n}"),
        ("inspect({a = {1, 2}}, {indent = '\\t'})", "{\n\ta = { 1, 2 }\n}"),
        ("inspect(1.5) .. inspect(3) .. inspect(nil) .. inspect(true)", "1.53niltrue"),
        ("inspect.inspect({1})", "{ 1 }"),
        ('inspect("it\'s")', '"it\'s"'),
        ("inspect('say \"hi\"')", "'say \"hi\"'"),
        ("inspect('both \\' and \"')", '"both \' and \\""'),
        ("inspect('a\\\\b\\t\\n\\0\\0011\\127')", '"a\\\\b\\t\\n\\0\\0011\x7f"'),
        ("inspect(tostring(inspect.KEY) .. tostring(inspect.METATABLE))", '"inspect.KEYinspect.METATABLE"'),
    ],
)
async def test_inspect_formats_like_inspect_lua(ex: Executor, call: str, expected: str) -> None:
    assert await lua(ex, f'local inspect = require("inspect")\nreturn {call}') == expected.encode()


async def test_inspect_marks_repeated_tables_and_numbers_functions(ex: Executor) -> None:
    body = """
    local inspect = require("inspect")
    local t = {}
    t.self = t
    local shared = {1}
    return inspect(t) .. "|" .. inspect({shared, shared, print, print, type}, {newline = " ", indent = ""})
    """
    assert await lua(ex, body) == (
        b"<1>{\n  self = <table 1>\n}|{ <1>{ 1 }, <table 1>, <function 1>, <function 1>, <function 2> }"
    )


async def test_inspect_process_can_drop_and_replace_items(ex: Executor) -> None:
    body = """
    local inspect = require("inspect")
    local paths = {}
    local value = setmetatable({a = 1, secret = "x", n = {2}}, {hidden = true})
    local text = inspect(value, {process = function(item, path)
      local last = path[#path]
      if last == inspect.METATABLE or item == "secret" then return nil end
      if last == inspect.KEY then paths[#paths + 1] = path[#path - 1] end
      if type(item) == "number" and last ~= inspect.KEY then return item * 10 end
      return item
    end})
    table.sort(paths, function(a, b) return tostring(a) < tostring(b) end)
    return text .. "|" .. table.concat(paths, ",")
    """
    assert await lua(ex, body) == b"{\n  a = 10,\n  n = { 20 }\n}|1,a,n"


async def test_inspect_module_table_is_fresh_per_execution(ex: Executor) -> None:
    await lua(ex, 'local inspect = require("inspect") inspect.extra = 1 inspect.KEY.x = 1 return ""')
    body = 'local inspect = require("inspect") return tostring(inspect.extra) .. tostring(inspect.KEY.x)'
    assert await lua(ex, body) == b"nilnil"


# --- crypto and runtime ------------------------------------------------------------------------------------


async def test_crypto_digests(ex: Executor) -> None:
    body = """
    local crypto = require("crypto")
    local ok, err = pcall(crypto.md5)
    return table.concat({crypto.md5("test"), crypto.md5("1\\n"), crypto.sha256("test"), crypto.sha256(1),
                         crypto.md5("\\255\\0"), err}, "|")
    """
    assert (await lua(ex, body)).split(b"|") == [
        b"098f6bcd4621d373cade4e832627b4f6",
        b"b026324c6904b2a9cb4b88d6d61c81d1",
        b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        b"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
        hashlib.md5(b"\xff\x00").hexdigest().encode(),
        b"bad argument #1 to 'md5' (string expected, got nil)",
    ]


async def test_runtime_names_the_platform_as_go_does(ex: Executor) -> None:
    runtime = plugin_module("runtime")
    expected = f"{runtime.go_os()}/{runtime.go_arch(platform.machine())}".encode()
    assert await lua(ex, 'local r = require("runtime") return r.goos() .. "/" .. r.goarch()') == expected
    assert runtime.go_os("linux") == "linux"
    assert runtime.go_os("win32") == "windows"
    assert runtime.go_os("freebsd14") == "freebsd"
    assert [runtime.go_arch(m) for m in ("x86_64", "AMD64", "aarch64", "i686", "armv7l", "ppc64le")] == [
        "amd64",
        "amd64",
        "arm64",
        "386",
        "arm",
        "ppc64le",
    ]


# --- yaml ------------------------------------------------------------------------------------------------


async def test_yaml_decode_resolves_scalars_like_yaml_v2(ex: Executor) -> None:
    body = """
    local yaml = require("yaml")
    local v, err = yaml.decode([[
    a:
      b: 1
    list: [x, y, n, on, off, ~, "yes"]
    hex: 0x1F
    octal: 017
    float: 1e3
    frac: 2.5
    date: 2001-12-14
    clock: 1:20
    text: 'quoted'
    3: three
    ]])
    assert(err == nil, err)
    local l = v.list
    return table.concat({v.a.b, l[1], tostring(l[2]), tostring(l[3]), tostring(l[4]), tostring(l[5]),
      tostring(l[6]), l[7], v.hex, v.octal, v.float, v.frac, v.date, v.clock, v.text, v[3]}, "|")
    """
    assert await lua(ex, body) == b"1|x|true|false|true|false|nil|yes|31|15|1000|2.5|2001-12-14|1:20|quoted|three"


async def test_yaml_decode_first_document_empty_and_errors(ex: Executor) -> None:
    body = """
    local yaml = require("yaml")
    local first = yaml.decode("a: 1\\n---\\na: 2\\n")
    local empty, empty_err = yaml.decode("# nothing\\n")
    local _, e1 = yaml.decode("a: b: c")
    local _, e2 = yaml.decode("a: 1\\nb:\\n  c: d: e\\n")
    local ok, e3 = pcall(yaml.decode)
    return table.concat({first.a, tostring(empty), tostring(empty_err), e1, e2, e3}, "|")
    """
    assert (await lua(ex, body)).split(b"|") == [
        b"1",
        b"nil",
        b"nil",
        b"yaml: mapping values are not allowed in this context",
        b"yaml: line 3: mapping values are not allowed in this context",
        b"bad argument #1 to 'decode' (string expected, got nil)",
    ]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"[1, 2", b"yaml: line 1: did not find expected ',' or ']'"),
        (b"- a\nb: 1", b"yaml: line 1: did not find expected '-' indicator"),
        (b"a: 'x", b"yaml: found unexpected end of stream"),
        (b"a: \xff", b"yaml: invalid leading UTF-8 octet"),
        (b"\x01", b"yaml: control characters are not allowed"),
        (b"a: *nowhere", b"yaml: found undefined alias"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                b"%c: &%c [%s]\n" % (name, name, b", ".join([b"*" + bytes([name - 1])] * 10)) for name in b"bcdefghi"
            ),
            b"yaml: document contains excessive aliasing",
        ),
    ],
)
async def test_yaml_decode_errors(ex: Executor, document: bytes, expected: bytes) -> None:
    body = 'local v, err = require("yaml").decode(payload)\nreturn tostring(v) .. "|" .. err'
    assert await lua(ex, body, document) == b"nil|" + expected


async def test_yaml_decode_merges_and_y_keys(ex: Executor) -> None:
    body = """
    local v = require("yaml").decode("base: &b {x: 1, z: 2}\\nd:\\n  <<: *b\\n  z: 3\\n  y: 4\\n")
    return v.d.x .. v.d.z .. tostring(v.d.y) .. v.d[true]
    """
    assert await lua(ex, body) == b"13nil4"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{a = {b = 1}}", "a:\n  b: 1\n"),
        ('{"foo", "bar", "baz"}', "- foo\n- bar\n- baz\n"),
        ('{[0] = "foo", [1] = "bar", [2] = "baz"}', "0: foo\n1: bar\n2: baz\n"),
        ('{foo = "bar", bar = {1, 2, 3.45}}', "bar:\n- 1\n- 2\n- 3.45\nfoo: bar\n"),
        ("{a10 = 1, a2 = 2, b = 3, [1.5] = 4, [3] = 5}", "1.5: 4\n3: 5\na2: 2\na10: 1\nb: 3\n"),
        ("{}", "[]\n"),
        ("{e = {}, t = true, big = 1e21, small = 1e-7, z = -0.0}", "big: 1e+21\ne: []\nsmall: 1e-07\nt: true\nz: 0\n"),
        ("{n = 1, y = 2, yes = 3, on = 4, no = 5}", '"n": 1\n"no": 5\n"on": 4\n"y": 2\n"yes": 3\n'),
        (
            '{"true", "123", "", "y", "1:20", "2001-12-14", "plain"}',
            '- "true"\n- "123"\n- ""\n- "y"\n- "1:20"\n- "2001-12-14"\n- plain\n',
        ),
        ('{m = "line1\\nline2"}', "m: |-\n  line1\n  line2\n"),
        ("nil", "null\n"),
        ('"text"', "text\n"),
        ("42", "42\n"),
        ("0.5", "0.5\n"),
        ("{{1, 2}, {a = 1}}", "- - 1\n  - 2\n- a: 1\n"),
    ],
)
async def test_yaml_encode_prints_like_yaml_v2(ex: Executor, value: str, expected: str) -> None:
    body = f'local out, err = require("yaml").encode({value})\nassert(err == nil, err)\nreturn out'
    assert await lua(ex, body) == expected.encode()


async def test_yaml_encode_errors(ex: Executor) -> None:
    body = """
    local yaml = require("yaml")
    local t = {}
    t.t = t
    local shared = {}
    local _, e1 = yaml.encode(t)
    local _, e2 = yaml.encode({shared, shared})
    local _, e3 = yaml.encode({f = print})
    local ok, e4 = pcall(yaml.encode)
    return table.concat({e1, e2, e3, e4, tostring(t)}, "|")
    """
    e1, e2, e3, e4, address = (await lua(ex, body)).split(b"|")
    assert e1 == b"nested table " + address
    assert e2.startswith(b"nested table table: 0x")
    assert e3 == b"cannot encode values with function in them"
    assert e4 == b"bad argument #1 to 'encode' (value expected)"


async def test_yaml_round_trip_through_encoder_and_decoder(ex: Executor) -> None:
    body = """
    local yaml, strings = require("yaml"), require("strings")
    local b = strings.new_builder()
    local enc = yaml.new_encoder(b)
    local r1 = enc:encode({abc = "def", arr = {1, 2}})
    local r2 = enc:encode("second")
    local text = b:string()
    local dec = yaml.new_decoder(strings.new_reader(text))
    local d1 = dec:decode()
    local d2 = dec:decode()
    local d3, eof = dec:decode()
    dec:set_strict(true)
    return table.concat({text, tostring(r1) .. tostring(r2), d1.abc, d1.arr[2], d2, tostring(d3), eof}, "|")
    """
    assert (await lua(ex, body)).split(b"|") == [
        b"abc: def\narr:\n- 1\n- 2\n--- second\n",
        b"nilnil",
        b"def",
        b"2",
        b"second",
        b"nil",
        b"EOF",
    ]


async def test_yaml_encoder_and_decoder_use_files(ex: Executor) -> None:
    body = """
    local yaml = require("yaml")
    local f = assert(io.open("doc.yaml", "w"))
    local err = yaml.new_encoder(f):encode({n = 1})
    f:close()
    local r = assert(io.open("doc.yaml"))
    local v = yaml.new_decoder(r):decode()
    r:close()
    local ok, bad = pcall(yaml.new_decoder, 42)
    local ok2, bad2 = pcall(yaml.new_encoder, {})
    return tostring(err) .. "|" .. v.n .. "|" .. bad .. "|" .. bad2
    """
    assert (await lua(ex, body)).split(b"|") == [
        b"nil",
        b"1",
        b"bad argument #1 to 'new_decoder' (expected reader)",
        b"bad argument #1 to 'new_encoder' (expected writer)",
    ]


# --- template --------------------------------------------------------------------------------------------

MUSTACHE = 'local template = require("template")\nlocal m = assert(template.choose("mustache"))\n'


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("Hello {{name}}!", '{name = "world"}', "Hello world!"),
        (
            "{{x}}|{{&x}}|{{{x}}}",
            "{x = [[<a href=\"x\">'&'</a>]]}",
            "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;|<a href=\"x\">'&'</a>|<a href=\"x\">'&'</a>",
        ),
        ("{{#data}} {{.}} {{/data}}", '{data = {"one", "two"}}', " one  two "),
        ("{{#people}}{{name}},{{/people}}", '{people = {{name = "a"}, {name = "b"}}}', "a,b,"),
        ("{{#user}}{{name}}{{/user}}", '{user = {name = "u"}}', "u"),
        (
            "{{^none}}a{{/none}}{{^empty}}b{{/empty}}{{^f}}c{{/f}}{{^t}}d{{/t}}",
            "{empty = {}, f = false, t = true}",
            "abc",
        ),
        ("{{#f}}no{{/f}}{{#empty}}no{{/empty}}{{#t}}yes{{/t}}", "{empty = {}, f = false, t = true}", "yes"),
        ("{{a.b.c}}", '{a = {b = {c = "deep"}}}', "deep"),
        (
            "{{n}} {{x}} {{big}} {{t}} {{f}} {{missing}}.",
            "{n = 3, x = 2.5, big = 1e21, t = true, f = false}",
            "3 2.5 1e+21 true false .",
        ),
        ("{{name.upper}}{{list.pop}}{{n.real}}", '{name = "x", list = {1}, n = 1}', ""),
        ("{{! comment }}{{=<% %>=}}<% v %>", '{v = "set"}', "set"),
        ("{{x}}", '{x = "\\0\\255"}', "\ufffd\udcff"),
    ],
)
async def test_mustache_renders(ex: Executor, template: str, values: str, expected: str) -> None:
    body = MUSTACHE + f"local out, err = m:render([=[{template}]=], {values})\nassert(err == nil, err)\nreturn out"
    assert await lua(ex, body) == expected.encode("utf-8", "surrogateescape")


async def test_mustache_files_and_partials_resolve_in_the_execution_directory(ex: Executor) -> None:
    body = (
        MUSTACHE
        + """
    local function write(name, text) local f = assert(io.open(name, "w")) f:write(text) f:close() end
    write("page.mustache", "<h1>{{title}}</h1>{{> part}}")
    write("part.mustache", "<p>{{body}}</p>")
    local out, err = m:render_file("page.mustache", {title = "T", body = "<b>"})
    local partial_from_text = m:render("[{{>part}}][{{>nothing}}]", {body = "x"})
    local missing, missing_err = m:render_file("nope.mustache", {})
    return table.concat({tostring(out), tostring(err), partial_from_text, tostring(missing), missing_err}, "|")
    """
    )
    assert (await lua(ex, body)).split(b"|") == [
        b"<h1>T</h1><p>&lt;b&gt;</p>",
        b"nil",
        b"[<p>x</p>][]",
        b"nil",
        b"open nope.mustache: no such file or directory",
    ]


async def test_template_errors(ex: Executor) -> None:
    body = (
        MUSTACHE
        + """
    local out = {}
    local engine, err = template.choose("jinja")
    out[#out + 1] = tostring(engine) .. " " .. err
    for _, text in ipairs({"{{#a}}x", "{{/a}}", "{{#a}}\\n\\n{{/b}}", "line\\n{{x"}) do
      local v, e = m:render(text, {})
      out[#out + 1] = tostring(v) .. " " .. e
    end
    local ok, e1 = pcall(m.render, m, "x")
    local ok2, e2 = pcall(m.render, "x", {})
    out[#out + 1] = e1
    out[#out + 1] = e2
    return table.concat(out, "\\n")
    """
    )
    assert (await lua(ex, body)).split(b"\n") == [
        b"nil unknown template engine: jinja",
        b"nil line 1: section a has no closing tag",
        b"nil line 1: unmatched close tag: a",
        b"nil line 3: interleaved closing tag: b",
        b"nil line 2: unmatched open tag",
        b"bad argument #3 to 'render' (table expected, got nil)",
        b"bad argument #1 to 'render' (template expected)",
    ]


# --- time ------------------------------------------------------------------------------------------------

TS = 1543721585.125  # 2018-12-02T03:33:05.125Z, a fraction a float holds exactly


@pytest.mark.parametrize(
    ("layout", "location", "expected"),
    [
        ("2006-01-02T15:04:05Z07:00", "UTC", "2018-12-02T03:33:05Z"),
        ("2006-01-02T15:04:05.000Z07:00", "UTC", "2018-12-02T03:33:05.125Z"),
        ("2006-01-02T15:04:05.999999999Z07:00", "UTC", "2018-12-02T03:33:05.125Z"),
        ("15:04:05.000000 15:04:05,00 05.9", "UTC", "03:33:05.125000 03:33:05,12 05.1"),
        ("Mon Jan _2 15:04:05 2006", "UTC", "Sun Dec  2 03:33:05 2018"),
        ("Jan  2 15:04:05 2006", "UTC", "Dec  2 03:33:05 2018"),
        ("Jan  2 15:04:05 2006", "Europe/Moscow", "Dec  2 06:33:05 2018"),
        ("Monday, 02-Jan-06 15:04:05 MST", "UTC", "Sunday, 02-Dec-18 03:33:05 UTC"),
        ("02 Jan 06 15:04 -0700", "UTC", "02 Dec 18 03:33 +0000"),
        ("3:04PM 03 pm", "UTC", "3:33AM 03 am"),
        ("January 1 01 2 02 __2 002", "UTC", "December 12 12 2 02 336 336"),
        ("Janet _2006 Monkey", "UTC", "Janet _2018 Monkey"),
        ("2006-01-02T15:04:05-07:00 MST", "America/New_York", "2018-12-01T22:33:05-05:00 EST"),
        (
            "-0700 -07 -07:00:00 -070000 Z07:00 Z0700 Z07",
            "Asia/Kolkata",
            "+0530 +05 +05:30:00 +053000 +05:30 +0530 +05",
        ),
        ("Mon Jan 2 15:04:05 -0700 MST 2006", "Asia/Kolkata", "Sun Dec 2 09:03:05 +0530 IST 2018"),
    ],
)
async def test_time_format_with_go_layouts(ex: Executor, layout: str, location: str, expected: str) -> None:
    body = f'local out, err = require("time").format({TS}, "{layout}", "{location}")\nassert(not err, err)\nreturn out'
    assert await lua(ex, body) == expected.encode()


async def test_time_format_defaults_and_summer_time(ex: Executor) -> None:
    body = """
    local time = require("time")
    local summer = time.format(1530446400, "15:04 MST -07:00", "Europe/Paris")
    local default = time.format(0) == time.format(0, "Mon Jan 2 15:04:05 -0700 MST 2006", "Local")
    local no_zone = time.format(0, "2006") == time.format(0, "2006", "Local")
    local v, err = time.format(0, "2006", "Nowhere/City")
    local v2, err2 = time.format(0, "2006", "../etc/passwd")
    return table.concat({summer, tostring(default), tostring(no_zone), tostring(v), err, err2}, "|")
    """
    assert (await lua(ex, body)).split(b"|") == [
        b"14:00 CEST +02:00",
        b"true",
        b"true",
        b"nil",
        b"unknown time zone Nowhere/City",
        b"time: invalid location name",
    ]


@pytest.mark.parametrize(
    ("value", "layout", "location", "expected"),
    [
        ("2018-12-02T03:33:05Z", "2006-01-02T15:04:05Z07:00", None, 1543721585),
        ("2018-12-02T04:33:05+01:00", "2006-01-02T15:04:05Z07:00", None, 1543721585),
        ("2018-12-02T03:33:05.125Z", "2006-01-02T15:04:05Z07:00", None, TS),
        ("2018-12-02 03:33:05,125", "2006-01-02 15:04:05.000", None, TS),
        ("2018-12-02 03:33:05", "2006-01-02 15:04:05.999", None, 1543721585),
        ("Sun Dec  2 03:33:05 2018", "Mon Jan _2 15:04:05 2006", None, 1543721585),
        ("Dec  2 03:33:05 2018", "Jan  2 15:04:05 2006", None, 1543721585),
        ("Dec  2 03:33:05 2018", "Jan  2 15:04:05 2006", "Asia/Shanghai", 1543721585 - 8 * 3600),
        ("2018-12-02 3:33PM", "2006-01-02 3:04PM", None, 1543764780),
        ("2018-336", "2006-002", None, 1543708800),
        ("12/02/18", "01/02/06", None, 1543708800),
        ("2018-12-02 03:33:05 -0800", "2006-01-02 15:04:05 -0700", None, 1543721585 + 8 * 3600),
        ("2018-12-02 03:33:05 MSK", "2006-01-02 15:04:05 MST", "Europe/Moscow", 1543721585 - 3 * 3600),
        ("2018-12-02 03:33:05 XYZ", "2006-01-02 15:04:05 MST", None, 1543721585),
        ("december 2 2018", "January 2 2006", None, 1543708800),
    ],
)
async def test_time_parse_with_go_layouts(
    ex: Executor, value: str, layout: str, location: str | None, expected: float
) -> None:
    where = f', "{location}"' if location else ""
    call = f'require("time").parse("{value}", "{layout}"{where})'
    body = f'local v, err = {call}\nassert(not err, err)\nreturn ("%.3f"):format(v)'
    assert await lua(ex, body) == f"{expected:.3f}".encode()


@pytest.mark.parametrize(
    ("value", "layout", "expected"),
    [
        ("2018-13-02", "2006-01-02", 'parsing time "2018-13-02": month out of range'),
        ("2018-02-29", "2006-01-02", 'parsing time "2018-02-29": day out of range'),
        ("Dec  32 03:33:05 2018", "Jan  2 15:04:05 2006", 'parsing time "Dec  32 03:33:05 2018": day out of range'),
        ("Dec  2 25:00:00 2018", "Jan  2 15:04:05 2006", 'parsing time "Dec  2 25:00:00 2018": hour out of range'),
        ("2018/12/02", "2006-01-02", 'parsing time "2018/12/02" as "2006-01-02": cannot parse "/12/02" as "-"'),
        ("2018-12-02 junk", "2006-01-02", 'parsing time "2018-12-02 junk": extra text: " junk"'),
        ("x", "2006", 'parsing time "x" as "2006": cannot parse "x" as "2006"'),
        ('\\255\\"', "2006", 'parsing time "\\xff\\"" as "2006": cannot parse "\\xff\\"" as "2006"'),
    ],
)
async def test_time_parse_errors_are_gos(ex: Executor, value: str, layout: str, expected: str) -> None:
    body = f'local v, err = require("time").parse("{value}", "{layout}")\nreturn tostring(v) .. "|" .. err'
    assert await lua(ex, body) == b"nil|" + expected.encode()


async def test_time_parse_unknown_location(ex: Executor) -> None:
    body = 'local v, err = require("time").parse("2018", "2006", "Nowhere/City") return tostring(v) .. "|" .. err'
    assert await lua(ex, body) == b"nil|unknown time zone Nowhere/City"


async def test_time_clock_and_sleep(ex: Executor) -> None:
    before = time.time()
    body = """
    local time = require("time")
    local a, n = time.unix(), time.unix_nano()
    time.sleep(0.2)
    time.sleep(-1)
    time.sleep("0.01")
    return ("%.6f %.0f %.6f"):format(a, n, time.unix() - a)
    """
    unix, nano, slept = (float(x) for x in (await lua(ex, body)).split())
    assert before - 1 <= unix <= time.time() + 1
    assert abs(nano / 1e9 - unix) < 1
    assert slept >= 0.2


async def test_time_sleep_past_the_deadline_times_the_script_out(ex: Executor) -> None:
    started = time.monotonic()
    with pytest.raises(ScriptTimeout):
        await run_lua(ex, 'function OnMessage() require("time").sleep(30) return "late" end', timeout_s=0.5)
    assert time.monotonic() - started < 5


# --- end to end --------------------------------------------------------------------------------------------

E2E_SCRIPT = """--* subject: funcs.textlibs
--* name: textlibs
local template = require("template")
local strings = require("strings")
local yaml = require("yaml")
local time = require("time")
local inspect = require("inspect")
local crypto = require("crypto")
local runtime = require("runtime")

function OnMessage(subject, payload)
  local words = strings.fields(payload)
  local doc = assert(yaml.decode("greeting: hello\\nlist: [1, 2]\\n"))
  local m = assert(template.choose("mustache"))
  local page = assert(m:render("{{greeting}} {{#words}}<{{.}}>{{/words}}", {greeting = doc.greeting, words = words}))
  return table.concat({
    page,
    time.format(0, "2006-01-02T15:04:05Z07:00", "UTC"),
    inspect(doc.list, {newline = "", indent = ""}),
    crypto.md5(payload),
    runtime.goos(),
  }, "|")
end
"""


async def test_modules_work_end_to_end_through_a_daemon(
    make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    scripts = tmp_path / "e2e-scripts"
    scripts.mkdir()
    (scripts / "textlibs.lua").write_text(E2E_SCRIPT)
    async with make_daemon(script_dir=str(scripts), plugin_dir=PLUGIN_DIR):
        msg = await nc.request("funcs.textlibs", b"a & b", timeout=10)
    reply = Reply.from_json(msg.data)
    assert reply.results is not None and len(reply.results) == 1, json.loads(msg.data)
    result = reply.results[0]
    assert result.error == ""
    assert result.payload == (
        b"hello <a><&amp;><b>|1970-01-01T00:00:00Z|{ 1, 2 }|"
        + hashlib.md5(b"a & b").hexdigest().encode()
        + b"|"
        + plugin_module("runtime").go_os().encode()
    )
