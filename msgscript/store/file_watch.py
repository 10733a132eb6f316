"""Following the files of one directory through inotify (watchfiles' `awatch`), for the file store's hot reload.

`follow_directory` tells its caller that something changed; the caller reads the directory again (only the files
directly inside it, whose names it wants). It never reads files itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger(__name__)

WATCH_STEP_MS = 50
"""How long the directory must stay quiet before a batch of changes is handed over: an editor's save (write,
rename, mode change) ends up in one batch, read once it is done."""
WATCH_DEBOUNCE_MS = 300
"""The longest a batch keeps growing while changes keep coming (a change is seen within about this long)."""
WATCH_TIMEOUT_MS = 500
"""How often the watching thread comes back when nothing changes: the directory is checked to be the one watched
(not removed, renamed or swapped for another behind a symbolic link). A stop is seen within WATCH_STEP_MS."""
RETRY_S = 0.5
"""While the directory cannot be watched, how often watching is tried again."""


def _identity(directory: Path) -> tuple[int, int]:
    """The directory's device and inode (through symbolic links).

    Raises:
        OSError: it cannot be read, or is not a directory.
    """
    status = os.stat(directory)
    if not stat.S_ISDIR(status.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    return status.st_dev, status.st_ino


async def follow_directory(
    directory: Path,
    changed: Callable[[], None],
    stop: asyncio.Event,
    *,
    wanted: Callable[[str], bool],
    what: str,
) -> None:
    """Call `changed` after each batch of changes to the files directly inside `directory` whose names `wanted`
    accepts, until `stop` is set.

    `changed` is also called once each watch is known to be in place (within WATCH_TIMEOUT_MS of its start), so
    that what changed while nothing watched is not missed; it must not block (it schedules the reading). A
    directory that cannot be watched (missing, removed, or inotify's limits reached) is logged once, as an error
    naming it (`what` says what it holds), and tried again every RETRY_S; its return is logged too. A directory
    swapped for another (renamed over, or a symbolic link changed) is watched anew at once.
    """
    health = _Health(directory, what)
    while not stop.is_set():
        try:
            identity = _identity(directory)
        except OSError as exc:
            problem: str | None = f"cannot watch the {what} {directory}: {exc.strerror or exc}"
        else:
            problem = await _watch(directory, identity, changed, stop, wanted, what, health)
        if stop.is_set():
            return
        if problem is None:
            log.info("the %s %s is another directory now: watching that one", what, directory)
            continue
        health.failed(problem)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_S)


class _Health:
    """Logs a directory's watch failing once, and its return."""

    def __init__(self, directory: Path, what: str) -> None:
        self._directory = directory
        self._what = what
        self._failing = False

    def ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("watching the %s %s again", self._what, self._directory)

    def failed(self, problem: str) -> None:
        if not self._failing:
            self._failing = True
            log.error("%s; serving what was read from it until it can be watched again", problem)


async def _watch(
    directory: Path,
    identity: tuple[int, int],
    changed: Callable[[], None],
    stop: asyncio.Event,
    wanted: Callable[[str], bool],
    what: str,
    health: _Health,
) -> str | None:
    """Watch until `stop` is set (returns ""), the directory is lost (returns why) or is another directory now
    (returns None)."""
    root = str(directory)

    def counts(change: Change, path: str) -> bool:
        # Not recursive: the paths are the directory's own and its entries'.
        return path == root or wanted(os.path.basename(path))

    changes = awatch(
        directory,
        watch_filter=counts,
        debounce=WATCH_DEBOUNCE_MS,
        step=WATCH_STEP_MS,
        stop_event=stop,
        rust_timeout=WATCH_TIMEOUT_MS,
        yield_on_timeout=True,
        recursive=False,
    )
    started = False
    try:
        async for batch in changes:
            try:
                now = _identity(directory)
            except OSError as exc:
                return f"the {what} {directory} cannot be watched any more: {exc.strerror or exc}"
            if now != identity:
                return None
            if not started:
                # The first batch (changes, or none within WATCH_TIMEOUT_MS) shows the watch is in place.
                started = True
                health.ok()
                changed()
            elif any(path != root for _, path in batch):
                changed()
    except Exception as exc:
        # Raised by watchfiles when the watch cannot be made (inotify limits) or fails while watching.
        return f"cannot watch the {what} {directory}: {exc}"
    finally:
        await changes.aclose()
    return ""
