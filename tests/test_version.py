"""`--version` of both commands: the installed distribution's version, the one `msgscript.__version__` holds."""

from __future__ import annotations

from importlib import metadata

import pytest

from msgscript import __version__
from tests.processes import run_msgscript, run_msgscriptcli


def test_version_is_the_installed_distributions() -> None:
    assert __version__ == metadata.version("msgscript")


@pytest.mark.parametrize("flag", ["--version", "-version"])
async def test_msgscript_prints_its_version(flag: str) -> None:
    assert await run_msgscript(flag) == (0, f"msgscript {__version__}\n", "")


async def test_msgscriptcli_prints_its_version() -> None:
    assert await run_msgscriptcli("--version") == (0, f"msgscriptcli {__version__}\n", "")
