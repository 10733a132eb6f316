"""msgscript.message: the wire format of Message, Result and Reply, byte for byte as the Go server writes it,
and the envelope decoding of incoming NATS data."""

from __future__ import annotations

from typing import Any

import pytest

from msgscript.message import Message, Reply, Result, decode_message, go_string

HELLO_REPLY = (
    b'{"script_result":[{"http_code":0,"error":"","http_headers":null,"is_html":false,'
    b'"payload":"UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxvIHdpdGggcGF5bG9hZDogSm9obg=="}],"is_html":false}'
)


# --- Go string encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ("<b>&</b>", '"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"'),
        ("a\u2028b\u2029c", '"a\\u2028b\\u2029c"'),
        ('quote " and \\ backslash', '"quote \\" and \\\\ backslash"'),
        ("\n\r\t\b\f", '"\\n\\r\\t\\b\\f"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ("\x7f/", '"\x7f/"'),
        ("caf\u00e9 \u2603 \U0001f600", '"caf\u00e9 \u2603 \U0001f600"'),  # non-ASCII written as is
        (b"ok \xff \xe2\x82", '"ok \\ufffd \\ufffd\\ufffd"'),  # each invalid byte becomes \ufffd
        ("bad \udcff byte", '"bad \\ufffd byte"'),  # a surrogate-escaped byte
        ("lone \ud800", '"lone \\ufffd"'),
    ],
)
def test_go_string_encodes_like_go(value: str | bytes, encoded: str) -> None:
    assert go_string(value) == encoded


# --- Message -----------------------------------------------------------------------------------------


def test_message_json_matches_the_go_gateway_golden() -> None:
    message = Message(subject="funcs.hello", payload=b"John", method="POST")

    assert message.to_json() == (
        b'{"async":false,"executor":"","method":"POST","payload":"Sm9obg==","raw":false,'
        b'"subject":"funcs.hello","url":""}'
    )


def test_message_json_writes_every_field_in_go_order() -> None:
    message = Message(
        subject="web.page", payload=b"", method="GET", url="/x?a=1&b=<2>", is_async=True, raw=True, executor="wasm"
    )

    assert message.to_json() == (
        b'{"async":true,"executor":"wasm","method":"GET","payload":"","raw":true,'
        b'"subject":"web.page","url":"/x?a=1\\u0026b=\\u003c2\\u003e"}'
    )


def test_message_json_round_trips_through_decode_message() -> None:
    message = Message(subject="funcs.x", payload=b"\x00\xffbin", method="PUT", url="/a", is_async=True, executor="lua")

    assert decode_message("other.subject", message.to_json()) == message


# --- decode_message ----------------------------------------------------------------------------------


def _raw(data: bytes, subject: str = "funcs.hello") -> Message:
    return Message(subject=subject, payload=data, raw=True)


def _passthrough(data: bytes, subject: str = "funcs.hello") -> Message:
    return Message(subject=subject, payload=data, raw=False)


@pytest.mark.parametrize(
    "data",
    [
        b"John",
        b"",
        b"   ",
        b"[1,2]",
        b"42",
        b'"text"',
        b"true",
        b"nul",
        b"nullx",
        b"{",
        b'{"payload":"Sm9obg=="} trailing',
        b'{"payload":"Sm9obg==",}',
        b"\xff\xfe\x00binary",
        b"\xef\xbb\xbf{}",  # a byte order mark is not JSON to Go
        '{"payload":"Sm9obg=="}'.encode("utf-16-le"),
        b'{"a":NaN}',
        b'{"a":Infinity,"payload":"Sm9obg=="}',
        b'{"payload":"Sm9obg==","x":\xff}',
    ],
)
def test_data_that_is_not_a_json_object_is_a_raw_payload(data: bytes) -> None:
    assert decode_message("funcs.hello", data) == _raw(data)


@pytest.mark.parametrize(
    "data",
    [b"null", b" null\n", b"{}", b'{"foo":1}', b'{"payload":null}', b'{"subject":"x","method":"GET","payload":null}'],
)
def test_json_without_a_payload_passes_the_text_through(data: bytes) -> None:
    assert decode_message("funcs.hello", data) == _passthrough(data)


def test_envelope_subject_overrides_the_nats_subject() -> None:
    message = decode_message("anything.else", b'{"subject":"funcs.hello","payload":"Sm9obg=="}')

    assert message == Message(subject="funcs.hello", payload=b"John")


def test_envelope_with_a_payload_but_no_subject_has_an_empty_subject() -> None:
    assert decode_message("funcs.hello", b'{"payload":"Sm9obg=="}') == Message(subject="", payload=b"John")


def test_envelope_fields_are_all_decoded() -> None:
    data = (
        b' {"async":true,"executor":"wasm","method":"POST","payload":"","raw":true,'
        b'"subject":"web.page","url":"/x","extra":{"ignored":[1]}}\n'
    )

    assert decode_message("web.page", data) == Message(
        subject="web.page", payload=b"", method="POST", url="/x", is_async=True, raw=True, executor="wasm"
    )


def test_envelope_null_fields_are_empty() -> None:
    data = b'{"async":null,"method":null,"payload":"Sm9obg==","subject":"s","url":null}'

    assert decode_message("x", data) == Message(subject="s", payload=b"John")


@pytest.mark.parametrize(
    "data",
    [
        b'{"subject":"funcs.hello","payload":"not base64!"}',
        b'{"payload":"Sm9obg"}',  # padding is required
        b'{"payload":"Sm9obg==="}',
        b'{"payload":"Sm9o bg=="}',
        b'{"payload":"Sm9o-_=="}',  # URL alphabet
    ],
)
def test_envelope_with_invalid_base64_is_raw(data: bytes) -> None:
    assert decode_message("funcs.hello", data) == _raw(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"async":"yes","payload":"Sm9obg=="}',
        b'{"raw":1,"payload":"Sm9obg=="}',
        b'{"subject":1,"payload":"Sm9obg=="}',
        b'{"method":["POST"],"payload":"Sm9obg=="}',
        b'{"url":{},"payload":"Sm9obg=="}',
        b'{"executor":false,"payload":"Sm9obg=="}',
        b'{"payload":5}',
        b'{"payload":true}',
        b'{"method":"POST","url":"/x","async":"x","payload":"Sm9obg=="}',  # decoded fields are dropped too
        b'{"foo":1,"subject":2}',  # a type error wins over a missing payload
    ],
)
def test_envelope_with_a_wrong_field_type_is_raw(data: bytes) -> None:
    assert decode_message("funcs.hello", data) == _raw(data)


def test_non_utf8_data_is_passed_through_unchanged() -> None:
    data = b"\x80\x81\xfe\xff"

    message = decode_message("funcs.hello", data)

    assert message.payload is data
    assert message.raw is True


def test_invalid_utf8_inside_envelope_strings_becomes_replacement_characters() -> None:
    message = decode_message("x", b'{"payload":"Sm9obg==","method":"P\xffST","subject":"a\xe2\x82b"}')

    assert message == Message(subject="a\ufffd\ufffdb", payload=b"John", method="P\ufffdST")


def test_envelope_keys_match_case_insensitively_like_go() -> None:
    message = decode_message("other", b'{"Subject":"funcs.hello","PAYLOAD":"Sm9obg==","Method":"GET"}')

    assert message == Message(subject="funcs.hello", payload=b"John", method="GET")


def test_envelope_exact_key_and_folded_key_last_one_wins() -> None:
    assert decode_message("x", b'{"payload":"QQ==","Payload":"Qg=="}').payload == b"B"
    assert decode_message("x", b'{"Payload":"QQ==","payload":"Qg=="}').payload == b"B"


def test_envelope_base64_may_contain_escaped_line_breaks() -> None:
    assert decode_message("x", b'{"payload":"Sm9o\\r\\nbg==","subject":"s"}').payload == b"John"


def test_envelope_with_a_huge_number_in_an_unknown_field_is_still_an_envelope() -> None:
    # Python will not make an int of more than 4300 digits; Go skips the field whatever it holds.
    data = b'{"payload":"Sm9obg==","extra":' + b"7" * 5000 + b',"subject":"s"}'
    assert decode_message("x", data).payload == b"John"


def test_deeply_nested_json_is_raw_instead_of_failing() -> None:
    data = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    assert decode_message("funcs.hello", data) == _raw(data)


# --- Result ------------------------------------------------------------------------------------------


def test_empty_result_json_has_go_nulls() -> None:
    assert Result().to_json() == '{"http_code":0,"error":"","http_headers":null,"is_html":false,"payload":null}'


def test_result_json_sorts_header_keys_and_encodes_the_payload() -> None:
    result = Result(http_code=201, http_headers={"X-b": "2", "A": "1", "X-a": "<3>"}, is_html=True, payload=b"created")

    assert result.to_json() == (
        '{"http_code":201,"error":"","http_headers":{"A":"1","X-a":"\\u003c3\\u003e","X-b":"2"},'
        '"is_html":true,"payload":"Y3JlYXRlZA=="}'
    )


def test_result_json_distinguishes_empty_from_missing() -> None:
    result = Result(http_code=200, http_headers={}, is_html=True, payload=b"")

    assert result.to_json() == '{"http_code":200,"error":"","http_headers":{},"is_html":true,"payload":""}'


def test_failure_result_carries_only_the_error() -> None:
    result = Result.failure("failed to find global function named 'OnMessage'")

    assert result == Result(error="failed to find global function named 'OnMessage'")
    assert result.to_json() == (
        '{"http_code":0,"error":"failed to find global function named \'OnMessage\'","http_headers":null,'
        '"is_html":false,"payload":null}'
    )


def test_result_from_doc_reads_every_field() -> None:
    doc = {"http_code": 201, "error": "e", "http_headers": {"X-Test": "5"}, "is_html": True, "payload": "Y3JlYXRlZA=="}

    assert Result.from_doc(doc) == Result(
        http_code=201, error="e", http_headers={"X-Test": "5"}, is_html=True, payload=b"created"
    )


def test_result_from_null_is_an_empty_result() -> None:
    assert Result.from_doc(None) == Result()


def test_result_from_doc_treats_null_fields_as_zero_values() -> None:
    doc = {"http_code": None, "error": None, "http_headers": None, "is_html": None, "payload": None, "x": [1]}

    assert Result.from_doc(doc) == Result()
    assert Result.from_doc({}) == Result()


def test_result_from_doc_turns_a_null_header_value_into_an_empty_string() -> None:
    assert Result.from_doc({"http_headers": {"A": None}}).http_headers == {"A": ""}


def test_result_from_doc_matches_keys_case_insensitively_like_go() -> None:
    assert Result.from_doc({"HTTP_CODE": 404, "Error": "x"}) == Result(http_code=404, error="x")


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "text",
        5,
        {"http_code": "200"},
        {"http_code": 200.0},
        {"http_code": 1.5},
        {"http_code": True},
        {"http_code": 2**63},
        {"error": 0},
        {"error": False},
        {"error": []},
        {"http_headers": []},
        {"http_headers": "a"},
        {"http_headers": {"A": 5}},
        {"is_html": 0},
        {"is_html": ""},
        {"is_html": "true"},
        {"payload": 5},
        {"payload": "not base64!"},
    ],
)
def test_result_from_doc_rejects_values_go_cannot_decode(doc: Any) -> None:
    with pytest.raises(ValueError):
        Result.from_doc(doc)


# --- Reply -------------------------------------------------------------------------------------------


def test_reply_json_matches_the_hello_golden() -> None:
    reply = Reply(results=(Result(payload=b"Processed subject: funcs.hello with payload: John"),))

    assert reply.to_json() == HELLO_REPLY


@pytest.mark.parametrize(
    "result",
    [
        Result(payload=b""),
        Result(payload=bytes(range(256))),
        Result(payload=b"x", http_code=201),
        Result(payload=b"x", error="boom"),
        Result(payload=b"x", http_headers={}),
        Result(payload=b"x", is_html=True),
        Result(),
    ],
)
def test_a_one_result_reply_is_written_as_its_result_is(result: Result) -> None:
    # The common reply (one result, only a payload) has a shortcut: it must write what the general encoding writes.
    is_html = "true" if result.is_html else "false"
    expected = f'{{"script_result":[{result.to_json()}],"is_html":{is_html}}}'.encode()
    assert Reply(results=(result,)).to_json() == expected
    assert Reply(results=(result,), error="e").to_json() == expected[:-1] + b',"error":"e"}'


def test_reply_without_error_omits_the_error_key() -> None:
    assert Reply().to_json() == b'{"script_result":null,"is_html":false}'
    assert Reply(results=()).to_json() == b'{"script_result":[],"is_html":false}'


def test_reply_with_error_has_the_error_key_last() -> None:
    reply = Reply(error="failed to get scripts for subject: script not found for subject: funcs.unknown")

    assert reply.to_json() == (
        b'{"script_result":null,"is_html":false,'
        b'"error":"failed to get scripts for subject: script not found for subject: funcs.unknown"}'
    )


def test_reply_error_is_escaped_like_go() -> None:
    reply = Reply(error='bad <input> & "quotes"')

    assert reply.to_json() == (
        b'{"script_result":null,"is_html":false,"error":"bad \\u003cinput\\u003e \\u0026 \\"quotes\\""}'
    )


def test_reply_is_html_when_any_result_is_html() -> None:
    page = Result(http_code=200, http_headers={}, is_html=True, payload=b"")
    reply = Reply(results=(Result(payload=b"raw"), page))

    assert reply.is_html is True
    assert reply.to_json() == (
        b'{"script_result":[{"http_code":0,"error":"","http_headers":null,"is_html":false,"payload":"cmF3"},'
        b'{"http_code":200,"error":"","http_headers":{},"is_html":true,"payload":""}],"is_html":true}'
    )
    assert Reply(results=(Result(),)).is_html is False


@pytest.mark.parametrize(
    "reply",
    [
        Reply(),
        Reply(results=()),
        Reply(error="failed <x> & y"),
        Reply(
            results=(
                Result(payload=b"A"),
                Result(http_code=201, error="boom", http_headers={"B": "2", "A": "1"}, is_html=True, payload=b""),
                Result.failure("failed to call OnMessage function: x"),
            )
        ),
    ],
)
def test_reply_round_trips_through_json(reply: Reply) -> None:
    assert Reply.from_json(reply.to_json()) == reply


def test_reply_from_json_reads_the_go_golden() -> None:
    reply = Reply.from_json(HELLO_REPLY)

    assert reply.error == ""
    assert reply.results == (Result(payload=b"Processed subject: funcs.hello with payload: John"),)


def test_reply_from_null_is_an_empty_reply() -> None:
    assert Reply.from_json(b"null") == Reply()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'"x"',
        b'{"script_result":5}',
        b'{"script_result":{"http_code":0}}',
        b'{"script_result":"abc"}',
        b'{"script_result":[5]}',
        b'{"script_result":[{"payload":"???"}]}',
        b'{"error":0}',
        b'{"error":false}',
        b'{"is_html":"no"}',
        b'{"script_result":null,"is_html":false,"error":NaN}',
    ],
)
def test_reply_from_json_rejects_what_is_not_a_reply(data: bytes) -> None:
    with pytest.raises(ValueError):
        Reply.from_json(data)
