"""msgscript.script: script headers as the Go parser reads them, our own headers (timeout, lock), and the
upstream Script JSON kept in etcd."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgscript.errors import ScriptParseError
from msgscript.script import Script, parse_bool, parse_script

LUA_BODY = 'local http = require("http")\nlocal json = require("json")\n\nfunction OnMessage(_, payload)\nend'
EXAMPLES = Path(__file__).parent.parent / "examples"


# --- the Go script parser's acceptance cases ---------------------------------------------------------


def test_headers_are_parsed_and_stripped_from_a_lua_script() -> None:
    text = "--* subject: funcs.foobar\n--* name: foo\n--* html: true\n--* require: web\n" + LUA_BODY

    script = parse_script(text)

    assert script.subject == "funcs.foobar"
    assert script.name == "foo"
    assert script.html is True
    assert script.libraries == ("web",)
    assert script.content == LUA_BODY
    assert script.executor_header == ""
    assert script.executor == "lua"


def test_wasm_script_content_is_the_module_path_without_trailing_newline() -> None:
    text = (
        "--* subject: funcs.foobar\n--* name: foo\n--* html: true\n--* executor: wasm\n/some/path/to/wasm/module.wasm\n"
    )

    script = parse_script(text)

    assert (script.subject, script.name, script.html) == ("funcs.foobar", "foo", True)
    assert script.executor_header == "wasm"
    assert script.executor == "wasm"
    assert script.content == "/some/path/to/wasm/module.wasm"


def test_example_file_from_disk_parses() -> None:
    script = parse_script((EXAMPLES / "hello.lua").read_text())

    assert (script.subject, script.name) == ("funcs.hello", "hello")
    assert "--*" not in script.content
    assert script.content.startswith("-- The classic")
    assert script.content.endswith("end")


# --- header line rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected_name"),
    [
        ("--* name: x", "x"),
        ("--* name:  x", " x"),  # values are not trimmed
        ("--* name: x ", "x "),
        ("--* name: a b  c", "a b  c"),  # parts re-joined with single spaces
        ("--* name x", "x"),  # the colon is optional
        ("--* name:", ""),
        ("--* name: ", ""),
    ],
)
def test_header_value_follows_single_space_splitting(line: str, expected_name: str) -> None:
    script = parse_script(line + "\nbody")

    assert script.name == expected_name
    assert script.content == "body"


@pytest.mark.parametrize(
    "line",
    [
        "--*subject: x",  # no space after --*: the key is "x"
        "--* subject:x",  # the key is "subject:x"
        "--* subject:: x",  # only one colon is removed: the key is "subject:"
        "--*  subject: x",  # two spaces: the key is ""
        "--*\tsubject: x",  # a tab is not a separator
        "--* subject:\tx",  # the key is "subject:\tx"
        "--* Subject: x",  # keys are case-sensitive
        "--* unknown: x",
        " --* subject: x",  # must start the line
        "-- * subject: x",
    ],
)
def test_line_that_is_not_a_recognised_header_stays_in_the_content(line: str) -> None:
    script = parse_script(f"{line}\nbody\n")

    assert script.subject == ""
    assert script.content == f"{line}\nbody"


def test_headers_after_code_are_still_recognised_and_removed() -> None:
    script = parse_script("a = 1\n--* subject: funcs.late\nb = 2\n--* name: late\n")

    assert (script.subject, script.name) == ("funcs.late", "late")
    assert script.content == "a = 1\nb = 2"


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("a\nb\n", "a\nb"),
        ("a\nb", "a\nb"),
        ("a\n\n", "a\n"),
        ("a\n\n\n", "a\n\n"),
        ("\n", ""),
        ("", ""),
        ("--* subject: x\n", ""),
        ("--* subject: x", ""),
    ],
)
def test_exactly_one_trailing_newline_is_trimmed(text: str, content: str) -> None:
    assert parse_script(text).content == content


def test_crlf_file_parses_like_an_lf_file() -> None:
    lf = "--* subject: funcs.crlf\n--* name: crlf\n--* require: web\n--* html: true\nline 1\nline 2\n"
    crlf = lf.replace("\n", "\r\n")

    assert parse_script(crlf) == parse_script(lf)
    assert parse_script(crlf).subject == "funcs.crlf"
    assert parse_script(crlf).content == "line 1\nline 2"


def test_only_one_carriage_return_is_dropped_per_line() -> None:
    assert parse_script("a\r\r\nb").content == "a\r\nb"


def test_lone_carriage_return_does_not_end_a_line() -> None:
    script = parse_script("x = 1\r--* subject: funcs.cr\n")

    assert script.subject == ""
    assert script.content == "x = 1\r--* subject: funcs.cr"


def test_repeated_require_accumulates_in_order_with_duplicates() -> None:
    script = parse_script("--* require: a\n--* require: b\n--* require: a\nbody")

    assert script.libraries == ("a", "b", "a")


def test_repeated_headers_keep_the_last_value() -> None:
    text = (
        "--* subject: first.subject\n--* name: first\n--* executor: wasm\n--* html: true\n"
        "--* subject: second.subject\n--* name: second\n--* executor: podman\n--* html: false\nbody"
    )

    script = parse_script(text)

    assert (script.subject, script.name, script.executor, script.html) == ("second.subject", "second", "podman", False)
    assert script.content == "body"


def test_script_without_headers_has_empty_fields() -> None:
    script = parse_script("print('hi')\n")

    assert script == Script(content="print('hi')")
    assert script.libraries == ()
    assert script.timeout_s is None
    assert script.lock is False


# --- booleans ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_bool_accepts_go_true_spellings(value: str) -> None:
    assert parse_bool(value) is True


@pytest.mark.parametrize(
    "value", ["0", "f", "F", "FALSE", "false", "False", "", "yes", "on", "tRUE", " true", "true ", "2"]
)
def test_parse_bool_treats_everything_else_as_false(value: str) -> None:
    assert parse_bool(value) is False


@pytest.mark.parametrize(
    ("line", "html"),
    [
        ("--* html: true", True),
        ("--* html: 1", True),
        ("--* html: True", True),
        ("--* html: T", True),
        ("--* html: yes", False),
        ("--* html: false", False),
        ("--* html:", False),
        ("--* html:  true", False),  # the value is " true"
    ],
)
def test_html_header_uses_go_parse_bool(line: str, html: bool) -> None:
    script = parse_script(line + "\nbody")

    assert script.html is html
    assert script.content == "body"


def test_http_header_is_an_alias_of_html_and_is_removed() -> None:
    script = parse_script("--* subject: web.site\n--* http: true\nfunction GET() end\n")

    assert script.html is True
    assert script.content == "function GET() end"


def test_http_header_with_a_false_value_is_removed_and_leaves_html_off() -> None:
    script = parse_script("--* http: nope\nbody")

    assert script.html is False
    assert script.content == "body"


def test_last_of_html_and_http_headers_wins() -> None:
    assert parse_script("--* html: true\n--* http: false\nx").html is False
    assert parse_script("--* http: false\n--* html: true\nx").html is True


# --- our extension headers: timeout and lock --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5s", 5.0), ("300ms", 0.3), ("1.5s", 1.5), ("2m", 120.0), ("1h10m", 4200.0), (" 5s", 5.0)],
)
def test_timeout_header_is_a_go_duration_in_seconds(value: str, seconds: float) -> None:
    assert parse_script(f"--* timeout: {value}\nbody").timeout_s == pytest.approx(seconds)


def test_timeout_and_lock_headers_are_kept_in_the_content() -> None:
    text = "--* subject: funcs.ext\n--* name: ext\n--* timeout: 5s\n--* lock: true\nreturn 1\n"

    script = parse_script(text)

    assert script.timeout_s == 5.0
    assert script.lock is True
    assert script.content == "--* timeout: 5s\n--* lock: true\nreturn 1"


@pytest.mark.parametrize(
    ("line", "lock"),
    [("--* lock: true", True), ("--* lock: 1", True), ("--* lock: false", False), ("--* lock: yes", False)],
)
def test_lock_header_uses_go_parse_bool(line: str, lock: bool) -> None:
    assert parse_script(line + "\nbody").lock is lock


def test_last_timeout_header_wins() -> None:
    assert parse_script("--* timeout: 1s\n--* timeout: 2s\nbody").timeout_s == 2.0


@pytest.mark.parametrize("value", ["bogus", "5", "1x", "", "0", "0s", "-1s", "-5m"])
def test_invalid_or_non_positive_timeout_header_raises(value: str) -> None:
    with pytest.raises(ScriptParseError, match="invalid timeout header"):
        parse_script(f"--* timeout: {value}\nbody")


# --- the upstream Script JSON (etcd value) -----------------------------------------------------------


def test_script_json_has_go_field_order_and_base64_content() -> None:
    script = Script(subject="funcs.foobar", name="foo", content="print(1)", html=True, libraries=("web",))

    assert script.to_json() == (
        b'{"content":"cHJpbnQoMSk=","executor":"","is_html":true,"libraries":["web"],'
        b'"name":"foo","subject":"funcs.foobar"}'
    )


def test_script_json_writes_null_libraries_when_there_are_none() -> None:
    script = Script(subject="funcs.wasm", name="wasm", content="", executor_header="wasm")

    assert script.to_json() == (
        b'{"content":"","executor":"wasm","is_html":false,"libraries":null,"name":"wasm","subject":"funcs.wasm"}'
    )


def test_script_json_escapes_strings_like_go() -> None:
    script = Script(subject="a.b", name="<café & co>")

    assert b'"name":"\\u003ccaf\xc3\xa9 \\u0026 co\\u003e"' in script.to_json()


def test_script_json_round_trips() -> None:
    script = parse_script(
        "--* subject: funcs.rt\n--* name: rt\n--* html: true\n--* executor: lua\n--* require: a\n--* require: b\n"
        "local s = 'é<&>'\n"
    )

    assert Script.from_json(script.to_json()) == script


def test_extension_headers_survive_the_script_json() -> None:
    script = parse_script(
        "--* subject: funcs.ext\n--* name: ext\nlocal x = 1\n--* timeout: 5s\n--* lock: true\nreturn x"
    )
    data = script.to_json()

    assert b"timeout" not in data  # only inside the base64 content
    assert data.startswith(b'{"content":"bG9jYWwgeCA9IDEKLS0qIHRpbWVvdXQ6IDVzCi0tKiBsb2NrOiB0cnVlCnJldHVybiB4",')
    decoded = Script.from_json(data)
    assert decoded.timeout_s == 5.0
    assert decoded.lock is True
    assert decoded == script


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\r"])
def test_from_json_reads_extension_headers_with_the_same_line_rules_as_parse_script(separator: str) -> None:
    script = parse_script(f"x = 1{separator}--* lock: true\ny = 2{separator}--* timeout: soon\n")

    assert script.lock is False
    assert Script.from_json(script.to_json()) == script


def test_from_json_reads_a_go_document() -> None:
    data = (
        b'{"content":"cHJpbnQoMSk=","executor":"","is_html":false,"libraries":null,'
        b'"name":"hello","subject":"funcs.hello","unknown":[1,2]}'
    )

    assert Script.from_json(data) == Script(subject="funcs.hello", name="hello", content="print(1)")


def test_from_json_treats_null_and_missing_fields_as_empty() -> None:
    assert Script.from_json('{"content":null,"name":null}') == Script()
    assert Script.from_json("{}") == Script()


def test_from_json_matches_keys_case_insensitively_like_go() -> None:
    script = Script.from_json('{"Content":"cHJpbnQoMSk=","Name":"n","SUBJECT":"s","Is_Html":true}')

    assert script == Script(subject="s", name="n", content="print(1)", html=True)


def test_from_json_rejects_an_invalid_timeout_in_the_content() -> None:
    data = Script(subject="s", name="n", content="--* timeout: soon\n").to_json()

    with pytest.raises(ScriptParseError, match="invalid timeout header"):
        Script.from_json(data)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "[]",
        "null",
        '"text"',
        '{"content":"not base64!"}',
        '{"content":5}',
        '{"name":1}',
        '{"subject":true}',
        '{"is_html":"true"}',
        '{"libraries":"web"}',
        '{"libraries":[1]}',
        '{"is_html":NaN}',
    ],
)
def test_from_json_rejects_documents_go_cannot_decode(data: str) -> None:
    with pytest.raises(ScriptParseError, match="invalid script JSON"):
        Script.from_json(data)
