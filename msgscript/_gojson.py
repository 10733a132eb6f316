"""JSON the way Go's encoding/json writes and reads it, for the documents shared with the Go msgscript."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

# Go escapes these for HTML safety. A surrogate here stands for one invalid UTF-8 byte (decoded
# with surrogateescape) or a lone surrogate, and Go writes each invalid byte as the escape \ufffd.
_ESCAPES: dict[int, str] = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    **{cp: "\\ufffd" for cp in range(0xD800, 0xE000)},
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_DIGITS = 4300


def go_string(value: str | bytes) -> str:
    """Encode one JSON string as Go does: `<>&` and U+2028/9 escaped, each invalid UTF-8 byte as `\\ufffd`."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return json.dumps(value, ensure_ascii=False).translate(_ESCAPES)


def clean(value: str) -> str:
    """Replace lone surrogates with U+FFFD, as Go does for invalid UTF-8 and unpaired `\\ud800` escapes."""
    return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def _parse_int(text: str) -> int | float:
    # Python refuses to turn more than 4300 digits into an int; Go reads any number (into a float64, or
    # skips it in a field it does not know). A number that long fits no field of ours anyway.
    return int(text) if len(text) <= _INT_DIGITS else float(text)


def loads(data: bytes | str) -> Any:
    """Parse JSON text as Go accepts it: UTF-8 only (invalid bytes become U+FFFD), no NaN or Infinity.

    Raises:
        ValueError: when the text is not JSON, or nests too deeply to parse.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = clean(data.decode("utf-8", "surrogateescape"))
    else:
        text = data
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except RecursionError as exc:
        raise ValueError("JSON nests too deeply") from exc


def _fold(key: str) -> str:
    # Go matches a key to a field case-insensitively with Unicode simple folding (ſ is s, K is k).
    return key.lower().replace("\u017f", "s")


def fields(doc: Mapping[str, Any], names: Collection[str]) -> dict[str, Any]:
    """Map an object's keys to Go struct fields: an exact name first, else a case-insensitive one; later keys win."""
    found: dict[str, Any] = {}
    for key, value in doc.items():
        if key in names:
            found[key] = value
        else:
            folded = _fold(key)
            if folded in names:
                found[folded] = value
    return found


def b64decode(text: str) -> bytes:
    """Decode base64 like Go's StdEncoding does for a []byte field: padding required, CR and LF ignored.

    Raises:
        ValueError: when the text is not base64 (binascii.Error is a ValueError).
    """
    if "\r" in text or "\n" in text:
        text = text.replace("\r", "").replace("\n", "")
    return base64.b64decode(text, validate=True)


def optional_str(value: Any, field: str) -> str:
    """A JSON string field where null means empty, as Go decodes it; raises ValueError for another type."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    return clean(value)
