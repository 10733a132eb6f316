"""NATS subjects: validity of publish subjects and subscription patterns, and wildcard matching."""

from __future__ import annotations

import re

# Whitespace and control characters (C0, DEL, C1) never belong in a subject, nor do Unicode spaces.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


def _tokens(text: str) -> list[str] | None:
    """Split a subject into its tokens, or None when it is empty or holds an empty token or a bad character."""
    if not text or _FORBIDDEN.search(text):
        return None
    tokens = text.split(".")
    if "" in tokens:
        return None
    return tokens


def is_valid_subject(s: str) -> bool:
    """True when `s` is a subject a message can be published to (no wildcard tokens)."""
    tokens = _tokens(s)
    return tokens is not None and "*" not in tokens and ">" not in tokens


def is_valid_pattern(s: str) -> bool:
    """True when `s` can be subscribed to: `*` as a whole token anywhere, `>` only as the whole last token."""
    tokens = _tokens(s)
    return tokens is not None and ">" not in tokens[:-1]


def has_wildcards(pattern: str) -> bool:
    """True when a pattern holds a `*` or `>` wildcard token."""
    return any(token in ("*", ">") for token in pattern.split("."))


def matches(pattern: str, subject: str) -> bool:
    """True when `subject` is matched by `pattern` (`*` is one token, a last `>` is one or more tokens)."""
    if not is_valid_pattern(pattern):
        return False
    pattern_tokens = pattern.split(".")
    subject_tokens = _tokens(subject)
    if subject_tokens is None:
        return False
    if pattern_tokens[-1] == ">":
        if len(subject_tokens) < len(pattern_tokens):
            return False
        pattern_tokens = pattern_tokens[:-1]
        subject_tokens = subject_tokens[: len(pattern_tokens)]
    elif len(subject_tokens) != len(pattern_tokens):
        return False
    return all(p in ("*", t) for p, t in zip(pattern_tokens, subject_tokens, strict=True))
