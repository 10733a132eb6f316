"""Malformed NATS messages for tests/bad_inputs.py, each with the answers docs/decisions.md and the Go wire
format let it get, and the scripts the test daemon serves.

A raw payload runs the scripts of its subject; data that is not an envelope with a valid base64 payload (wrong
field types, invalid base64, truncated JSON) is a raw payload too; an envelope's subject counts only within the
subscription it arrived on; `async` is acknowledged with `{}`; the internal subjects answer junk with a clear
Reply error; a subject no script serves gets "no responders". A reply too big for NATS may become the error
Reply that says so.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from msgscript.message import Reply

MAX_PAYLOAD_BYTES = 1024 * 1024
"""Both the NATS server's default max payload and the gateway's default -max-payload."""

HELLO, ECHO, PAGE, WILD = "funcs.hello", "funcs.echo", "web.page", "wild.*"


def _script(subject: str, name: str, body: str, *, html: bool = False) -> str:
    return f"--* subject: {subject}\n--* name: {name}\n" + ("--* html: true\n" if html else "") + body


_ECHO_BODY = 'function OnMessage(subject, payload)\n    return subject .. "|" .. payload\nend\n'
SCRIPTS = {
    "hello.lua": _script(
        HELLO,
        "hello",
        "function OnMessage(subject, payload)\n"
        '    return "Processed subject: " .. subject .. " with payload: " .. payload\nend\n',
    ),
    "echo.lua": _script(ECHO, "echo", _ECHO_BODY),
    "wild.lua": _script(WILD, "wild", _ECHO_BODY),
    "page.lua": _script(
        PAGE,
        "page",
        'function GET(url, body) return "<p>page</p>", 200, "X-Page", "yes" end\n'
        "function POST(url, body) return body, 201 end\n"
        'function DELETE(url, body) error("deleting is not allowed") end\n',
        html=True,
    ),
}
LISTING = b'["funcs.echo","funcs.hello","web.page","wild.*"]'
PAGE_GET = b"<p>page</p>"
DELETE_ERROR = "failed to call DELETE function: "
OVERFLOW = "exceeds the NATS max payload"
# What a Reply with one result and an empty error adds to its base64 payload (an HTML one adds more).
_REPLY_OVERHEAD_BYTES = 160


@dataclass(frozen=True, slots=True)
class NatsAnswer:
    """What a NATS request got: a reply's data, no responders, or nothing within the bound."""

    outcome: Literal["reply", "no_responders", "timeout"]
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class NatsExpect:
    """The answers a NATS case may get.

    `result`: one result whose error starts with `error` (no error when empty) and, when given, whose payload
    and HTTP code are these; `error`: a Reply without results whose error starts with `error`; `ack`: the
    `{}` of an async envelope; `no_responders`: nobody serves the subject. With `may_overflow`, the reply
    may instead be the error Reply that replaces a reply larger than the NATS max payload.
    """

    kind: Literal["result", "error", "ack", "no_responders"]
    payload: bytes | None = None
    error: str = ""
    http_code: int | None = None
    may_overflow: bool = False

    def problem(self, answer: NatsAnswer) -> str | None:
        """Why `answer` is not acceptable, or None."""
        if self.kind == "no_responders":
            return None if answer.outcome == "no_responders" else "expected no responders"
        if answer.outcome != "reply":
            return f"no reply ({answer.outcome})"
        if self.kind == "ack":
            return None if answer.data == b"{}" else "expected the async acknowledgement {}"
        try:
            reply = Reply.from_json(answer.data)
        except ValueError as exc:
            return f"not a Go Reply: {exc}"
        if self.may_overflow and not reply.results and OVERFLOW in reply.error:
            return None
        if self.kind == "error":
            if reply.results or not reply.error.startswith(self.error) or not reply.error:
                return f"expected a Reply error starting {self.error!r}"
            return None
        if reply.error or reply.results is None or len(reply.results) != 1:
            return "expected exactly one result and no Reply error"
        result = reply.results[0]
        if not result.error.startswith(self.error) or (not self.error and result.error):
            return f"expected a result error starting {self.error!r}" if self.error else "expected no result error"
        if self.payload is not None and (result.payload or b"") != self.payload:
            return "unexpected result payload"
        if self.http_code is not None and result.http_code != self.http_code:
            return f"expected http_code {self.http_code}"
        return None


@dataclass(frozen=True, slots=True)
class NatsCase:
    """A request with `data` on `subject`."""

    category: str
    index: int
    subject: str
    data: bytes
    expect: NatsExpect


def result(payload: bytes | None, *, http_code: int | None = None, error: str = "") -> NatsExpect:
    """One result with this payload; the reply may overflow when the payload is big enough to."""
    size = 0 if payload is None else len(payload)
    big = 4 * (size + 2) // 3 + _REPLY_OVERHEAD_BYTES >= MAX_PAYLOAD_BYTES
    return NatsExpect("result", payload=payload, http_code=http_code, error=error, may_overflow=big)


def script_answer(subject: str, payload: bytes) -> NatsExpect:
    """What the script serving `subject` answers when it runs as `subject` with `payload` (NATS, no method)."""
    if subject == HELLO:
        return result(b"Processed subject: funcs.hello with payload: " + payload)
    if subject == PAGE:
        # No HTTP method over NATS: the HTML script has no such function and answers an empty 200 page.
        return result(b"", http_code=200)
    return result(subject.encode() + b"|" + payload)


def token(rng: random.Random, size: int = 6) -> str:
    """A random subject token of lower-case letters and digits."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))


def fill(rng: random.Random, size: int) -> bytes:
    """`size` random bytes."""
    return rng.randbytes(size)


def rawish(data: bytes) -> bytes:
    """`data` of the same length, made certain not to be read as a JSON envelope (those start with `{` or `null`)."""
    return b"x" + data[1:] if data.lstrip(b" \t\r\n")[:1] in (b"{", b"n") else data


def script_subject(rng: random.Random) -> str:
    """A subject some test script serves: hello, echo, the HTML page, or one matched by `wild.*`."""
    return rng.choice([HELLO, ECHO, PAGE, "wild." + token(rng)])


# --- Raw payloads ---------------------------------------------------------------------------------------------


def _raw_payloads(rng: random.Random) -> list[tuple[str, bytes, NatsExpect]]:
    makers: list[Callable[[], bytes]] = [
        lambda: fill(rng, rng.randint(1, 2048)),
        lambda: bytes(rng.choice([0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF]) for _ in range(rng.randint(1, 512))),
        lambda: b"\x00" * rng.randint(1, 4096),
        lambda: b"\x00".join(token(rng).encode() for _ in range(rng.randint(2, 50))),
        lambda: rng.choice([b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xef\xbb\xbf"]) * 9,
        lambda: b"",
        lambda: rng.choice([b" ", b"\t", b"\r\n", b" \x0b\x0c "]) * rng.randint(1, 100),
        lambda: rng.choice([b"[1,2]", b'"text"', b"123", b"true", b"-", b"]", b"}", b"\\u0000"]),
    ]
    out = []
    for _ in range(96):
        subject, data = script_subject(rng), rawish(rng.choice(makers)())
        out.append((subject, data, script_answer(subject, data)))
    for size in (MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES - 1, 3 * MAX_PAYLOAD_BYTES // 4, 700_000, 512 * 1024):
        subject, data = script_subject(rng), rawish(fill(rng, size))
        out.append((subject, data, script_answer(subject, data)))
    return out


# --- JSON envelopes ---------------------------------------------------------------------------------------------


def envelope(*pairs: tuple[str, str]) -> bytes:
    """A JSON object written as given: each pair is a key and the JSON text of its value (duplicates kept)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}").encode()


def b64(data: bytes) -> str:
    """The JSON text of `data` as a base64 string."""
    return json.dumps(base64.b64encode(data).decode())


def wild_arrival(rng: random.Random) -> str:
    return "wild." + token(rng)


def within(arrival: str, subject: str) -> str:
    """The subject a message runs as when its envelope names `subject`, a subject `wild.*` would honour."""
    return subject if arrival.startswith("wild.") else arrival


# Envelope subjects, each with whether the `wild.*` subscription honours it (docs/decisions.md): a
# publishable subject that the subscription matches, not an `_INBOX.` one.
_ENVELOPE_SUBJECTS: list[tuple[str, bool]] = [
    ("wild.b", True),
    ("wild._INBOX", True),
    ("wild.\uff41", True),  # fullwidth a
    ("wild.\u00e9", True),
    ("wild.\u200b", True),  # zero-width space is not white space
    ("wild.\u202e", True),  # right-to-left override
    ("wild." + "a" * 20_000, True),
    ("wild.*", False),
    ("wild.>", False),
    ("*.b", False),
    (">", False),
    ("*", False),
    ("_INBOX.x", False),
    ("_INBOX.wild.b", False),
    (HELLO, False),
    (ECHO, False),
    (PAGE, False),
    ("__listScripts", False),
    ("wild.b.c", False),
    ("wild", False),
    ("WILD.b", False),
    ("wild.", False),
    (".wild.b", False),
    ("wild..b", False),
    ("", False),
    ("wild.b c", False),
    ("wild.b\t", False),
    ("wild.\u00a0", False),
    ("wild.\u2003", False),
    ("wild.\u3000", False),
    ("wild.\u0085", False),
    ("wild.\x00", False),
    ("wild.\x7f", False),
    ("wild.b\r\n", False),
]
_STRING_FIELDS = ("subject", "payload", "method", "url", "executor")
_BOOL_FIELDS = ("async", "raw")
_NOT_STRINGS = ["0", "-1", "1.5", "1e999", "true", "false", "[]", '["a"]', "{}", '{"a":1}', "99999999999999999999"]
_NOT_BOOLS = ['"true"', '"false"', "0", "1", '""', "[]", "{}", '"yes"']
_BAD_BASE64 = ["aGk", "aGk==", "a", "!!!!", "aGk=aGk=", "YQ=", "=", "aG k=", "aGk-", "aGk_", "aGk=\\u0000", "\u00e9"]


def _envelopes(rng: random.Random) -> list[tuple[str, bytes, NatsExpect]]:
    out: list[tuple[str, bytes, NatsExpect]] = []

    def raw(arrival: str, data: bytes) -> None:
        out.append((arrival, data, script_answer(arrival, data)))

    def runs(arrival: str, data: bytes, subject: str, payload: bytes) -> None:
        out.append((arrival, data, script_answer(subject, payload)))

    def arrival() -> str:
        return rng.choice([ECHO, wild_arrival(rng)])

    # A field of the wrong type makes the whole data a raw payload.
    for field in _STRING_FIELDS + _BOOL_FIELDS:
        for wrong in _NOT_STRINGS if field in _STRING_FIELDS else _NOT_BOOLS:
            fields = [("payload", b64(b"hi")), ("subject", json.dumps("wild.b")), (field, wrong)]
            rng.shuffle(fields)
            raw(arrival(), envelope(*[f for f in fields if f[0] != field or f[1] == wrong]))
    for bad in _BAD_BASE64:
        raw(arrival(), envelope(("payload", json.dumps(bad)), ("subject", json.dumps("wild.b"))))
    # Base64 as Go reads it: CR and LF are skipped; the empty string is an empty payload.
    for encoded, payload in (('"aG\\nk="', b"hi"), ('"aG\\r\\nk="', b"hi"), ('""', b"")):
        where = arrival()
        runs(where, envelope(("payload", encoded), ("subject", json.dumps("wild.b"))), within(where, "wild.b"), payload)
    # Envelope subjects: invalid, wildcards, _INBOX., other scripts' subjects, Unicode tricks.
    for subject, ok in _ENVELOPE_SUBJECTS:
        for where in (wild_arrival(rng), rng.choice([ECHO, HELLO, PAGE])):
            body = fill(rng, rng.randint(0, 64))
            runs(
                where,
                envelope(("subject", json.dumps(subject)), ("payload", b64(body))),
                within(where, subject) if ok else where,
                body,
            )
    # A lone surrogate is U+FFFD, as Go decodes it; the subject then is a valid one.
    where = wild_arrival(rng)
    runs(where, envelope(("payload", b64(b"s")), ("subject", '"wild.\\ud800"')), "wild.\ufffd", b"s")
    # Duplicate keys and Go's case-insensitive field names: the last one wins.
    duplicates = [
        ((("payload", b64(b"a")), ("payload", b64(b"b"))), "", b"b"),
        ((("payload", b64(b"a")), ("PAYLOAD", b64(b"c"))), "", b"c"),
        ((("subject", '"wild.c"'), ("Subject", '"wild.d"'), ("payload", b64(b"d"))), "wild.d", b"d"),
        ((("subject", '"wild.c"'), ("\u017fubject", '"wild.e"'), ("payload", b64(b"e"))), "wild.e", b"e"),
        ((("subject", '"wild.c"'), ("subject", '"wild.*"'), ("payload", b64(b"f"))), "", b"f"),
    ]
    for keys, subject, payload in duplicates:
        where = wild_arrival(rng)
        runs(where, envelope(*keys), subject or where, payload)
    for keys in (
        (("payload", b64(b"a")), ("payload", '"!"')),
        (("payload", b64(b"a")), ("payload", "null")),
        (("payload", b64(b"a")), ("Payload", "1")),
        (("payload", b64(b"a")), ("async", "true"), ("ASYNC", '"no"')),
    ):
        raw(arrival(), envelope(*keys))
    # Numbers out of range: wrong types make raw data, in fields nobody reads they are skipped (as by Go).
    for number in ("1e999", "-1e999", "1e-99999", "123456789012345678901234567890", "9" * 4000, "9" * 5000):
        where = wild_arrival(rng)
        runs(where, envelope(("payload", b64(b"n")), ("extra", number), ("subject", '"wild.n"')), "wild.n", b"n")
        raw(arrival(), envelope(("payload", b64(b"n")), ("async", number)))
    # Deep nesting: Python's parser stops at about 1,000 levels (Go's at 10,000; docs/decisions.md), past
    # which the whole message is a raw payload.
    for depth in (10, 500, 2000, 9000):
        for nested in ("[" * depth + "]" * depth, '{"a":' * depth + "0" + "}" * depth):
            where = wild_arrival(rng)
            doc = envelope(("payload", b64(b"d")), ("x", nested), ("subject", '"wild.d"'))
            if depth < 1000:
                runs(where, doc, "wild.d", b"d")
            else:
                raw(where, doc)
    for depth in (20_000, 200_000):
        raw(arrival(), envelope(("payload", b64(b"d")), ("x", "[" * depth + "]" * depth)))
        raw(arrival(), ("[" * depth).encode())
    # Huge: a payload near the limit, a huge unknown field, many keys, a whole message of the maximum size.
    big = fill(rng, 600_000)
    where = arrival()
    runs(where, envelope(("payload", b64(big))), where, big)
    for extra in (
        (("junk", json.dumps("j" * 900_000)),),
        (("junk", "[" + ",".join("0" for _ in range(200_000)) + "]"),),
        tuple((f"k{i}", "1") for i in range(50_000)),
    ):
        where = arrival()
        runs(where, envelope(("payload", b64(b"h")), *extra), where, b"h")
    padded = envelope(("payload", b64(b"p")), ("pad", '""'))
    padded = padded[:-3] + b'"' + b"p" * (MAX_PAYLOAD_BYTES - len(padded)) + b'"}'
    where = arrival()
    runs(where, padded, where, b"p")
    # Truncated JSON: any cut of an object is not JSON, so a raw payload.
    for _ in range(24):
        full = envelope(
            ("payload", b64(fill(rng, rng.randint(0, 40)))),
            ("subject", json.dumps("wild." + token(rng))),
            ("method", '"POST"'),
            ("url", '"/x?y=1"'),
            ("async", "false"),
        )
        raw(arrival(), full[: rng.randint(1, len(full) - 1)])
    # Async: acknowledged with {} at once; with a wrong payload it is a raw payload like any other.
    for _ in range(4):
        out.append((arrival(), envelope(("payload", b64(fill(rng, 8))), ("async", "true")), NatsExpect("ack")))
    raw(arrival(), envelope(("payload", '"@@"'), ("async", "true")))
    # The HTML script: the envelope's method picks its function; unknown methods answer an empty page.
    for method, expect in (
        ("GET", result(PAGE_GET, http_code=200)),
        ("POST", result(b"posted", http_code=201)),
        ("DELETE", result(None, error=DELETE_ERROR)),
        ("", result(b"", http_code=200)),
        ("FOO", result(b"", http_code=200)),
        ("get", result(b"", http_code=200)),
        ("\u0000", result(b"", http_code=200)),
        ("G E T", result(b"", http_code=200)),
    ):
        url = json.dumps(rng.choice(["", "/", "/x?y=%zz", "\u0000", "/" + "u" * 5000]))
        data = envelope(("payload", b64(b"posted")), ("method", json.dumps(method)), ("url", url))
        out.append((PAGE, data, expect))
    return out


# --- Internal subjects and unserved subjects ----------------------------------------------------------------


def _junk_text(rng: random.Random) -> bytes:
    """Data that names no script: random bytes, binary, text with commas, or nothing."""
    kind = rng.randrange(5)
    if kind == 0:
        return b"junk" + fill(rng, rng.randint(0, 300))
    if kind == 1:
        return bytes(rng.choice([0x00, 0xFF, 0xC0, 0x80]) for _ in range(rng.randint(1, 100)))
    if kind == 2:
        return ",".join(token(rng) for _ in range(rng.randint(3, 30))).encode()
    if kind == 3:
        return rng.choice([b"", b" ", b"*", b">", b"_INBOX.x", b"funcs.*", b"funcs.hello ", b"\x00"])
    return ("zz." + token(rng) + rng.choice(["", "\u2003", "\ud800", "\u00e9"])).encode("utf-8", "surrogatepass")


def _internal(rng: random.Random) -> list[tuple[str, bytes, NatsExpect]]:
    out: list[tuple[str, bytes, NatsExpect]] = []
    for _ in range(16):
        out.append(("__listScripts", _junk_text(rng), result(LISTING, http_code=200)))
    out.append(("__listScripts", fill(rng, MAX_PAYLOAD_BYTES), result(LISTING, http_code=200)))
    not_found = NatsExpect("error", error="script not found for subject: ", may_overflow=True)
    for _ in range(22):
        junk = _junk_text(rng)
        out.append(("__listNamesForScript", junk.replace(b",", b""), not_found))
    for size in (MAX_PAYLOAD_BYTES, 400_000):
        out.append(("__listNamesForScript", rng.choice([b"\xff", b"a"]) * size, not_found))
    out.append(("__listNamesForScript", b"funcs.hello", result(b'["hello"]', http_code=200)))
    out.append(("__listNamesForScript", b"wild.*", result(b'["wild"]', http_code=200)))
    invalid = NatsExpect("error", error="invalid request")
    missing = NatsExpect("error", error="no script found for subject ", may_overflow=True)
    for _ in range(26):
        junk = _junk_text(rng).replace(b",", b"")
        commas = rng.choice([0, 2, 3, 50])
        data = b",".join([junk] + [token(rng).encode() for _ in range(commas)]) if commas else junk
        out.append(("__infoNamedScript", data, invalid))
        other = _junk_text(rng).replace(b",", b"")
        out.append(("__infoNamedScript", junk + b"," + other, missing))
    out.append(("__infoNamedScript", b"funcs.hello,hello," + b"x" * 1_000_000, invalid))
    out.append(("__infoNamedScript", b"funcs.hello," + b"x" * (MAX_PAYLOAD_BYTES - 12), missing))
    out.append(("__infoNamedScript", b"," * MAX_PAYLOAD_BYTES, invalid))
    out.append(("__infoNamedScript", b"funcs.hello,hello", result(None, http_code=200)))
    out.append(("__infoNamedScript", b"wild.*,wild", result(None, http_code=200)))
    return out


def _unserved(rng: random.Random) -> list[tuple[str, bytes, NatsExpect]]:
    subjects = [
        "nothing." + token(rng),
        "_INBOX." + token(rng),
        "_INBOX.wild.b",
        HELLO + "." + token(rng),
        "wild." + token(rng) + "." + token(rng),
        "funcs",
        "wild",
        "web",
        "__listScriptsX",
        "__infoNamedScript.x",
        "\u00e9." + token(rng),
        "WEB.PAGE",
    ]
    return [
        (
            s,
            rng.choice([b"", fill(rng, 32), b'{"payload":"aGk=","subject":"funcs.hello"}']),
            NatsExpect("no_responders"),
        )
        for s in subjects
    ]


def nats_cases(rng: random.Random) -> list[NatsCase]:
    """Every NATS case, in category order."""
    cases: list[NatsCase] = []
    for category, make in (
        ("nats.raw", _raw_payloads),
        ("nats.envelope", _envelopes),
        ("nats.internal", _internal),
        ("nats.unserved", _unserved),
    ):
        for index, (subject, data, expect) in enumerate(make(rng)):
            cases.append(NatsCase(category, index, subject, data, expect))
    return cases
