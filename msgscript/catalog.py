"""The read-only view of the store: what the internal subjects `__listScripts`, `__listNamesForScript` and
`__infoNamedScript`, the browse pages, and the NATS and JetStream intake ask about the scripts."""

from __future__ import annotations

from collections.abc import Callable

from msgscript.errors import MsgscriptError
from msgscript.message import Reply, Result, go_string
from msgscript.script import Script
from msgscript.store.base import Store

LIST_SCRIPTS = "__listScripts"
LIST_NAMES = "__listNamesForScript"
INFO_NAMED_SCRIPT = "__infoNamedScript"
INTERNAL_SUBJECTS = (LIST_SCRIPTS, LIST_NAMES, INFO_NAMED_SCRIPT)


class CatalogError(MsgscriptError):
    """Raised by `Catalog.lookup` when an internal subject request has no answer; the text is the Reply error."""


class InvalidCatalogRequest(CatalogError):
    """Raised when the data of an internal subject request is malformed (`__infoNamedScript` without `subject,name`)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__("invalid request")


class CatalogMiss(CatalogError):
    """Raised when an internal subject request names a subject without scripts, or a script that does not exist."""

    def __init__(self, message: str, subject: str, name: str = "") -> None:
        self.subject = subject
        self.name = name
        super().__init__(message)


def _go_string_list(values: list[str]) -> bytes:
    if not values:
        return b"null"
    return ("[" + ",".join(go_string(v) for v in values) + "]").encode()


def _page(payload: bytes, headers: dict[str, str] | None = None, *, is_html: bool = True) -> Reply:
    result = Result(http_code=200, http_headers=headers or {}, is_html=is_html, payload=payload)
    return Reply(results=(result,))


class Catalog:
    """What the store holds, read-only; answers the internal subjects."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever the set of scripts changes."""
        self._store.add_listener(callback)

    async def subjects(self) -> list[str]:
        """Distinct subjects, sorted."""
        return await self._store.subjects()

    async def stored(self, subject: str) -> list[Script]:
        """The scripts stored under exactly `subject` (not those whose pattern matches it), by name."""
        scripts = await self._store.scripts_for(subject)
        return sorted((s for s in scripts if s.subject == subject), key=lambda s: s.name)

    async def scripts(self) -> list[Script]:
        """Every stored script, by subject then name."""
        return [script for subject in await self.subjects() for script in await self.stored(subject)]

    async def names(self, subject: str) -> list[str]:
        """Sorted names of the scripts stored under exactly `subject`."""
        return [s.name for s in await self.stored(subject)]

    async def script(self, subject: str, name: str) -> Script | None:
        """The script stored under exactly this subject and name, if any."""
        return await self._store.script(subject, name)

    async def answer(self, subject: str, data: bytes) -> Reply:
        """The Reply for one internal subject request, a failure included as its `error` (the NATS answer, as Go's)."""
        try:
            return await self.lookup(subject, data)
        except CatalogError as exc:
            return Reply(error=str(exc))

    async def lookup(self, subject: str, data: bytes) -> Reply:
        """The Reply for one internal subject request that has an answer.

        Raises:
            InvalidCatalogRequest: `data` is not what the subject asks for.
            CatalogMiss: the subject or script that `data` names is not in the store.
            StoreError: the store cannot answer.
        """
        if subject == LIST_SCRIPTS:
            return _page(_go_string_list(await self.subjects()))
        text = data.decode("utf-8", "replace")
        if subject == LIST_NAMES:
            names = await self.names(text)
            if not names:
                raise CatalogMiss(f"script not found for subject: {text}", text)
            return _page(_go_string_list(names))
        parts = text.split(",")
        if len(parts) != 2:
            raise InvalidCatalogRequest(subject)
        script_subject, name = parts
        script = await self.script(script_subject, name)
        if script is None:
            raise CatalogMiss(f"no script found for subject {script_subject} with name {name}", script_subject, name)
        headers = {"executor": script.executor, "libraries": ", ".join(script.libraries)}
        return _page(script.content.encode("utf-8", "surrogateescape"), headers, is_html=script.html)
