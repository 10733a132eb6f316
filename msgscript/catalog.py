"""Read-only views of the store behind the internal subjects `__listScripts`, `__listNamesForScript`
and `__infoNamedScript` (and, through them, the browse pages)."""

from __future__ import annotations

from msgscript.message import Reply, Result, go_string
from msgscript.store.base import Store

LIST_SCRIPTS = "__listScripts"
LIST_NAMES = "__listNamesForScript"
INFO_NAMED_SCRIPT = "__infoNamedScript"
INTERNAL_SUBJECTS = (LIST_SCRIPTS, LIST_NAMES, INFO_NAMED_SCRIPT)


def _go_string_list(values: list[str]) -> bytes:
    if not values:
        return b"null"
    return ("[" + ",".join(go_string(v) for v in values) + "]").encode()


def _page(payload: bytes, headers: dict[str, str] | None = None, *, is_html: bool = True) -> Reply:
    result = Result(http_code=200, http_headers=headers or {}, is_html=is_html, payload=payload)
    return Reply(results=(result,))


class Catalog:
    """Answers the internal subjects from a store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def subjects(self) -> list[str]:
        """Distinct subjects, sorted."""
        return await self._store.subjects()

    async def names(self, subject: str) -> list[str]:
        """Sorted names of the scripts stored under exactly `subject`."""
        scripts = await self._store.scripts_for(subject)
        return sorted(s.name for s in scripts if s.subject == subject)

    async def answer(self, subject: str, data: bytes) -> Reply:
        """The Reply for one internal subject request."""
        if subject == LIST_SCRIPTS:
            return _page(_go_string_list(await self.subjects()))
        text = data.decode("utf-8", "replace")
        if subject == LIST_NAMES:
            names = await self.names(text)
            if not names:
                return Reply(error=f"script not found for subject: {text}")
            return _page(_go_string_list(names))
        parts = text.split(",")
        if len(parts) != 2:
            return Reply(error="invalid request")
        script_subject, name = parts
        script = await self._store.script(script_subject, name)
        if script is None:
            return Reply(error=f"no script found for subject {script_subject} with name {name}")
        headers = {"executor": script.executor_name, "libraries": ", ".join(script.libraries)}
        return _page(script.content.encode("utf-8", "surrogateescape"), headers, is_html=script.html)
