"""The Store protocol: where scripts and libraries live."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from msgscript.script import Script


class Store(Protocol):
    """What the dispatcher, the NATS subscriber and the CLI need from a script store."""

    async def scripts_for(self, subject: str) -> list[Script]:
        """Every script whose subject (or subject pattern) matches `subject`; [] when none."""
        ...

    async def script(self, subject: str, name: str) -> Script | None:
        """The script stored under exactly this subject and name, if any."""
        ...

    async def subjects(self) -> list[str]:
        """The distinct script subjects, sorted."""
        ...

    async def load_libraries(self, names: Sequence[str]) -> tuple[str, ...]:
        """Library sources in the given order.

        Raises:
            LibraryNotFound: a library is missing and this backend treats that as an error.
        """
        ...

    async def put_script(self, script: Script) -> None:
        """Add or replace the script stored under its subject and name."""
        ...

    async def delete_script(self, subject: str, name: str) -> None:
        """Remove a script; no error when it does not exist."""
        ...

    async def put_library(self, name: str, source: str) -> None:
        """Add or replace a library."""
        ...

    async def delete_library(self, name: str) -> None:
        """Remove a library; no error when it does not exist."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever the set of scripts changes."""
        ...

    def __len__(self) -> int:
        """The number of scripts held."""
        ...
