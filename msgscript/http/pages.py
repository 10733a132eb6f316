"""The browse pages: the README on `/` and `/_/`, and the `/_/list`, `/_/subject/…` and `/_/info/…` pages."""

from __future__ import annotations

from aiohttp import web

from msgscript.errors import StoreError
from msgscript.http import templates
from msgscript.http.keys import CATALOG, README


def html_page(text: str, status: int = 200) -> web.Response:
    """An HTML page response."""
    return web.Response(status=status, body=text.encode("utf-8", "replace"), content_type="text/html", charset="utf-8")


def _store_failed(exc: StoreError) -> web.Response:
    return html_page(templates.missing_page("Store unavailable", f"the script store did not answer: {exc}"), 500)


async def handle_readme(request: web.Request) -> web.Response:
    """The README, rendered."""
    return html_page(templates.readme_page(await request.app[README].html()))


async def handle_list(request: web.Request) -> web.Response:
    """Every subject with scripts."""
    try:
        subjects = await request.app[CATALOG].subjects()
    except StoreError as exc:
        return _store_failed(exc)
    return html_page(templates.list_page(subjects))


async def handle_subject(request: web.Request) -> web.Response:
    """The names of one subject's scripts, sorted; 404 when it has none."""
    subject = request.match_info["subject"]
    try:
        names = await request.app[CATALOG].names(subject)
    except StoreError as exc:
        return _store_failed(exc)
    if not names:
        message = f"no named script found for subject {subject}"
        return html_page(templates.missing_page("No such subject", message), 404)
    return html_page(templates.names_page(subject, names))


async def handle_info(request: web.Request) -> web.Response:
    """One script's properties and source; 404 when it does not exist."""
    subject, name = request.match_info["subject"], request.match_info["name"]
    try:
        script = await request.app[CATALOG].script(subject, name)
    except StoreError as exc:
        return _store_failed(exc)
    if script is None:
        message = f"no information found on script for subject {subject} with name {name}"
        return html_page(templates.missing_page("No such script", message), 404)
    return html_page(templates.info_page(script))


async def handle_browse_off(request: web.Request) -> web.Response:
    """What the page paths answer when browsing is turned off."""
    return web.Response(status=404, text="404: Not Found", content_type="text/plain", charset="utf-8")
