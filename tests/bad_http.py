"""Malformed HTTP requests for the gateway (see tests/bad_inputs.py), each with the answers docs/http.md lets it
get: a malformed request is a 400 (`Error: bad request: …`), so is an invalid subject in the path; a subject
without scripts is a 404, an unclean path a 301 to its clean form, a body over -max-payload a 413, a body that
does not decode a 400. A request whose body never completes gets no answer while its client still sends, and
its connection is closed when the client hangs up. A 500 only where the HTML script raises.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import zlib
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import quote

from tests.bad_nats import DELETE_ERROR, ECHO, HELLO, MAX_PAYLOAD_BYTES, PAGE, fill, token

BAD_REQUEST = b"Error: bad request"
INVALID_SUBJECT = b"Error: invalid subject"
NO_SCRIPT = b"Error: no script found for subject"
TOO_LARGE = b"Error: request body larger than"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What a raw HTTP exchange got: a complete response, a closed connection, or nothing."""

    outcome: Literal["response", "closed", "silent", "timeout", "incomplete"]
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True, slots=True)
class HttpExpect:
    """The answers an HTTP case may get.

    A response with a status in `statuses`, whose body starts with the prefix `bodies` gives for its status,
    whose Location is `location` when one is given and, in JSON mode, whose one result carries `payload`;
    or, with `closed`, a connection closed without a response; or, with `silent`, nothing at all while the
    client waits (its request is incomplete).
    """

    statuses: frozenset[int] = frozenset()
    bodies: tuple[tuple[int, bytes], ...] = ()
    location: str | None = None
    payload: bytes | None = None
    closed: bool = False
    silent: bool = False

    def problem(self, answer: HttpAnswer) -> str | None:
        """Why `answer` is not acceptable, or None."""
        if answer.outcome in ("closed", "silent"):
            ok = self.closed if answer.outcome == "closed" else self.silent
            return None if ok else f"expected a response with a status in {sorted(self.statuses)}"
        if answer.outcome != "response":
            return f"no complete response ({answer.outcome})"
        if answer.status not in self.statuses:
            return f"status {answer.status} not in {sorted(self.statuses)}"
        prefix = dict(self.bodies).get(answer.status, b"")
        if not answer.body.startswith(prefix):
            return f"body does not start with {prefix!r}"
        if self.location is not None and answer.header("Location") != self.location:
            return f"Location is not {self.location!r}"
        if self.payload is not None and answer.status == 200 and _first_payload(answer.body) != self.payload:
            return "the script did not get the expected payload"
        return None


def _first_payload(body: bytes) -> bytes | None:
    try:
        results = json.loads(body)
        return base64.b64decode(results[0]["payload"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class HttpCase:
    """Bytes written to a fresh connection in `parts` (a short pause between them), then: `read` the answer,
    `eof` (half-close, then read), or `wait` a moment and hang up. `head`: the response has no body."""

    category: str
    index: int
    parts: tuple[bytes, ...]
    end: Literal["read", "eof", "wait"]
    expect: HttpExpect
    head: bool = False


def expect(
    *statuses: int,
    prefix: bytes = b"",
    bodies: dict[int, bytes] | None = None,
    location: str | None = None,
    payload: bytes | None = None,
) -> HttpExpect:
    """Any of `statuses`; an error status with a body starting with `prefix` (or with the prefix `bodies` gives)."""
    prefixes = bodies if bodies is not None else {s: prefix for s in statuses if s >= 400 and prefix}
    return HttpExpect(frozenset(statuses), tuple(sorted(prefixes.items())), location, payload)


MALFORMED = expect(400, prefix=BAD_REQUEST)
OK = expect(200)


def request(
    method: str = "GET",
    target: str = "/funcs.hello",
    *,
    version: str = "HTTP/1.1",
    headers: tuple[str, ...] = ("Host: x",),
    body: bytes = b"",
    length: bool = True,
) -> bytes:
    """A request: its line, the headers, a Content-Length for `body` (when `length`), and the body."""
    lines = [f"{method} {target} {version}", *headers]
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


class Sent(NamedTuple):
    """One case before it is numbered: what is sent (in parts, when a tuple) and what it may get (see HttpCase)."""

    data: bytes | tuple[bytes, ...]
    expect: HttpExpect
    end: Literal["read", "eof", "wait"] = "read"
    head: bool = False


Made = list[Sent]


def _request_lines(rng: random.Random) -> Made:
    out: Made = []
    # Methods that are not tokens, or tokens no HTTP server knows: a 400, or a 405/501 for an unknown method.
    for method in ["G(T", "GE@T", "GET:", "G\x01T", "G\u00e9T", "{}", "GET/", '"GET"', "GET\x00"]:
        out.append(Sent(request(method), MALFORMED))
    for method in ["get", "post", "BREW", "FOO", "M-SEARCHX", token(rng).upper(), token(rng, 20).upper()]:
        out.append(Sent(request(method), expect(400, 405, 501, prefix=BAD_REQUEST)))
    for line in [
        "GARBAGE",
        "GET",
        "GET ",
        "GET /funcs.hello HTTP/1.1 extra",
        "GET /funcs hello HTTP/1.1",
        "/funcs.hello HTTP/1.1",
        "GET HTTP/1.1",
        " GET /funcs.hello HTTP/1.1",
        "GET\t/funcs.hello\tHTTP/1.1",
        "GET /funcs.hello HTTP/1.1\x00",
        "\x00GET /funcs.hello HTTP/1.1",
        "GET /funcs.hello\rHTTP/1.1",
        "GET /funcs.hello HTTP/1.1\r",
        # No version: an HTTP/0.9 request line, which HTTP/1.1 servers no longer accept.
        "GET /funcs.hello",
    ]:
        out.append(Sent((line + "\r\nHost: x\r\n\r\n").encode("utf-8", "surrogateescape"), MALFORMED))
    for _ in range(12):
        rest = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 !#$%&'*+-.^_`|~/?:@") for _ in range(40))
        out.append(Sent(rng.choice(b"abcdefghijklmnopqrstuvwxyz/").to_bytes() + rest + b"\r\n\r\n", MALFORMED))
    return out


def _versions(rng: random.Random) -> Made:
    versions = ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/1.2", "HTTP/1.9", "HTTP/1.10", "HTTP/1", "HTTP/11"]
    versions += ["http/1.1", "HTTP/1.1x", "FTP/1.1", "HTTP/ 1.1", "HTTP/-1.1", "HTTP/1.a", "HTTPS/1.1", "HTTP/1.1/1.1"]
    versions += [f"HTTP/{rng.randint(2, 9)}.{rng.randint(0, 9)}"]
    return [Sent(request(version=v), expect(400, 505, prefix=BAD_REQUEST)) for v in versions]


def _headers(rng: random.Random) -> Made:
    out: Made = []
    bad = [
        "Host x",
        "Bad Header: x",
        "Host : x",
        ": v",
        "X-A: a\x00b",
        "X-A: a\x01b",
        "X-A: a\rb",
        " X-Folded: x",
        "X-\u00e9: v",
        "X-A\x00: v",
        "X(A): v",
        "X-A:\x7f",
    ]
    for header in bad:
        out.append(Sent(request(headers=("Host: x", header)), MALFORMED))
    out.append(Sent(b"GET /funcs.hello HTTP/1.1\r\n Host: x\r\n\r\n", MALFORMED))
    out.append(Sent(b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", MALFORMED))
    # HTTP/1.1 wants exactly one valid Host (RFC 9112 §3.2), as Go's server does.
    for hosts in [(), ("Host: x", "Host: y"), ("Host: a b",), ("Host: x/y",), ("Host: [::1",)]:
        out.append(Sent(request(headers=hosts), MALFORMED))
    oversized = expect(400, 431, prefix=BAD_REQUEST)
    for _ in range(6):
        out.append(Sent(request(headers=("Host: x", "X-Big: " + "b" * rng.randint(8200, 30_000))), oversized))
        out.append(Sent(request(headers=("Host: x", "X-" + "n" * rng.randint(8200, 20_000) + ": v")), oversized))
    for count in (200, 1000, 3000):
        out.append(Sent(request(headers=("Host: x", *(f"X-{i}: v" for i in range(count)))), oversized))
    # Odd but valid: a Latin-1 value (obs-text), long values under the limit, an underscore in a name.
    odd = ["X-L: caf\udce9", "X-Long: " + "v" * 8000, "X_Under: 1", "X-Empty:", "X-Spaces:    v    "]
    for header in odd:
        out.append(Sent(request(headers=("Host: x", header)), OK))
    for _ in range(8):
        junk = bytes(rng.choice(range(0x21, 0x7F)) for _ in range(rng.randint(1, 60))).replace(b":", b"")
        out.append(Sent(b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n" + junk + b"\r\n\r\n", MALFORMED))
    return out


def _content_lengths(rng: random.Random) -> Made:
    out: Made = []
    for value in ["abc", "-1", "+3", "0x3", "1 2", "3, 3", "3,4", "", " ", "1e3", "\uff13", "3.0", "3\x00"]:
        headers: tuple[str, ...] = ("Host: x", f"Content-Length: {value}")
        out.append(Sent(request("POST", headers=headers, body=b"abc", length=False), MALFORMED))
    for value in ["99999999999999999999999", "18446744073709551616", "9223372036854775808"]:
        headers = ("Host: x", f"Content-Length: {value}")
        too_big = expect(400, 413, bodies={400: BAD_REQUEST, 413: TOO_LARGE})
        out.append(Sent(request("POST", headers=headers, body=b"abc", length=False), too_big))
    for a, b in [(3, 4), (4, 3), (0, 3)]:
        headers = ("Host: x", f"Content-Length: {a}", f"Content-Length: {b}")
        out.append(Sent(request("POST", headers=headers, body=b"abcd", length=False), MALFORMED))
    # Identical duplicates may be taken as one (RFC 9110 §8.6).
    headers = ("Host: x", "Content-Length: 3", "Content-Length: 3")
    out.append(Sent(request("POST", headers=headers, body=b"abc", length=False), expect(200, 400, prefix=BAD_REQUEST)))
    for te in ["chunked", "identity", "gzip, chunked"]:
        headers = ("Host: x", "Content-Length: 5", f"Transfer-Encoding: {te}")
        out.append(Sent(request("POST", headers=headers, body=b"3\r\nabc\r\n0\r\n\r\n", length=False), MALFORMED))
    # Announcing more than -max-payload is answered 413 at once, before the body.
    for declared in (MAX_PAYLOAD_BYTES + 1, 2_000_000, 10**12):
        headers = ("Host: x", f"Content-Length: {declared}")
        body = fill(rng, rng.randint(0, 100))
        out.append(Sent(request("POST", headers=headers, body=body, length=False), expect(413, prefix=TOO_LARGE)))
    return out


def _chunked(body: bytes, headers: tuple[str, ...] = ("Host: x", "Transfer-Encoding: chunked")) -> bytes:
    return request("POST", "/funcs.echo", headers=headers, length=False) + body


def _chunks(data: bytes, rng: random.Random) -> bytes:
    out, rest = [], data
    while rest:
        size = rng.randint(1, max(1, len(rest)))
        out.append(b"%x\r\n%s\r\n" % (size, rest[:size]))
        rest = rest[size:]
    return b"".join(out) + b"0\r\n\r\n"


def _chunked_bodies(rng: random.Random) -> Made:
    out: Made = []
    for size in ["zz", "-3", "0x3", "+3", "3 3", "", "ffffffffffffffffffff", '3;ext="x', "\x003", "3\x00", "g"]:
        out.append(Sent(_chunked(f"{size}\r\nabc\r\n0\r\n\r\n".encode()), MALFORMED))
    for body in [b"3\r\nabcX\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nX T: 1\r\n\r\n"]:
        out.append(Sent(_chunked(body), MALFORMED))
    good = b"3\r\nabc\r\n0\r\n\r\n"
    for te in ["gzip", "chunked, gzip", "xchunked", "chunked\x00", "identity", "chunked, chunked"]:
        out.append(Sent(_chunked(good, ("Host: x", f"Transfer-Encoding: {te}")), MALFORMED))
    out.append(Sent(_chunked(good, ("Host: x", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")), MALFORMED))
    # A bad chunk size after a good chunk, sent separately: the body fails while the script waits for it.
    for _ in range(3):
        first = _chunked(b"3\r\nabc\r\n")
        out.append(Sent((first, rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\n", b"3\r\nabcde"])), MALFORMED))
    # Valid but odd: extensions, a trailer, the coding's name in capitals, many tiny chunks.
    for _ in range(6):
        data = fill(rng, rng.randint(0, 3000))
        out.append(Sent(_chunked(_chunks(data, rng)), expect(200, payload=b"funcs.echo|" + data)))
    for body in [b"3;ext=1\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"]:
        out.append(Sent(_chunked(body), expect(200, payload=b"funcs.echo|abc")))
    out.append(Sent(_chunked(good, ("Host: x", "Transfer-Encoding: Chunked")), expect(200, payload=b"funcs.echo|abc")))
    # Chunked in HTTP/1.0 is faulty framing (RFC 9112 §6.1): refused, or read and the connection closed.
    out.append(
        Sent(
            request("POST", "/funcs.echo", version="HTTP/1.0", headers=("Transfer-Encoding: chunked",)) + good,
            expect(200, 400, prefix=BAD_REQUEST),
        )
    )
    # Over -max-payload in chunks: 413.
    big = b"".join(b"%x\r\n%s\r\n" % (400_000, b"c" * 400_000) for _ in range(3)) + b"0\r\n\r\n"
    out.append(Sent(_chunked(big), expect(413, prefix=TOO_LARGE)))
    return out


def _short_bodies(rng: random.Random) -> Made:
    out: Made = []
    waiting, hung_up = HttpExpect(silent=True), HttpExpect(statuses=frozenset({400}), closed=True)
    for _ in range(4):
        declared = rng.randint(10, 100_000)
        head = request("POST", "/funcs.echo", headers=("Host: x", f"Content-Length: {declared}"), length=False)
        part = fill(rng, rng.randint(0, declared - 1))
        out.append(Sent(head + part, waiting, "wait"))
        out.append(Sent(head + part, hung_up, "eof"))
    unfinished = [
        _chunked(b"3\r\nabc\r\n"),
        _chunked(b"10\r\nabc"),
        _chunked(b"3\r\nabc\r\n0\r\n"),
        b"POST /funcs.echo HTTP/1.1\r\nHost: x\r\nContent-Len",
        b"GET /funcs.hello HTTP/1.1\r\nHost: x\r\n",
        b"GET /funcs.hel",
    ]
    for data in unfinished:
        out.append(Sent(data, waiting, "wait"))
        out.append(Sent(data, hung_up, "eof"))
    return out


def gzipped(data: bytes) -> bytes:
    """`data` in gzip, without a timestamp (the same bytes on every run)."""
    return gzip.compress(data, mtime=0)


def rawish_not(data: bytes) -> bytes:
    """`data` that does not start with the gzip or zlib magic bytes, so that it is certain not to decode."""
    return b"\x00" + data[1:] if data[:1] in (b"\x1f", b"\x78") else data


def _encodings(rng: random.Random) -> Made:
    out: Made = []
    undecodable = expect(400, prefix=BAD_REQUEST)

    def post(body: bytes, coding: str, target: str = "/funcs.echo") -> bytes:
        return request("POST", target, headers=("Host: x", f"Content-Encoding: {coding}"), body=body)

    for coding, refused in [("gzip", undecodable), ("deflate", undecodable), ("br", undecodable)]:
        for _ in range(3):
            out.append(Sent(post(rawish_not(fill(rng, rng.randint(1, 500))), coding), refused))
    for _ in range(4):
        data = fill(rng, rng.randint(2000, 20_000)).hex().encode()
        packed = gzipped(data)
        # Cut inside the compressed data, or with the CRC and length trailer wrong: it does not decode.
        out.append(Sent(post(packed[: rng.randint(10, len(packed) - 9)], "gzip"), undecodable))
        broken = bytearray(packed)
        broken[-5] ^= 0xFF
        out.append(Sent(post(bytes(broken), "gzip"), undecodable))
        out.append(Sent(post(packed + fill(rng, 20), "gzip"), undecodable))
        packed = zlib.compress(data)
        out.append(Sent(post(packed[: rng.randint(2, len(packed) - 5)], "deflate"), undecodable))
    # Decoded bigger than -max-payload: 413, however small it was sent.
    for coding, pack in (("gzip", gzipped), ("deflate", zlib.compress)):
        out.append(Sent(post(pack(b"\0" * (MAX_PAYLOAD_BYTES + 1)), coding), expect(413, prefix=TOO_LARGE)))
    # Valid: the script gets the body decoded, whole; codings applied twice are decoded twice.
    for _ in range(3):
        data = fill(rng, rng.randint(0, 5000))
        out.append(Sent(post(gzipped(data), "gzip"), expect(200, payload=b"funcs.echo|" + data)))
        out.append(Sent(post(zlib.compress(data), "deflate"), expect(200, payload=b"funcs.echo|" + data)))
    data = fill(rng, 100)
    twice = expect(200, 400, 415, prefix=BAD_REQUEST, payload=b"funcs.echo|" + data)
    out.append(Sent(post(gzipped(gzipped(data)), "gzip, gzip"), twice))
    out.append(Sent(post(zlib.compress(gzipped(data)), "gzip, deflate"), twice))
    # Codings the gateway does not have: refused (415, or 400), or passed on as sent, as Go did.
    for coding in ["bogus", "zstd", "compress", "gzip;q=1", "x-gzip"]:
        body = fill(rng, 40)
        out.append(Sent(post(body, coding), expect(200, 400, 415, prefix=BAD_REQUEST, payload=b"funcs.echo|" + body)))
    out.append(Sent(post(b"as sent", "identity"), expect(200, payload=b"funcs.echo|as sent")))
    return out


_BAD_SUBJECT_PARTS = ["%20", "%09", "%00", "%7F", "%C2%85", "%C2%A0", "%E2%80%83", "%E3%80%80", "%0D%0A", "%0B"]


def _paths(rng: random.Random) -> Made:
    out: Made = []
    invalid = expect(400, prefix=INVALID_SUBJECT)
    for _ in range(24):
        left, right = token(rng), token(rng)
        shape = rng.randrange(6)
        if shape == 0:
            subject = left + rng.choice(_BAD_SUBJECT_PARTS) + right
        elif shape == 1:
            subject = rng.choice(["*", ">", "%2A", "%3E"]) + "." + right
        elif shape == 2:
            subject = left + "." + rng.choice(["*", ">", "%2A"]) + "." + right
        elif shape == 3:
            subject = left + rng.choice(["..", ".%2E", "%2E."]) + right
        elif shape == 4:
            subject = rng.choice([".", "%2E"]) + left
        else:
            subject = left + rng.choice([".", "%2e"])
        out.append(Sent(request(target="/" + subject + rng.choice(["", "/", "/rest", "?q=1"])), invalid))
    unknown = expect(404, prefix=NO_SCRIPT)
    for subject in [
        "nothing." + token(rng),
        "_INBOX." + token(rng),
        "_INBOX.wild.b",
        "_",
        "a*b",
        "a>b",
        "%C3%A9t%C3%A9",
        "%F0%9F%98%80",
        "funcs.hello.extra",
        "wild.a.b",
        "x" * 5000,
        "healthz.x",
    ]:
        out.append(Sent(request(target="/" + subject), unknown))
    # Percent-encoding that decodes to nothing valid: a 400, or a 404 for the text taken as it is.
    for junk in ["%", "%1", "%zz", "%%", "%C0%80", "%ED%A0%80", "%FF%FE", "funcs.hello%", "%GG", "%u0041"]:
        out.append(Sent(request(target="/" + junk), expect(400, 404, prefix=b"Error: ")))
    for target in ["/fun%63s.hello", "/funcs%2Ehello", "/funcs.hello/%ff%fe?x=%zz", "/funcs.hello/" + "r" * 7000]:
        out.append(Sent(request(target=target), OK))
    # `//`, `/./` and `/../`, also percent-encoded: a 301 to the clean path, query kept.
    for _ in range(16):
        a, b = token(rng), token(rng)
        query = rng.choice(["", "?q=1", "?_timeout=1s&x=%zz"])
        dirty, clean = rng.choice(
            [
                (f"/{a}//{b}", f"/{a}/{b}"),
                (f"//{a}/{b}", f"/{a}/{b}"),
                (f"/{a}/./{b}", f"/{a}/{b}"),
                (f"/{a}/../{b}", f"/{b}"),
                (f"/{a}/%2e%2e/{b}", f"/{b}"),
                (f"/{a}/%2E/{b}", f"/{a}/{b}"),
                (f"/../../{a}", f"/{a}"),
                (f"/{a}/{b}/..", f"/{a}"),
                (f"/{a}/.", f"/{a}"),
            ]
        )
        out.append(Sent(request(target=dirty + query), expect(301, location=clean + query)))
    # Longer than the request line may be: refused, whatever the path.
    for size in (8200, 20_000, 65_000):
        target = "/funcs.hello?" + "q" * size if rng.random() < 0.5 else "/" + "p" * size
        out.append(Sent(request(target=target), expect(400, 414, 431, prefix=BAD_REQUEST)))
    return out


def _targets(rng: random.Random) -> Made:
    out: Made = []
    for target in ["http://x/funcs.hello", "http://x/funcs.hello?_timeout=2s", "https://other/funcs.hello"]:
        out.append(Sent(request(target=target), OK))
    out.append(Sent(request(target="http://[::1]:7643/funcs.hello?x=1"), OK))
    for target in ["http://x:99999/funcs.hello", "*", "funcs.hello", "http:///", "http://[::1/x", "?x=1", "#f"]:
        out.append(Sent(request(target=target), MALFORMED))
    out.append(Sent(request(target="http://x/nothing." + token(rng)), expect(404, prefix=NO_SCRIPT)))
    out.append(Sent(request(target="http://x/a%20b"), expect(400, prefix=INVALID_SUBJECT)))
    # Asterisk- and authority-form outside OPTIONS and CONNECT are malformed; the daemon is no proxy.
    out.append(Sent(request("OPTIONS", "*"), expect(200, 204, 400, 404, 405, prefix=b"Error: ")))
    out.append(Sent(request("CONNECT", "funcs.hello:80"), expect(400, 405, 501, prefix=b"Error: ")))
    return out


def _timeouts(rng: random.Random) -> Made:
    out: Made = []
    unparsable = ["abc", "", "1e400s", "9223372036854775808ns", "1.5.5s", "%ff", "\u00b5s", "NaN", "inf", "1h-1m"]
    unparsable += ["99999999999999h", "5", "+-1s", "1 s", "%00", "\uff11s", "s", ".s", "1.s.", "0x10s"]
    unparsable += [token(rng, 12), "9" * 400 + "s"]
    for value in unparsable:
        out.append(Sent(request(target="/funcs.hello?_timeout=" + quote(value, safe="%")), OK))
    for value in ["-1s", "0", "1ns", "-9223372036854775808ns", "1us", "0.000000001s", "-0"]:
        out.append(Sent(request(target="/funcs.hello?_timeout=" + value), expect(200, 503)))
    out.append(Sent(request(target="/funcs.hello?_timeout=1s&_timeout=junk&_timeout"), OK))
    out.append(Sent(request(target="/funcs.hello?_timeout"), OK))
    return out


def _odd(rng: random.Random) -> Made:
    """Valid but odd requests."""
    out: Made = []
    for method in ["PATCH", "OPTIONS", "PUT", "TRACE", "PROPFIND", "PURGE"]:
        out.append(Sent(request(method, "/" + PAGE), expect(200)))
    out.append(Sent(request("HEAD", "/" + PAGE), expect(200), head=True))
    out.append(Sent(request("HEAD", "/" + HELLO), expect(200), head=True))
    out.append(Sent(request("GET", "/" + PAGE + "/any/where?x=1"), expect(200)))
    out.append(Sent(request("POST", "/" + PAGE), expect(201)))
    out.append(Sent(request("POST", "/" + PAGE, body=b"<b>"), expect(201)))
    out.append(Sent(request("DELETE", "/" + PAGE), expect(500, prefix=b"Error: " + DELETE_ERROR.encode())))
    out.append(
        Sent(request("GET", "/" + ECHO, body=b"a body on GET"), expect(200, payload=b"funcs.echo|a body on GET"))
    )
    out.append(Sent(request("POST", "/" + ECHO, headers=("Host: x", "Content-Length: 0")), expect(200)))
    body = fill(rng, MAX_PAYLOAD_BYTES)
    out.append(Sent(request("POST", "/" + HELLO, body=body), expect(200)))
    out.append(Sent(request("POST", "/" + HELLO, body=body + b"!"), expect(413, prefix=TOO_LARGE)))
    out.append(
        Sent(request("PUT", "/" + PAGE, body=fill(rng, MAX_PAYLOAD_BYTES + 4096)), expect(413, prefix=TOO_LARGE))
    )
    expecting = ("Host: x", "Expect: 100-continue", "Content-Length: 5")
    out.append(
        Sent(
            (request("POST", "/" + ECHO, headers=expecting, length=False), b"hello"),
            expect(200, payload=b"funcs.echo|hello"),
        )
    )
    out.append(Sent(request("POST", "/" + ECHO, headers=("Host: x", "Expect: tea"), body=b"x"), expect(200, 417)))
    out.append(Sent(request("GET", "/" + HELLO, version="HTTP/1.0", headers=()), expect(200)))
    out.append(Sent(b"\r\n" + request("GET", "/" + HELLO), expect(200, 400, prefix=BAD_REQUEST)))
    return out


def _internal_over_http(rng: random.Random) -> Made:
    """The internal subjects answer loopback clients over HTTP; junk data is a client error, never a 500."""
    out: Made = []
    for _ in range(3):
        out.append(Sent(request("POST", "/__listScripts", body=fill(rng, 50)), expect(200)))
    refused = expect(400, 404, prefix=b"Error: ")
    for body in [b"", b"nothing." + token(rng).encode(), b"\xff\xfe", b"a,b", b"*"]:
        out.append(Sent(request("POST", "/__listNamesForScript", body=body), refused))
    for body in [b"", b"junk", b"a,b,c", b",,,,", b"nothing,none", b"\x00,\xff", b"funcs.hello,nobody"]:
        out.append(Sent(request("POST", "/__infoNamedScript", body=body), refused))
    out.append(Sent(request("POST", "/__listNamesForScript", body=b"funcs.hello"), expect(200)))
    out.append(Sent(request("POST", "/__infoNamedScript", body=b"funcs.hello,hello"), expect(200)))
    return out


def _junk(rng: random.Random) -> Made:
    """Bytes that are no request at all."""
    out: Made = []
    for _ in range(24):
        data = fill(rng, rng.randint(1, 2000)).replace(b"\r", b"").replace(b"\n", b"")
        if not data or data[:1].isupper():
            data = b"\x00" + data
        out.append(Sent(data + b"\r\n\r\n", MALFORMED))
    for _ in range(6):
        data = bytes(rng.choice(range(0x20, 0x7F)) for _ in range(rng.randint(1, 200))).lower()
        out.append(Sent(data + b"\r\n\r\n", MALFORMED))
    return out


def http_cases(rng: random.Random) -> list[HttpCase]:
    """Every HTTP case, in category order."""
    cases: list[HttpCase] = []
    for category, make in (
        ("http.request_line", _request_lines),
        ("http.version", _versions),
        ("http.header", _headers),
        ("http.content_length", _content_lengths),
        ("http.chunked", _chunked_bodies),
        ("http.short_body", _short_bodies),
        ("http.encoding", _encodings),
        ("http.path", _paths),
        ("http.target", _targets),
        ("http.timeout", _timeouts),
        ("http.odd", _odd),
        ("http.internal", _internal_over_http),
        ("http.junk", _junk),
    ):
        for index, sent in enumerate(make(rng)):
            parts = sent.data if isinstance(sent.data, tuple) else (sent.data,)
            cases.append(HttpCase(category, index, parts, sent.end, sent.expect, sent.head))
    return cases
