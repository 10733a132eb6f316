"""The Store protocol (where scripts and libraries live), and Resync for those who follow its changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from msgscript.script import Script

log = logging.getLogger(__name__)


class Store(Protocol):
    """What the dispatcher, the NATS subscriber and the CLI need from a script store."""

    async def scripts_for(self, subject: str) -> list[Script]:
        """Every script whose subject (or subject pattern) matches `subject`; [] when none."""
        ...

    def scripts_now(self, subject: str) -> list[Script] | None:
        """What `scripts_for` answers, when the store can tell without waiting; None when it cannot (ask
        `scripts_for` then). Raises what `scripts_for` raises."""
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

    async def script_names(self) -> list[tuple[str, str]]:
        """The (subject, name) of every stored script, sorted (what `msgscriptcli list` shows)."""
        ...

    async def library_names(self) -> list[str]:
        """The name of every stored library, sorted."""
        ...

    async def put_script(self, script: Script, *, text: str | None = None) -> None:
        """Add or replace the script stored under its subject and name.

        Args:
            script: the script, its subject and name final.
            text: the file it was read from, if any. A store that keeps files writes this text (its subject
                and name headers set to the script's), so comments, header order and line endings survive;
                the others store `script` alone.

        Raises:
            StoreError: the store refuses the script or cannot write it.
        """
        ...

    async def delete_script(self, subject: str, name: str) -> bool:
        """Remove a script.

        Returns:
            True when a script was removed; False (no error) when there was none.

        Raises:
            StoreError: the store cannot remove it.
        """
        ...

    async def put_library(self, name: str, source: str, *, text: str | None = None) -> None:
        """Add or replace a library.

        Args:
            name: the library's name (what `--* require:` asks for).
            source: its header-stripped text, what scripts get.
            text: the file it was read from, if any (`--* name:` header included); a store that keeps files
                writes it, the others store `source`.

        Raises:
            StoreError: the store refuses the library or cannot write it.
        """
        ...

    async def delete_library(self, name: str) -> bool:
        """Remove a library.

        Returns:
            True when a library was removed; False (no error) when there was none.

        Raises:
            StoreError: the store cannot remove it.
        """
        ...

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever the set of scripts changes."""
        ...

    def __len__(self) -> int:
        """The number of scripts held."""
        ...


class Resync:
    """Runs `sync` again whenever the store changes (hook `schedule` to `Store.add_listener`), in one task:
    changes that land while a round runs are taken in by another round, and a failed round is tried again
    after `retry_s` until one succeeds or `close` is called."""

    def __init__(self, sync: Callable[[], Awaitable[None]], *, what: str, retry_s: float) -> None:
        self._sync = sync
        self._what = what
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._closed = False

    def schedule(self) -> None:
        """Ask for another round (from the event loop)."""
        self._dirty = True
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._rounds(), name=f"msgscript:{self._what}")

    def close(self) -> None:
        """No more rounds; the one running, if any, is cancelled."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    async def _rounds(self) -> None:
        while self._dirty and not self._closed:
            self._dirty = False
            try:
                await self._sync()
            except Exception as exc:
                log.error("failed to update the %s, trying again: %s", self._what, exc)
                self._dirty = True
                await asyncio.sleep(self._retry_s)
