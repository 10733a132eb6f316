"""What msgscript shares with Go's net/http and context packages: header spelling and the deadline error text."""

from __future__ import annotations

DEADLINE_EXCEEDED = "context deadline exceeded"
"""Go's context.DeadlineExceeded text: a gateway request or a Lua `http` call that ran out of time."""

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_token(text: str) -> bool:
    """True when `text` is an HTTP token (RFC 9110), the only form a header name may take."""
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def canonical_header_key(key: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: `content-type` → `Content-Type`; non-tokens stay as they are."""
    if not is_token(key):
        return key
    return "-".join(part[:1].upper() + part[1:].lower() for part in key.split("-"))
