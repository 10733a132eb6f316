"""The README shown on `/` and `/_/`: found next to a checkout or in the installed package's metadata, and
rendered when it is first asked for."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from markdown_it.token import Token

log = logging.getLogger(__name__)

_DISTRIBUTION = "msgscript"
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
_NOT_SLUG = re.compile(r"[^\w\- ]+")

FALLBACK_MARKDOWN = """# msgscript

Run small functions when NATS messages or HTTP requests arrive.

- `POST /<subject>` runs the scripts of `<subject>` and answers their results.
- [Subjects](/_/list) lists the loaded scripts.
"""


def find_readme() -> str | None:
    """The README text: the checkout's README.md, else the installed package's long description."""
    checkout = _CHECKOUT_ROOT / "README.md"
    if checkout.is_file() and (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        try:
            return checkout.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("cannot read %s: %s", checkout, exc)
    try:
        description = importlib.metadata.metadata(_DISTRIBUTION).json.get("description")
    except importlib.metadata.PackageNotFoundError:
        return None
    if isinstance(description, str) and description.strip():
        return description
    return None


def _slug(text: str, used: set[str]) -> str:
    """A GitHub-style heading id (`Server flags` → `server-flags`), made unique within the page."""
    base = _NOT_SLUG.sub("", text.strip().lower()).replace(" ", "-") or "section"
    slug, n = base, 1
    while slug in used:
        slug = f"{base}-{n}"
        n += 1
    used.add(slug)
    return slug


def _decorate(tokens: list[Token]) -> None:
    """Give headings ids and make links to other sites open in a new tab."""
    used: set[str] = set()
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and index + 1 < len(tokens):
            token.attrSet("id", _slug(tokens[index + 1].content, used))
        for child in token.children or ():
            if child.type == "link_open" and str(child.attrGet("href") or "").startswith(("http://", "https://")):
                child.attrSet("target", "_blank")
                child.attrSet("rel", "noopener noreferrer")


def render_markdown(text: str) -> str:
    """Render Markdown (CommonMark plus tables) to HTML; raw HTML in the text is escaped."""
    # Imported here: markdown_it weighs about 0.5 MB that a daemon whose home page is never visited does not need.
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    _decorate(tokens)
    html: str = md.renderer.render(tokens, md.options, {})
    return html


def render_readme() -> str:
    """The README as HTML (a short built-in text when no README can be found)."""
    text = find_readme()
    if text is None:
        log.info("no README found, the home page shows a short summary")
        text = FALLBACK_MARKDOWN
    return render_markdown(text)


class Readme:
    """The README page of one application, rendered on the first request for it and kept.

    A daemon whose home page is never visited neither loads markdown_it nor holds the page.
    """

    def __init__(self) -> None:
        self._html: str | None = None
        self._rendering = asyncio.Lock()

    async def html(self) -> str:
        """The README as HTML; the first call renders it, off the event loop, and later ones reuse it."""
        if self._html is None:
            async with self._rendering:
                if self._html is None:
                    self._html = await asyncio.to_thread(render_readme)
        return self._html
