"""Request bodies and their Content-Encoding: decoded by the gateway itself, strictly, and within -max-payload.

The decoding functions run on real zlib streams; the rest goes through a daemon's gateway on a real port.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import aiohttp
import brotli
import pytest
import pytest_asyncio

from msgscript.http.body import MAX_CODINGS, BadBody, BodyTooLarge, UnsupportedCoding, content_codings, decode_body
from tests.conftest import gateway_daemon

in_module_loop = pytest.mark.asyncio(loop_scope="module")
"""For the tests that share the module's daemon (the `gateway` fixture)."""

LIMIT_BYTES = 64 * 1024
"""The -max-payload of this module's daemon."""
HELLO = "/funcs.hello"
DATA = b"John, " + bytes(range(256)) * 4


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def zeros_in_gzip(size_bytes: int) -> bytes:
    """`size_bytes` zero bytes in a gzip stream, compressed a block at a time (a small body, a big output)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(size_bytes // len(block))]
    return b"".join(parts) + packer.flush()


# --- The codings, on real streams ---------------------------------------------------------------------


def test_codings_are_listed_in_the_order_applied_without_identity() -> None:
    assert content_codings(["GZip, identity,, deflate", "x-gzip"]) == ["gzip", "deflate", "x-gzip"]
    assert content_codings(["identity"]) == []


@pytest.mark.parametrize("value", ["zstd", "compress", "bogus", "gzip;q=1", "gzip, br2"])
def test_a_coding_the_daemon_does_not_know_is_unsupported(value: str) -> None:
    with pytest.raises(UnsupportedCoding) as caught:
        content_codings([value])
    assert caught.value.status == 415


def test_more_codings_than_the_bound_are_unsupported() -> None:
    assert content_codings([", ".join(["gzip"] * MAX_CODINGS)]) == ["gzip"] * MAX_CODINGS
    with pytest.raises(UnsupportedCoding, match=f"more than {MAX_CODINGS} content codings"):
        content_codings([", ".join(["gzip"] * (MAX_CODINGS + 1))])


def test_stacked_codings_are_undone_last_applied_first() -> None:
    sent = zlib.compress(gzip.compress(DATA))
    assert decode_body(sent, ["gzip", "deflate"], LIMIT_BYTES) == DATA
    with pytest.raises(BadBody):
        decode_body(sent, ["deflate", "gzip"], LIMIT_BYTES)


def test_a_gzip_bomb_is_stopped_at_the_limit_without_inflating_it() -> None:
    limit_bytes = 1 << 20
    bomb = zeros_in_gzip(64 << 20)
    assert len(bomb) < limit_bytes // 4
    for codings, body in ((["gzip"], bomb), (["gzip", "gzip"], gzip.compress(bomb))):
        tracemalloc.start()
        try:
            with pytest.raises(BodyTooLarge):
                decode_body(body, codings, limit_bytes)
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The whole output would be 64 MiB; the decoder never holds much more than the limit.
        assert peak_bytes < 4 * limit_bytes, (codings, peak_bytes)


def test_each_decoding_step_is_bounded() -> None:
    exactly = bytes(LIMIT_BYTES)
    assert decode_body(gzip.compress(exactly), ["gzip"], LIMIT_BYTES) == exactly
    with pytest.raises(BodyTooLarge):
        decode_body(gzip.compress(exactly + b"!"), ["gzip"], LIMIT_BYTES)
    # Two members together past the limit, each below it.
    half = bytes(LIMIT_BYTES // 2 + 1)
    with pytest.raises(BodyTooLarge):
        decode_body(gzip.compress(half) + gzip.compress(half), ["gzip"], LIMIT_BYTES)


# --- Through the gateway --------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A daemon with -max-payload LIMIT_BYTES; yields its base URL."""
    async with gateway_daemon(tmp_path_factory.mktemp("body"), max_payload_bytes=LIMIT_BYTES) as port:
        yield f"http://127.0.0.1:{port}"


async def post(url: str, body: bytes, *encodings: str) -> tuple[int, bytes, dict[str, str]]:
    """POST `body` as sent (aiohttp does not compress it), with one Content-Encoding header per `encodings`."""
    headers = [("Content-Encoding", value) for value in encodings]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        async with client.post(url + HELLO, data=body, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def hello_payload(body: bytes) -> bytes:
    (result,) = json.loads(body)
    return base64.b64decode(result["payload"])


def multi_member(data: bytes) -> bytes:
    return gzip.compress(data[:100]) + gzip.compress(data[100:])


DECODED = {
    "gzip": (gzip.compress(DATA), ("gzip",)),
    "x-gzip": (gzip.compress(DATA), ("x-gzip",)),
    "gzip in capitals": (gzip.compress(DATA), ("GZIP",)),
    "gzip of several members": (multi_member(DATA), ("gzip",)),
    "deflate, zlib-wrapped": (zlib.compress(DATA), ("deflate",)),
    "deflate, raw": (raw_deflate(DATA), ("deflate",)),
    "identity": (DATA, ("identity",)),
    "gzip twice": (gzip.compress(gzip.compress(DATA)), ("gzip, gzip",)),
    "gzip then deflate": (zlib.compress(gzip.compress(DATA)), ("gzip, deflate",)),
    "gzip then deflate, in two headers": (zlib.compress(gzip.compress(DATA)), ("gzip", "deflate")),
}


@in_module_loop
@pytest.mark.parametrize(("body", "encodings"), DECODED.values(), ids=DECODED.keys())
async def test_the_script_gets_the_body_decoded(gateway: str, body: bytes, encodings: tuple[str, ...]) -> None:
    status, answer, _ = await post(gateway, body, *encodings)
    assert status == 200, answer
    assert hello_payload(answer) == b"Processed subject: funcs.hello with payload: " + DATA


def crc_broken(packed: bytes) -> bytes:
    broken = bytearray(packed)
    broken[-5] ^= 0xFF
    return bytes(broken)


PACKED = gzip.compress(DATA * 4)
UNDECODABLE = {
    "gzip, a bare header": (PACKED[:10], "gzip", "the gzip stream is cut short"),
    "gzip, cut inside the data": (PACKED[: len(PACKED) // 2], "gzip", "the gzip stream is cut short"),
    "gzip, without its trailer": (PACKED[:-8], "gzip", "the gzip stream is cut short"),
    "gzip, a wrong CRC": (crc_broken(PACKED), "gzip", "the gzip data does not decode"),
    "gzip, trailing data": (PACKED + b"more", "gzip", "data after the end of the gzip stream"),
    "gzip, an empty body": (b"", "gzip", "an empty body is no gzip stream"),
    "gzip, not gzip": (b"plain text", "gzip", "the gzip data does not decode"),
    "deflate, cut short": (zlib.compress(DATA)[:-6], "deflate", "the deflate stream is cut short"),
    "deflate, trailing data": (zlib.compress(DATA) + b"x", "deflate", "data after the end of the deflate stream"),
    "the inner coding broken": (zlib.compress(PACKED[:-8]), "gzip, deflate", "the gzip stream is cut short"),
}


@in_module_loop
@pytest.mark.parametrize(("body", "encoding", "reason"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_a_body_that_does_not_decode_is_400_and_one_info_line(
    gateway: str, caplog: pytest.LogCaptureFixture, body: bytes, encoding: str, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, answer, headers = await post(gateway, body, encoding)
    assert status == 400
    assert answer.startswith(f"Error: bad request body: {reason}".encode()), answer
    assert headers["Connection"] == "close"
    records = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("msgscript")]
    assert [r.levelno for r in records] == [logging.INFO], [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in caplog.records)


UNKNOWN = ["zstd", "compress", "bogus", "gzip;q=1"]


@in_module_loop
@pytest.mark.parametrize("encoding", UNKNOWN)
async def test_a_coding_the_daemon_does_not_know_is_415_with_a_plain_message(gateway: str, encoding: str) -> None:
    status, answer, headers = await post(gateway, b"as sent", encoding)
    assert status == 415
    assert answer == f"Error: bad request body: unsupported Content-Encoding {encoding!r}".encode()
    assert headers["Accept-Encoding"] == "gzip, deflate, br"
    # A client is not told how to set up the server.
    assert b"install" not in answer.lower()


@in_module_loop
async def test_too_many_stacked_codings_are_415(gateway: str) -> None:
    body = DATA
    for _ in range(MAX_CODINGS + 1):
        body = gzip.compress(body)
    status, answer, _ = await post(gateway, body, ", ".join(["gzip"] * (MAX_CODINGS + 1)))
    assert (status, answer) == (415, f"Error: bad request body: more than {MAX_CODINGS} content codings".encode())


@in_module_loop
async def test_a_small_body_that_inflates_past_the_limit_is_413(gateway: str) -> None:
    for body, encoding in ((zeros_in_gzip(8 << 20), "gzip"), (gzip.compress(zeros_in_gzip(8 << 20)), "gzip, gzip")):
        assert len(body) < LIMIT_BYTES
        status, answer, _ = await post(gateway, body, encoding)
        assert (status, answer) == (413, f"Error: request body larger than {LIMIT_BYTES} bytes".encode())
    # Decoded to exactly the limit is fine.
    status, _, _ = await post(gateway, gzip.compress(b"x" * LIMIT_BYTES), "gzip")
    assert status == 200


@in_module_loop
async def test_the_body_as_sent_is_bounded_too(gateway: str) -> None:
    status, answer, _ = await post(gateway, b"x" * (LIMIT_BYTES + 1), "identity")
    assert (status, answer) == (413, f"Error: request body larger than {LIMIT_BYTES} bytes".encode())


@in_module_loop
async def test_br_is_decoded(gateway: str) -> None:
    status, answer, _ = await post(gateway, brotli.compress(DATA), "br")
    assert status == 200, answer
    assert hello_payload(answer) == b"Processed subject: funcs.hello with payload: " + DATA
    status, answer, _ = await post(gateway, brotli.compress(DATA)[:-2], "br")
    assert (status, answer) == (400, b"Error: bad request body: the br stream is cut short")
    status, _, _ = await post(gateway, brotli.compress(bytes(8 << 20)), "br")
    assert status == 413
