"""Wire formats shared with the Go msgscript: the Message envelope, ScriptResult and Reply.

These values are made for every message, so they are slotted dataclasses without `frozen`: a frozen one is
built with a call per field, which was a fifth of the daemon's own work on a hello. They are never changed
once made; a changed copy is made with `dataclasses.replace`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from msgscript import _gojson
from msgscript._gojson import go_string as go_string  # re-exported: part of this module's API

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _go_bytes(value: bytes | None) -> str:
    return "null" if value is None else '"' + base64.b64encode(value).decode("ascii") + '"'


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(slots=True)
class Message:
    """One request to run the scripts of a subject, from NATS or from the HTTP gateway."""

    subject: str
    payload: bytes
    method: str = ""
    url: str = ""
    is_async: bool = False
    raw: bool = False
    executor: str = ""
    delivery: Delivery | None = None
    """Where the message stands in its JetStream stream, for durable scripts only."""

    def to_json(self) -> bytes:
        """Encode as the Go Message envelope (what the Go HTTP gateway sends over NATS)."""
        return (
            f'{{"async":{_go_bool(self.is_async)},"executor":{go_string(self.executor)},'
            f'"method":{go_string(self.method)},"payload":{_go_bytes(self.payload)},'
            f'"raw":{_go_bool(self.raw)},"subject":{go_string(self.subject)},"url":{go_string(self.url)}}}'
        ).encode()


MSG_ID_HEADER = "Nats-Msg-Id"
"""The header of a JetStream message's id: a stream stores a message only once per id (within its window)."""


@dataclass(slots=True)
class Delivery:
    """A durable message's place in its stream: the third argument of a durable script's `OnMessage`."""

    id: str
    """The publisher's `Nats-Msg-Id`, else the stream sequence as text: the key for idempotent effects."""
    sequence: int
    delivery: int
    """1 for the first delivery, 2 for the first redelivery, …"""
    stream: str

    def to_lua(self) -> dict[bytes, object]:
        """The fields as the Lua table's keys and values (bytes for strings, as the sandbox's runtime wants)."""
        return {
            b"id": self.id.encode("utf-8", "surrogateescape"),
            b"sequence": self.sequence,
            b"delivery": self.delivery,
            b"stream": self.stream.encode(),
        }


_MESSAGE_FIELDS: dict[str, type] = {
    "async": bool,
    "executor": str,
    "method": str,
    "payload": str,
    "raw": bool,
    "subject": str,
    "url": str,
}


def decode_message(subject: str, data: bytes) -> Message:
    """Turn NATS message data into a Message, with the Go server's rules.

    Data that is not a JSON object of the envelope's shape is a raw payload. An envelope without
    a payload (or with a null one) passes the data through as the payload. An envelope with a
    payload is used as it is, its `subject` included (it overrides the NATS subject).
    """
    raw = Message(subject=subject, payload=data, raw=True)
    # Only an object or `null` can decode into the envelope; skip parsing anything else.
    if data.lstrip(b" \t\r\n")[:1] not in (b"{", b"n"):
        return raw
    try:
        doc = _gojson.loads(data)
    except ValueError:
        return raw
    if doc is None:
        return Message(subject=subject, payload=data)
    if not isinstance(doc, dict):
        return raw
    found = _gojson.fields(doc, _MESSAGE_FIELDS)
    for key, value in found.items():
        if value is not None and not isinstance(value, _MESSAGE_FIELDS[key]):
            return raw
    encoded = found.get("payload")
    if encoded is None:
        return Message(subject=subject, payload=data)
    try:
        payload = _gojson.b64decode(encoded)
    except (binascii.Error, ValueError):
        return raw
    return Message(
        subject=_gojson.clean(found.get("subject") or ""),
        payload=payload,
        method=_gojson.clean(found.get("method") or ""),
        url=_gojson.clean(found.get("url") or ""),
        is_async=bool(found.get("async")),
        raw=bool(found.get("raw")),
        executor=_gojson.clean(found.get("executor") or ""),
    )


@dataclass(slots=True)
class Result:
    """The outcome of one script (Go's ScriptResult)."""

    http_code: int = 0
    error: str = ""
    http_headers: Mapping[str, str] | None = None
    is_html: bool = False
    payload: bytes | None = None

    @classmethod
    def failure(cls, error: str) -> Result:
        """A result that carries only an error text."""
        return cls(error=error)

    def to_json(self) -> str:
        """Encode with Go's field order, sorted header keys and base64 payload."""
        if self.http_headers is None:
            headers = "null"
        else:
            headers = (
                "{" + ",".join(f"{go_string(k)}:{go_string(v)}" for k, v in sorted(self.http_headers.items())) + "}"
            )
        # The common result (no error, a payload) is written without a call per field.
        error = go_string(self.error) if self.error else '""'
        payload = self.payload
        encoded = "null" if payload is None else '"' + binascii.b2a_base64(payload, newline=False).decode("ascii") + '"'
        return (
            f'{{"http_code":{int(self.http_code)},"error":{error},"http_headers":{headers},'
            f'"is_html":{"true" if self.is_html else "false"},"payload":{encoded}}}'
        )

    @classmethod
    def from_doc(cls, doc: Any) -> Result:
        """Decode a parsed ScriptResult object, strictly (Go's types); raises ValueError when it does not fit."""
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ValueError("ScriptResult must be a JSON object")
        found = _gojson.fields(doc, _RESULT_FIELDS)
        code = found.get("http_code")
        if code is None:
            code = 0
        elif isinstance(code, bool) or not isinstance(code, int) or not _INT64_MIN <= code <= _INT64_MAX:
            raise ValueError("http_code must be an integer")
        error = _gojson.optional_str(found.get("error"), "error")
        headers = found.get("http_headers")
        if headers is not None:
            if not isinstance(headers, dict):
                raise ValueError("http_headers must be an object of strings")
            # Go leaves a null map value as the empty string.
            headers = {_gojson.clean(k): _gojson.optional_str(v, "http_headers") for k, v in headers.items()}
        is_html = found.get("is_html")
        if is_html is None:
            is_html = False
        elif not isinstance(is_html, bool):
            raise ValueError("is_html must be a boolean")
        encoded = found.get("payload")
        payload: bytes | None = None
        if encoded is not None:
            if not isinstance(encoded, str):
                raise ValueError("payload must be a base64 string")
            try:
                payload = _gojson.b64decode(encoded)
            except binascii.Error as exc:
                raise ValueError(f"payload is not base64: {exc}") from exc
        return cls(http_code=code, error=error, http_headers=headers, is_html=is_html, payload=payload)


_RESULT_FIELDS = frozenset({"http_code", "error", "http_headers", "is_html", "payload"})
_PLAIN_HEAD = b'[{"http_code":0,"error":"","http_headers":null,"is_html":false,"payload":"'
_PLAIN_TAIL = b'"}]'


def results_json(results: tuple[Result, ...] | None) -> bytes:
    """The JSON array of results (`null` when there are none at all): a Reply's `script_result`, and what the
    HTTP gateway answers in JSON mode."""
    if results is None:
        return b"null"
    if len(results) == 1:  # most subjects have one script
        only = results[0]
        payload = only.payload
        if payload is not None and not (only.http_code or only.error or only.is_html) and only.http_headers is None:
            # What most scripts answer, a payload and nothing else, is written without the general encoding.
            return _PLAIN_HEAD + binascii.b2a_base64(payload, newline=False) + _PLAIN_TAIL
        return ("[" + only.to_json() + "]").encode()
    return ("[" + ",".join(r.to_json() for r in results) + "]").encode()


_REPLY_FIELDS = frozenset({"script_result", "is_html", "error"})


@dataclass(slots=True)
class Reply:
    """The document answered to a NATS request: every script's result, or one error."""

    results: tuple[Result, ...] | None = None
    error: str = ""

    @property
    def is_html(self) -> bool:
        """True when any result is an HTML result."""
        return any(r.is_html for r in self.results or ())

    def to_json(self) -> bytes:
        """Encode as the Go Reply: `script_result`, `is_html`, and `error` only when set."""
        found = self.results
        if found is None:
            is_html = False
        elif len(found) == 1:  # most subjects have one script
            is_html = found[0].is_html
        else:
            is_html = any(r.is_html for r in found)
        tail = b',"is_html":true' if is_html else b',"is_html":false'
        if self.error:
            tail += b',"error":' + go_string(self.error).encode()
        return b'{"script_result":' + results_json(found) + tail + b"}"

    @classmethod
    def from_json(cls, data: bytes | str) -> Reply:
        """Decode a Reply document (`null` is an empty Reply, as in Go); raises ValueError when the data is not one."""
        doc = _gojson.loads(data)
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ValueError("Reply must be a JSON object")
        found = _gojson.fields(doc, _REPLY_FIELDS)
        raw_results = found.get("script_result")
        if raw_results is not None and not isinstance(raw_results, list):
            raise ValueError("script_result must be an array")
        results = None if raw_results is None else tuple(Result.from_doc(r) for r in raw_results)
        is_html = found.get("is_html")
        if is_html is not None and not isinstance(is_html, bool):
            raise ValueError("is_html must be a boolean")
        return cls(results=results, error=_gojson.optional_str(found.get("error"), "error"))
