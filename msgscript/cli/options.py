"""Helpers shared by the two commands: Go-style flags and value parsers."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from msgscript.durations import parse_duration
from msgscript.errors import ConfigError, MsgscriptError

F = TypeVar("F", bound=Callable[..., Any])

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class CommandFailed(MsgscriptError, click.ClickException):
    """Raised by a command that could not do its work: the bare message on stderr (no `Error:` prefix, like the
    Go commands), exit status 1."""

    def show(self, file: object = None) -> None:
        """Print the message alone."""
        click.echo(self.format_message(), err=True)


def go_flag(name: str, *aliases: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option accepted as `-name` and `--name` (and `-name=v`), like Go's flag package."""
    return click.option(f"-{name}", f"--{name}", *aliases, **kwargs)


class DurationType(click.ParamType):  # type: ignore[type-arg]
    """A Go duration (`5s`, `2m`, `1h30m`) given in seconds to the command."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Parse a positive Go duration."""
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return seconds


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes, with an optional unit (`512k`, `256MiB`, `1G`)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Parse a positive size."""
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a size like 1048576, 512k or 256MiB", param, ctx)
        unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
        size_bytes = int(float(match.group(1)) * _SIZE_UNITS[unit])
        if size_bytes <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return size_bytes


class GoBoolType(click.ParamType):  # type: ignore[type-arg]
    """A boolean flag's value as Go's flag package reads it: `-name` alone is true, `-name=false` (or 0, f, F,
    FALSE, False) is false, `-name=true` (1, t, T, TRUE, True) is true. Declare the option with `is_flag=False,
    flag_value=True` so that the value may be left out."""

    name = "boolean"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        """Parse a Go boolean."""
        if isinstance(value, bool):
            return value
        if value in _GO_TRUE:
            return True
        if value in _GO_FALSE:
            return False
        self.fail(f"invalid boolean value {value!r}: use true or false", param, ctx)


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

DURATION = DurationType()
SIZE = SizeType()
GO_BOOL = GoBoolType()


ENV_SECRET_PREFIX = "env:"


def read_secret(spec: str, environ: Mapping[str, str], flag: str) -> str:
    """A secret given on the command line as `FILE` (its text, trailing newline dropped) or `env:VAR`.

    Raises:
        ConfigError: the file cannot be read, the variable is unset, or the secret is empty or holds
            whitespace or control characters. The message never contains the secret.
    """
    if spec.startswith(ENV_SECRET_PREFIX):
        name = spec.removeprefix(ENV_SECRET_PREFIX)
        secret = environ.get(name, "")
        where = f"environment variable {name}"
    else:
        try:
            secret = Path(spec).read_text(encoding="utf-8", errors="surrogateescape").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {spec}: {exc.strerror or exc}") from exc
        where = spec
    if not secret:
        raise ConfigError(f"{flag}: {where} is empty or not set")
    if any(c.isspace() or not c.isprintable() for c in secret):
        raise ConfigError(f"{flag}: the secret in {where} holds whitespace or control characters")
    return secret
