"""An in-memory store: the base of the file store and of `msgscriptcli dev`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from msgscript.errors import LibraryNotFound
from msgscript.script import Script
from msgscript.subjects import has_wildcards, matches


class MemoryStore:
    """Scripts keyed by subject then name, plus libraries keyed by name."""

    def __init__(self, *, missing_libraries_are_errors: bool = False) -> None:
        self._scripts: dict[str, dict[str, Script]] = {}
        self._patterns: list[str] = []  # subjects with wildcards, matched per message
        self._libraries: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []
        self._strict_libraries = missing_libraries_are_errors

    async def scripts_for(self, subject: str) -> list[Script]:
        """Scripts whose subject is `subject` or a wildcard pattern matching it."""
        return self.scripts_now(subject)

    def scripts_now(self, subject: str) -> list[Script]:
        """What `scripts_for` answers: this store never waits."""
        found = list(self._scripts.get(subject, {}).values())
        for pattern in self._patterns:
            if pattern != subject and matches(pattern, subject):
                found.extend(self._scripts[pattern].values())
        return found

    async def script(self, subject: str, name: str) -> Script | None:
        """The script stored under exactly this subject and name."""
        return self._scripts.get(subject, {}).get(name)

    async def subjects(self) -> list[str]:
        """Distinct subjects that hold at least one script, sorted."""
        return sorted(s for s, by_name in self._scripts.items() if by_name)

    async def load_libraries(self, names: Sequence[str]) -> tuple[str, ...]:
        """Library sources in order; a missing one is skipped unless the store is strict."""
        sources = []
        for name in names:
            source = self._libraries.get(name)
            if source is None:
                if self._strict_libraries:
                    raise LibraryNotFound(name)
                continue
            sources.append(source)
        return tuple(sources)

    async def script_names(self) -> list[tuple[str, str]]:
        """The (subject, name) of every script held, sorted."""
        return sorted((subject, name) for subject, by_name in self._scripts.items() for name in by_name)

    async def library_names(self) -> list[str]:
        """The name of every library held, sorted."""
        return sorted(self._libraries)

    async def put_script(self, script: Script, *, text: str | None = None) -> None:
        """Add or replace a script (`text` is not kept)."""
        self.add(script)

    def add(self, script: Script) -> None:
        """Add or replace a script without awaiting (used while loading)."""
        by_name = self._scripts.setdefault(script.subject, {})
        is_new_subject = not by_name
        by_name[script.name] = script
        if is_new_subject and has_wildcards(script.subject):
            self._patterns.append(script.subject)
        self._notify()

    async def delete_script(self, subject: str, name: str) -> bool:
        """Remove a script (True when there was one); a subject left without scripts is forgotten."""
        by_name = self._scripts.get(subject)
        if by_name is None or by_name.pop(name, None) is None:
            return False
        if not by_name:
            del self._scripts[subject]
            if subject in self._patterns:
                self._patterns.remove(subject)
        self._notify()
        return True

    async def put_library(self, name: str, source: str, *, text: str | None = None) -> None:
        """Add or replace a library (`text` is not kept)."""
        self._libraries[name] = source

    def add_library(self, name: str, source: str) -> None:
        """Add or replace a library without awaiting (used while loading)."""
        self._libraries[name] = source

    def replace_libraries(self, libraries: Mapping[str, str]) -> None:
        """Hold exactly these libraries from now on (`msgscriptcli devhttp` re-reads them for every request)."""
        self._libraries = dict(libraries)

    async def delete_library(self, name: str) -> bool:
        """Remove a library (True when there was one)."""
        return self._libraries.pop(name, None) is not None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every change to the scripts."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def __len__(self) -> int:
        return sum(len(by_name) for by_name in self._scripts.values())
