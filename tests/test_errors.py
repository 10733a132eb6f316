"""The error tree: every exception class msgscript defines descends from MsgscriptError, says when it is raised,
and appears in the drawing of msgscript/errors.py."""

from __future__ import annotations

import importlib
import pkgutil
import re

import msgscript
from msgscript import errors
from msgscript.errors import MsgscriptError


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top level of a msgscript module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(msgscript.__path__, "msgscript."):
        if info.name.endswith(".__main__"):  # running it starts the daemon
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_error_descends_from_msgscript_error() -> None:
    classes = exception_classes()
    assert "msgscript.http.body.BodyTooLarge" in classes
    assert sorted(name for name, cls in classes.items() if not issubclass(cls, MsgscriptError)) == []


def test_every_error_says_when_it_is_raised() -> None:
    assert sorted(name for name, cls in exception_classes().items() if not (cls.__doc__ or "").strip()) == []


def test_the_drawing_names_every_error() -> None:
    drawn = set(re.findall(r"^ +(?:[│├└─ ]+ )?(\w+)", errors.__doc__ or "", re.MULTILINE))
    assert "MsgscriptError" in drawn and "UnsupportedCoding" in drawn
    assert sorted(name for name in exception_classes() if name.rsplit(".", 1)[1] not in drawn) == []


def test_errors_that_are_also_builtin_errors_are_caught_as_both() -> None:
    from msgscript.executors.threads import JobAbandoned
    from msgscript.http.protocol import BodyReadTimeout
    from msgscript.lua.execution import LuaMemoryError

    assert issubclass(JobAbandoned, TimeoutError) and issubclass(BodyReadTimeout, TimeoutError)
    assert issubclass(LuaMemoryError, MemoryError)
    assert str(BodyReadTimeout(30.0)) == "request body not received within 30s"
    assert str(LuaMemoryError()) == "not enough memory"
