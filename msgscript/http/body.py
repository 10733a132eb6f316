"""Request bodies: read whole, bounded by `-max-payload`, and decoded from their Content-Encoding.

The connections do not decode bodies (GatewayRunner turns aiohttp's decoding off): aiohttp decodes only the
first coding listed, passes `x-gzip` on undecoded and accepts a gzip stream that stops short. Here every
listed coding is decoded, last applied first; each stream must end properly with nothing after it, and no
decoding step may produce more than the limit (the decoder is told to stop there, so a small body that
inflates to gigabytes costs no more than the limit).
"""

from __future__ import annotations

import asyncio
import importlib
import zlib
from collections.abc import Callable
from types import ModuleType

from aiohttp import hdrs, web
from aiohttp.http import HttpProcessingError

from msgscript.errors import MsgscriptError
from msgscript.http.protocol import BodyReadTimeout, first_line

_PLAIN_UTF8 = "text/plain; charset=utf-8"
MAX_CODINGS = 4
"""The most content codings one body may carry (identity aside); real clients send one."""


class BodyError(MsgscriptError):
    """Raised when a request body cannot be read; `status` is the HTTP status that answers it."""

    status = 400


class BodyTooLarge(BodyError):
    """Raised when a request body, as sent or after a decoding step, is larger than the gateway accepts."""

    status = 413

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"request body larger than {limit_bytes} bytes")


class BadBody(BodyError):
    """Raised when a request body is malformed: broken chunked framing, or a coding that does not decode."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad request body: {reason}")


class BodyTimedOut(BodyError):
    """Raised when a request body did not arrive within the body read timeout."""

    status = 408


class UnsupportedCoding(BadBody):
    """Raised when a request body carries a Content-Encoding the daemon cannot decode."""

    status = 415

    def __init__(self, coding: str, reason: str = "") -> None:
        self.coding = coding
        super().__init__(reason or f"unsupported Content-Encoding {coding!r}")


def _load_brotli() -> ModuleType | None:
    """The `brotli` module when it can decode with a bound on its output (Brotli 1.2 and later), else None."""
    try:
        module = importlib.import_module("brotli")
    except ImportError:
        return None
    return module if hasattr(module.Decompressor, "can_accept_more_data") else None


_BROTLI = _load_brotli()


def _gzip(data: bytes, limit_bytes: int) -> bytes:
    """A gzip stream: one member or several in a row (RFC 1952 §2.2), and nothing else."""
    out = b""
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += _inflate(inflater, data, limit_bytes - len(out), "gzip")
        data = inflater.unused_data
        if not data:
            return out
        if not data.startswith(b"\x1f\x8b"):
            raise BadBody("data after the end of the gzip stream")


def _is_zlib_header(data: bytes) -> bool:
    """True when `data` starts with a zlib header (RFC 1950 §2.2): deflate method, and the check bits right."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0


def _deflate(data: bytes, limit_bytes: int) -> bytes:
    """A `deflate` stream: zlib-wrapped as RFC 9110 says, or raw deflate as many clients send it."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS if _is_zlib_header(data) else -zlib.MAX_WBITS)
    out = _inflate(inflater, data, limit_bytes, "deflate")
    if inflater.unused_data:
        raise BadBody("data after the end of the deflate stream")
    return out


def _inflate(inflater: zlib._Decompress, data: bytes, limit_bytes: int, coding: str) -> bytes:
    """Run `inflater` over `data` until its stream ends, stopping one byte past `limit_bytes` of output."""
    try:
        out = inflater.decompress(data, limit_bytes + 1)
    except zlib.error as exc:
        raise BadBody(f"the {coding} data does not decode ({exc})") from None
    if len(out) > limit_bytes:
        raise BodyTooLarge(limit_bytes)
    # Below the output bound, the inflater used up its input: a stream that has not ended is cut short.
    if not inflater.eof:
        raise BadBody(f"the {coding} stream is cut short" if data else f"an empty body is no {coding} stream")
    return out


def _brotli(data: bytes, limit_bytes: int) -> bytes:
    """A `br` stream, with the brotli module's own bound on its output."""
    assert _BROTLI is not None
    decompressor = _BROTLI.Decompressor()
    try:
        # The output buffer stops growing past the bound (give or take one block); trailing data is an error.
        out: bytes = decompressor.process(data, limit_bytes + 1)
    except _BROTLI.error:
        raise BadBody("the br data does not decode") from None
    if len(out) > limit_bytes:
        raise BodyTooLarge(limit_bytes)
    if not decompressor.is_finished():
        raise BadBody("the br stream is cut short" if data else "an empty body is no br stream")
    return out


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate}
if _BROTLI is not None:
    _DECODERS["br"] = _brotli
ACCEPT_ENCODING = ", ".join(coding for coding in _DECODERS if coding != "x-gzip")
"""The codings a body may carry, for the `Accept-Encoding` of a 415."""


def content_codings(values: list[str]) -> list[str]:
    """The codings the Content-Encoding header values list, in the order applied, `identity` left out.

    Raises:
        UnsupportedCoding: a coding the daemon cannot decode, or more than MAX_CODINGS of them.
    """
    codings = []
    for value in values:
        for item in value.split(","):
            coding = item.strip().lower()
            if not coding or coding == "identity":
                continue
            if coding not in _DECODERS:
                raise UnsupportedCoding(coding)
            codings.append(coding)
    if len(codings) > MAX_CODINGS:
        raise UnsupportedCoding(codings[0], f"more than {MAX_CODINGS} content codings")
    return codings


def decode_body(data: bytes, codings: list[str], limit_bytes: int) -> bytes:
    """`data` with `codings` undone, the last applied first; no step may produce more than `limit_bytes`.

    Raises:
        BadBody: a stream does not decode, stops short or has data after its end.
        BodyTooLarge: a decoding step produced more than `limit_bytes`.
    """
    for coding in reversed(codings):
        data = _DECODERS[coding](data, limit_bytes)
    return data


def _payload_error_text(exc: web.RequestPayloadError) -> str:
    """What was wrong with a body, in one line (aiohttp chains the parser's error as the cause)."""
    cause = exc.__cause__
    if isinstance(cause, HttpProcessingError) and cause.message:
        return first_line(cause.message)
    return first_line(str(exc))


async def read_body(request: web.BaseRequest, limit_bytes: int) -> bytes:
    """The whole request body, decoded from its Content-Encoding (the connection must not decode it: GatewayRunner).

    The body is read once, here: `request.read()` gives nothing afterwards when it had arrived whole.

    Raises:
        BodyTooLarge: the body, as sent or after a decoding step, is longer than `limit_bytes`.
        UnsupportedCoding: the body carries a coding the daemon cannot decode.
        BadBody: the body's framing or coding is broken.
        BodyTimedOut: the body did not arrive within the connection's body read timeout.
    """
    length = request.content_length
    if length is not None and length > limit_bytes:
        raise BodyTooLarge(limit_bytes)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    codings = content_codings(request.headers.getall(hdrs.CONTENT_ENCODING)) if encoding is not None else []
    content = request.content
    try:
        # A body that has arrived whole (most do, with their headers) is taken without waiting on the stream.
        body = content.read_nowait() if content.is_eof() else await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(limit_bytes) from None
    except BodyReadTimeout as exc:
        raise BodyTimedOut(str(exc)) from exc
    except web.RequestPayloadError as exc:
        raise BadBody(_payload_error_text(exc)) from exc
    if len(body) > limit_bytes:
        raise BodyTooLarge(limit_bytes)
    if not codings:
        return body
    # Decoding up to the limit is CPU work of its own (zlib lets go of the GIL): it runs off the event loop.
    return await asyncio.to_thread(decode_body, body, codings, limit_bytes)


def body_error_response(exc: BodyError) -> web.Response:
    """The answer to a body that could not be read; after a broken, late or unread body the connection closes."""
    response = web.Response(
        status=exc.status, body=f"Error: {exc}".encode("utf-8", "replace"), headers={"Content-Type": _PLAIN_UTF8}
    )
    if isinstance(exc, UnsupportedCoding):
        # RFC 9110 §15.5.16: say which codings would have been accepted.
        response.headers[hdrs.ACCEPT_ENCODING] = ACCEPT_ENCODING
    if not isinstance(exc, BodyTooLarge):
        response.force_close()
    return response
