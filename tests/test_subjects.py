"""msgscript.subjects: valid NATS subjects and patterns, and how wildcards match."""

from __future__ import annotations

import pytest

from msgscript.subjects import has_wildcards, is_valid_pattern, is_valid_subject, matches

ALWAYS_INVALID = [
    "",
    ".",
    "..",
    ".funcs",
    "funcs.",
    "funcs..hello",
    "funcs hello",
    " funcs.hello",
    "funcs.hello ",
    "funcs\thello",
    "funcs\nhello",
    "funcs\rhello",
    "funcs\x00hello",
    "funcs\x7fhello",
    "funcs\x85hello",
    "funcs\u00a0hello",
    "funcs\u2028hello",
]


@pytest.mark.parametrize(
    "subject",
    ["funcs.hello", "a", "a.b.c.d", "_INBOX.abc", "__listScripts", "web-page_1.x", "caf\u00e9.bar", "a*.b>", "$SYS.x"],
)
def test_publishable_subjects_are_valid(subject: str) -> None:
    assert is_valid_subject(subject)
    assert is_valid_pattern(subject)


@pytest.mark.parametrize("subject", ALWAYS_INVALID)
def test_empty_tokens_whitespace_and_control_characters_are_invalid(subject: str) -> None:
    assert not is_valid_subject(subject)
    assert not is_valid_pattern(subject)


@pytest.mark.parametrize("pattern", ["*", ">", "funcs.*", "funcs.>", "*.hello", "a.*.c", "*.*.>", "a.*.>"])
def test_wildcard_tokens_make_a_pattern_but_not_a_subject(pattern: str) -> None:
    assert is_valid_pattern(pattern)
    assert not is_valid_subject(pattern)


@pytest.mark.parametrize("pattern", [">.a", "a.>.b", ">.>", "funcs.>."])
def test_full_wildcard_must_be_the_last_token(pattern: str) -> None:
    assert not is_valid_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("funcs.hello", False),
        ("funcs.*", True),
        ("funcs.>", True),
        ("*", True),
        (">", True),
        ("a*.b", False),
        ("a.b>", False),
        ("a.**", False),
    ],
)
def test_has_wildcards_looks_for_whole_wildcard_tokens(pattern: str, expected: bool) -> None:
    assert has_wildcards(pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("funcs.hello", "funcs.hello"),
        ("funcs.*", "funcs.hello"),
        ("*.hello", "funcs.hello"),
        ("*.*", "funcs.hello"),
        ("funcs.>", "funcs.hello"),
        ("funcs.>", "funcs.hello.world"),
        (">", "funcs"),
        (">", "funcs.hello.world"),
        ("a.*.c", "a.b.c"),
        ("a.*.>", "a.b.c.d"),
        ("funcs.*", "funcs.*"),  # a literal `*` token in the subject is still one token
    ],
)
def test_matching_patterns(pattern: str, subject: str) -> None:
    assert matches(pattern, subject)


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("funcs.hello", "funcs.hello2"),
        ("funcs.hello", "funcs"),
        ("funcs.hello", "funcs.hello.world"),
        ("funcs.*", "funcs"),
        ("funcs.*", "funcs.hello.world"),
        ("funcs.*", "other.hello"),
        ("funcs.>", "funcs"),
        ("*", "funcs.hello"),
        ("a.*.c", "a.b.d"),
        ("a.*.>", "a.b"),
        ("funcs.*", "funcs."),  # empty tokens never match
        ("funcs.>", "funcs..x"),
        ("funcs.*", "funcs.a b"),
        ("funcs.*", ""),
        ("", ""),
        ("a.>.b", "a.x.b"),  # not a valid pattern
        ("funcs.hel*", "funcs.hello"),  # `*` inside a token is a literal
    ],
)
def test_non_matching_patterns(pattern: str, subject: str) -> None:
    assert not matches(pattern, subject)
