"""The `http` Lua module: HTTP requests with gluahttp's API (the Go msgscript's `http`).

`http.get post put patch delete head (url [, opts])` and `http.request(method, url [, opts])` return a
response table (`status_code body body_size headers cookies url`) or `nil, error`; `request_batch`
sends several requests at once and returns the responses, plus a table of errors (same indices) when
any failed. Options: `query` (raw query string), `headers`, `cookies`, `body`, `form` (a urlencoded body
used without `body`), `timeout` (seconds, or a Go duration such as "500ms") and `auth = {user=, pass=}`.

Requests go through the daemon's shared aiohttp session on its event loop; each is bounded by its
timeout and by the script's deadline. Redirects are followed as Go's HTTP client follows them (at most
ten; 301/302/303 turn into GET without a body; credentials and cookies are not sent to another host).
Nothing a server sets is remembered: like Go's default client there is no cookie jar, so one
execution's cookies never reach another's requests. Errors read like Go's
(`Get "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from msgscript._gohttp import DEADLINE_EXCEEDED, canonical_header_key, is_token
from msgscript.durations import parse_duration
from msgscript.errors import MsgscriptError
from msgscript.lua.args import check_table, is_number, is_table
from msgscript.lua.contract import ModuleContext
from msgscript.lua.execution import NOT_ENOUGH_MEMORY
from msgscript.lua.modules.support import LoopCharges, raw_getter
from msgscript.lua.numbers import lua_number_text
from msgscript.lua.runtime import error_text

MAX_REDIRECTS = 10
"""Go's default: the tenth redirect response is an error."""
AUTH_ERROR = "auth table must contain no nil user and pass fields"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SENSITIVE = ("Authorization", "Www-Authenticate", "Cookie", "Cookie2")
_DECOMPRESSED = frozenset({"gzip", "deflate", "br", "zstd"})
BATCH_CONCURRENCY = 16
"""Requests of one request_batch in flight at once: the daemon's connection pool serves every execution."""
_CHUNK_BYTES = 64 * 1024
"""Response bodies are read, and charged to the script's memory cap, this much at a time."""
_FIELD_BYTES = 64
"""Charged per header or cookie a request sends, besides its text."""
_REDIRECT_BODY_BYTES = 2048

Charge = Callable[[int], None]
RawGet = Callable[[Any, object], Any]


def _no_charge(nbytes: int) -> None:
    pass


class RequestError(MsgscriptError):
    """Raised when a request of the `http` module cannot be made or followed; the text is the script's error."""


@dataclass(frozen=True, slots=True)
class _Request:
    """One request, read from the script's arguments on the Lua thread (Lua values never leave it)."""

    method: str
    url: str
    query: bytes | None
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout_s: float | None
    error: str | None = None
    """A problem found in the arguments: returned without sending anything."""


def _text(value: object) -> bytes | None:
    """A Lua value as gopher-lua's String() gives it for strings, numbers and booleans; None otherwise."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int | float):
        return lua_number_text(value).encode()
    return None


def _header_text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _cookie_value(value: bytes) -> str:
    """Go's sanitizeCookieValue: drop bytes a cookie value may not hold, quote values with spaces or commas."""
    kept = bytes(b for b in value if 0x20 <= b < 0x7F and b not in b'";\\').decode("ascii")
    if " " in kept or "," in kept:
        return f'"{kept}"'
    return kept


def read_request(method: object, url: object, options: object, rawget: RawGet, charge: Charge) -> _Request:
    """Read a request's method, URL and options from Lua values, as gluahttp reads them (options with
    RawGet: no metamethod of the script's runs), charging what the request holds to the memory cap."""
    method_text = (_text(method) or b"").decode("utf-8", "replace").upper() or "GET"
    url_text = (_text(url) or b"").decode("utf-8", "surrogateescape")
    charge(len(method_text) + len(url_text))
    opts = options if is_table(options) else None

    def _field(table: Any, name: bytes) -> Any:
        return rawget(table, name) if table is not None else None

    headers = CIMultiDict[str]()
    error: str | None = None
    if not is_token(method_text):
        error = f"net/http: invalid method {_go_quote(method_text)}"

    cookies = _field(opts, b"cookies")
    if is_table(cookies):
        pairs = []
        for key, value in cookies.items():
            name, text = _text(key), _text(value)
            if name is not None and text is not None:
                charge(len(name) + len(text) + _FIELD_BYTES)
                cookie_name = name.decode("utf-8", "replace").replace("\n", "-").replace("\r", "-")
                pairs.append(f"{cookie_name}={_cookie_value(text)}")
        if pairs:
            headers["Cookie"] = "; ".join(pairs)

    query = _field(opts, b"query")
    if isinstance(query, bytes):
        charge(len(query))
    body = _field(opts, b"body")
    if not isinstance(body, bytes):
        body = _field(opts, b"form")
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = None
    if body is not None:
        charge(len(body))

    timeout_s: float | None = None
    timeout = _field(opts, b"timeout")
    if is_number(timeout):
        timeout_s = float(timeout)
    elif isinstance(timeout, bytes):
        try:
            timeout_s = parse_duration(timeout.decode("utf-8", "surrogateescape"))
        except ValueError as exc:
            error = error or str(exc)

    auth = _field(opts, b"auth")
    if error is None and is_table(auth):
        user, password = rawget(auth, b"user"), rawget(auth, b"pass")
        user_text, pass_text = _text(user), _text(password)
        if user is False or password is False or user_text is None or pass_text is None:
            error = AUTH_ERROR
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(user_text + b":" + pass_text).decode("ascii")

    extra = _field(opts, b"headers")
    if is_table(extra):
        for key, value in extra.items():
            name, text = _text(key), _text(value)
            if name is not None and text is not None:
                charge(len(name) + len(text) + _FIELD_BYTES)
                headers[canonical_header_key(_header_text(name))] = _header_text(text)

    return _Request(
        method=method_text,
        url=url_text,
        query=query if isinstance(query, bytes) else None,
        headers=tuple(headers.items()),
        body=body,
        timeout_s=timeout_s,
        error=error,
    )


def _go_quote(text: str) -> str:
    """Quote like Go's %q for the URLs in error messages."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F or "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) & 0xFF:02x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _operation(method: str) -> str:
    """Go's url.Error operation: the method with only its first letter upper-case (`Get`, `Post`)."""
    return method[:1] + method[1:].lower()


def _shown(url: URL) -> str:
    """A URL as error messages show it (Go replaces a password by ***)."""
    return str(url.with_password("***")) if url.password is not None else str(url)


def _parse_url(request: _Request) -> URL:
    """The request's URL with its `query` option applied; RequestError with Go's wording if unusable."""
    text = request.url
    op = _operation(request.method)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise RequestError(f"parse {_go_quote(text)}: net/url: invalid control character in URL")
    if text.startswith(":"):
        raise RequestError(f"parse {_go_quote(text)}: missing protocol scheme")
    scheme = _SCHEME.match(text)
    if scheme is None or scheme.group(1).lower() not in ("http", "https"):
        name = scheme.group(1).lower() if scheme else ""
        raise RequestError(f"{op} {_go_quote(text)}: unsupported protocol scheme {_go_quote(name)}")
    try:
        url = URL(text)
        url.port  # noqa: B018 - an invalid port only shows when asked for
    except ValueError as exc:
        raise RequestError(f"parse {_go_quote(text)}: {exc}") from None
    if not url.host:
        raise RequestError(f"{op} {_go_quote(text)}: http: no Host in request URL")
    if request.query is not None:
        base = str(url.with_query(None).with_fragment(None))
        query = request.query.decode("utf-8", "surrogateescape")
        url = URL(base + "?" + query if query else base, encoded=True)
    return url


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    """A connection failure in Go's words."""
    host = exc.host
    os_error = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(os_error, socket.gaierror):
        return f"dial tcp: lookup {host}: no such host"
    address = f"[{host}]:{exc.port}" if ":" in host else f"{host}:{exc.port}"
    reason = os.strerror(os_error.errno) if os_error.errno else str(os_error)
    return f"dial tcp {address}: connect: {reason[:1].lower() + reason[1:]}"


def _response_cookies(values: list[str]) -> dict[str, str]:
    """Name → value of the Set-Cookie headers, as Go's Response.Cookies reads them (the last one wins)."""
    cookies: dict[str, str] = {}
    for header in values:
        pair = header.split(";", 1)[0].strip()
        name, equals, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not is_token(name):
            continue
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if any(not (0x20 <= ord(c) < 0x7F) or c in '";\\' for c in value):
            continue
        cookies[name] = value
    return cookies


def _response_headers(resp: aiohttp.ClientResponse, decompressed: bool) -> dict[str, str]:
    """The first value of each header, under Go's canonical name.

    When the body was decompressed for the script, its encoding and length headers no longer describe
    it: Go's client drops them then, and so do we.
    """
    headers: dict[str, str] = {}
    for key, value in resp.headers.items():
        headers.setdefault(canonical_header_key(key), value)
    if decompressed and headers.get("Content-Encoding", "").lower() in _DECOMPRESSED:
        headers.pop("Content-Encoding", None)
        headers.pop("Content-Length", None)
    return headers


def _same_site(initial: URL, target: URL) -> bool:
    """Whether credentials and cookies may follow a redirect: the same host or one of its subdomains."""
    first, then = (initial.host or "").lower(), (target.host or "").lower()
    return then == first or then.endswith("." + first)


@contextlib.asynccontextmanager
async def _session(shared: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon's shared session (it keeps no cookies, like Go's default client), or one of our own."""
    if shared is not None:
        yield shared
        return
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None), trust_env=False
    ) as session:
        yield session


async def _read_body(resp: aiohttp.ClientResponse, charge: Charge) -> bytes:
    """The whole body, read a chunk at a time, each charged before the next is read: a body past the memory
    cap stops the read (the connection is then closed, not reused)."""
    chunks: list[bytes] = []
    async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
        charge(len(chunk))
        chunks.append(chunk)
    # The joined copy is the value returned to the script, which the call's accounting counts.
    return b"".join(chunks)


async def _send(session: aiohttp.ClientSession, request: _Request, url: URL, charge: Charge) -> dict[str, object]:
    """Send the request, following redirects, and read the final response."""
    method = request.method
    body = request.body
    headers = CIMultiDict(request.headers)
    if url.user is not None:
        if "Authorization" not in headers:
            credentials = f"{url.user}:{url.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        url = url.with_user(None)
    decompress = "Accept-Encoding" not in headers
    initial, redirects = url, 0
    while True:
        async with session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",),
            auto_decompress=decompress,
        ) as resp:
            location = resp.headers.get("Location", "")
            if resp.status not in _REDIRECTS or not location:
                content = await _read_body(resp, charge)
                return {
                    "status_code": resp.status,
                    "body": content,
                    "body_size": len(content),
                    "headers": _response_headers(resp, decompress),
                    "cookies": _response_cookies(resp.headers.getall("Set-Cookie", [])),
                    "url": str(url),
                }
            # A redirect's body is dropped. As Go does, a small one is read so that the connection can serve
            # the next request; leaving a bigger one unread closes the connection instead.
            if resp.content_length is not None and resp.content_length <= _REDIRECT_BODY_BYTES:
                charge(resp.content_length)
                await resp.read()
            status = resp.status
        redirects += 1
        if redirects >= MAX_REDIRECTS:
            raise RequestError(
                f"{_operation(request.method)} {_go_quote(location)}: stopped after {MAX_REDIRECTS} redirects"
            )
        try:
            target = url.join(URL(location))
        except ValueError as exc:
            raise RequestError(f"failed to parse Location header {_go_quote(location)}: {exc}") from None
        if status in (301, 302, 303):
            if method not in ("GET", "HEAD"):
                method = "GET"
            if body is not None:
                body = None
                headers.popall("Content-Type", None)
        if not _same_site(initial, target):
            for name in _SENSITIVE:
                headers.popall(name, None)
        headers.popall("Referer", None)
        if not (url.scheme == "https" and target.scheme == "http"):
            headers["Referer"] = str(url.with_user(None).with_fragment(None))
        url = target


async def perform(
    shared: aiohttp.ClientSession | None, request: _Request, limit_s: float, charge: Charge = _no_charge
) -> dict[str, object] | str:
    """Run one request within limit_s seconds: the response as a dict, or the error text.

    Raises:
        MemoryError: `charge` refused a piece of the response body.
    """
    if request.error is not None:
        return request.error
    try:
        url = _parse_url(request)
    except RequestError as exc:
        return str(exc)
    op = _operation(request.method)
    if limit_s <= 0:
        return f"{op} {_go_quote(_shown(url))}: {DEADLINE_EXCEEDED}"
    try:
        async with asyncio.timeout(limit_s), _session(shared) as session:
            return await _send(session, request, url, charge)
    except RequestError as exc:
        return str(exc)
    except TimeoutError:
        reason = DEADLINE_EXCEEDED
    except aiohttp.ClientConnectorError as exc:
        reason = _connect_error(exc)
    except aiohttp.ServerDisconnectedError:
        reason = "EOF"
    except (aiohttp.ClientError, ValueError) as exc:
        reason = error_text(exc)
    return f"{op} {_go_quote(_shown(url))}: {reason}"


class HttpModule:
    """Builds the `http` table for one execution, bound to its deadline."""

    name = "http"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return the request functions."""
        shared = None if ctx.services is None else ctx.services.http

        def limit(request: _Request) -> float:
            remaining = ctx.remaining_s()
            return remaining if request.timeout_s is None else min(request.timeout_s, remaining)

        rawget = raw_getter(lua)

        def run(request: _Request) -> tuple[object, ...]:
            try:
                with LoopCharges(ctx) as charge:
                    outcome = ctx.call(perform(shared, request, limit(request), charge))
            except TimeoutError:
                return (None, f"{_operation(request.method)} {_go_quote(request.url)}: {DEADLINE_EXCEEDED}")
            if isinstance(outcome, str):
                return (None, outcome)
            return (outcome,)

        def verb(method: str) -> Any:
            def call(url: object = None, options: object = None, *_: object) -> tuple[object, ...]:
                return run(read_request(method.encode(), url, options, rawget, ctx.charge))

            return call

        def request(method: object = None, url: object = None, options: object = None, *_: object) -> Any:
            return run(read_request(method, url, options, rawget, ctx.charge))

        def request_batch(requests: Any = None, *_: object) -> tuple[object, ...]:
            check_table(requests, 1, "request_batch")
            batch: list[_Request] = []
            for index in range(1, len(requests) + 1):
                entry = rawget(requests, index)
                if is_table(entry):
                    method, url, options = rawget(entry, 1), rawget(entry, 2), rawget(entry, 3)
                    batch.append(read_request(method, url, options, rawget, ctx.charge))
                else:
                    ctx.charge(_FIELD_BYTES)
                    batch.append(_Request("GET", "", None, (), None, None, error="Request must be a table"))
            try:
                with LoopCharges(ctx) as charge:
                    outcomes = ctx.call(_gather(shared, batch, [limit(r) for r in batch], charge))
            except TimeoutError:
                outcomes = [f"{_operation(r.method)} {_go_quote(r.url)}: {DEADLINE_EXCEEDED}" for r in batch]
            responses: dict[int, object] = {}
            errors: dict[int, object] = {}
            for index, outcome in enumerate(outcomes, start=1):
                if isinstance(outcome, str):
                    errors[index] = outcome
                else:
                    responses[index] = outcome
            if errors:
                return (responses, errors)
            return (responses,)

        functions: dict[str, object] = {
            name: verb(name.upper()) for name in ("get", "post", "put", "patch", "delete", "head")
        }
        functions["request"] = request
        functions["request_batch"] = request_batch
        return functions


async def _gather(
    shared: aiohttp.ClientSession | None, batch: list[_Request], limits: list[float], charge: Charge
) -> list[dict[str, object] | str]:
    """Run a batch's requests concurrently, at most BATCH_CONCURRENCY at a time (the connection pool is shared
    with every other execution).

    Raises:
        MemoryError: the responses passed the memory cap (the other requests are cancelled).
    """
    slots = asyncio.Semaphore(BATCH_CONCURRENCY)

    async def one(request: _Request, limit_s: float, started: float) -> dict[str, object] | str:
        async with slots:
            # The request's own timeout counts from the batch's start, as if all were sent at once.
            left = limit_s - (asyncio.get_running_loop().time() - started)
            return await perform(shared, request, left, charge)

    start = asyncio.get_running_loop().time()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(one(request, limit_s, start), name=f"msgscript:http:{request.url}")
                for request, limit_s in zip(batch, limits, strict=True)
            ]
    except BaseExceptionGroup as failures:
        if failures.subgroup(MemoryError) is not None:
            raise MemoryError(NOT_ENOUGH_MEMORY) from None
        raise
    return [task.result() for task in tasks]


module = HttpModule()
