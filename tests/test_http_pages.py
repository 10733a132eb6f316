"""The browse pages over a real port: README, subject list, names, script info, redirects, -browse off."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import DaemonFactory
from tests.fixtures import SCRIPTS
from tests.servers import free_port

HTML_UTF8 = "text/html; charset=utf-8"


SiteFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def start_site(make_daemon: DaemonFactory) -> SiteFactory:
    """Start a daemon serving HTTP on a free local port; yields its base URL."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        port = free_port()
        async with make_daemon(http_port=port, http_host="127.0.0.1", **overrides):
            yield f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
async def site(start_site: SiteFactory) -> AsyncIterator[str]:
    async with start_site() as url:
        yield url


async def fetch(client: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, str, str]:
    async with client.request(method, url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def raw_request(url: str, target: str) -> tuple[int, dict[str, str]]:
    """Send a request line exactly as given (clients would clean the path first); status and headers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(), 10)).split(b"\r\n\r\n", 1)[0].decode()
    finally:
        writer.close()
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers


def hrefs(page: str) -> list[str]:
    return re.findall(r'<a href="([^"]+)"', page)


async def test_home_and_underscore_render_the_readme(site: str, client: aiohttp.ClientSession) -> None:
    for path in ("/", "/_/"):
        status, content_type, page = await fetch(client, site + path)
        assert status == 200
        assert content_type == HTML_UTF8
        assert re.search(r'<h2 id="features">Features</h2>', page)
        assert "<title>Msgscript</title>" in page


async def test_readme_links_to_other_sites_open_in_a_new_tab(site: str, client: aiohttp.ClientSession) -> None:
    _, _, page = await fetch(client, site + "/")
    assert '<a href="https://github.com/numkem/msgscript" target="_blank" rel="noopener noreferrer">' in page


async def test_list_links_every_subject_once(site: str, client: aiohttp.ClientSession) -> None:
    status, content_type, page = await fetch(client, site + "/_/list")
    assert status == 200
    assert content_type == HTML_UTF8
    assert "<title>Msgscript :: List all subjects</title>" in page
    assert '<a href="/_/subject/funcs.hello">funcs.hello</a>' in page
    links = hrefs(page)
    subject_links = [h for h in links if h.startswith("/_/subject/")]
    assert len(subject_links) == len(set(subject_links))
    assert "/_/subject/funcs.multi" in subject_links
    # A wildcard subject is linked as it is written.
    assert "/_/subject/funcs.wild.*" in subject_links


async def test_list_with_a_single_subject_lists_it(
    start_site: SiteFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    only = tmp_path / "only"
    only.mkdir()
    (only / "hello.lua").write_text(SCRIPTS["hello.lua"])
    async with start_site(script_dir=str(only)) as url:
        _, _, page = await fetch(client, url + "/_/list")
    assert '<a href="/_/subject/funcs.hello">funcs.hello</a>' in page
    assert "No subjects found" not in page


async def test_list_without_scripts_says_so(
    start_site: SiteFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    async with start_site(script_dir=str(empty)) as url:
        status, _, page = await fetch(client, url + "/_/list")
    assert status == 200
    assert "No subjects found" in page


async def test_subject_page_lists_names_sorted(site: str, client: aiohttp.ClientSession) -> None:
    status, content_type, page = await fetch(client, site + "/_/subject/funcs.multi")
    assert status == 200
    assert content_type == HTML_UTF8
    assert "<title>Msgscript :: Name list for subject funcs.multi</title>" in page
    assert "<h1>Names for subject funcs.multi</h1>" in page
    info_links = [h for h in hrefs(page) if h.startswith("/_/info/")]
    assert info_links == ["/_/info/funcs.multi/a", "/_/info/funcs.multi/b"]


async def test_subject_page_of_a_wildcard_subject(site: str, client: aiohttp.ClientSession) -> None:
    status, _, page = await fetch(client, site + "/_/subject/funcs.wild.*")
    assert status == 200
    assert "/_/info/funcs.wild.*/wild" in hrefs(page)


async def test_unknown_subject_page_is_404(site: str, client: aiohttp.ClientSession) -> None:
    status, content_type, page = await fetch(client, site + "/_/subject/funcs.unknown")
    assert status == 404
    assert content_type == HTML_UTF8
    assert "no named script found for subject funcs.unknown" in page


async def test_info_page_shows_properties_and_escaped_source(site: str, client: aiohttp.ClientSession) -> None:
    status, content_type, page = await fetch(client, site + "/_/info/funcs.lib/lib")
    assert status == 200
    assert content_type == HTML_UTF8
    assert "<title>Msgscript :: Info for script funcs.lib/lib</title>" in page
    assert "<h1>Script information</h1>" in page
    text = re.sub(r"<[^>]+>", "", page)
    assert re.search(r"Subject\s*funcs\.lib", text)
    assert re.search(r"Name\s*lib\b", text)
    assert re.search(r"Is HTML\?\s*No", text)
    assert re.search(r"Libraires used\s*greet", text)
    assert re.search(r"Executor\s*lua", text)
    source = re.search(r"<pre><code>(.*?)</code></pre>", page, re.S)
    assert source is not None
    assert html.unescape(source.group(1)) == "function OnMessage(_, p) return Greet(p) end"


async def test_info_page_escapes_html_in_the_source(site: str, client: aiohttp.ClientSession) -> None:
    status, _, page = await fetch(client, site + "/_/info/web.page/page")
    assert status == 200
    assert "&lt;p&gt;hi&lt;/p&gt;" in page
    assert "<p>hi</p>" not in page
    text = re.sub(r"<[^>]+>", "", page)
    assert re.search(r"Is HTML\?\s*Yes", text)
    assert re.search(r"Libraires used\s*None", text)


async def test_unknown_script_info_is_404(site: str, client: aiohttp.ClientSession) -> None:
    status, _, page = await fetch(client, site + "/_/info/funcs.hello/nope")
    assert status == 404
    assert "no information found on script for subject funcs.hello with name nope" in page


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/_/info/funcs.hello//hello", "/_/info/funcs.hello/hello"),
        ("//funcs.hello", "/funcs.hello"),
        ("/_/./list", "/_/list"),
        ("/_/subject/x/../funcs.multi", "/_/subject/funcs.multi"),
        ("/funcs.hello/a//b/", "/funcs.hello/a/b/"),
        ("/funcs.hello//x?y=1&_timeout=2s", "/funcs.hello/x?y=1&_timeout=2s"),
        ("/funcs.hello/..", "/"),
        ("/_/%2E%2E/_/list", "/_/list"),
    ],
)
async def test_unclean_paths_redirect_to_the_clean_path(site: str, target: str, location: str) -> None:
    status, headers = await raw_request(site, target)
    assert status == 301
    assert headers["Location"] == location


async def test_redirect_is_followed_to_the_page(site: str, client: aiohttp.ClientSession) -> None:
    status, _, page = await fetch(client, site + "/_/info/funcs.hello//hello")
    assert status == 200
    assert "Info for script funcs.hello/hello" in page


async def test_favicon_is_an_empty_200(site: str, client: aiohttp.ClientSession) -> None:
    async with client.get(site + "/favicon.ico") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_internal_subjects_answer_over_http(site: str, client: aiohttp.ClientSession) -> None:
    async with client.post(site + "/__listNamesForScript", data=b"funcs.multi") as resp:
        assert resp.status == 200
        assert await resp.read() == b'["a","b"]'
    async with client.post(site + "/__infoNamedScript", data=b"funcs.hello,hello") as resp:
        assert resp.status == 200
        assert '"executor":"lua"' in await resp.text()


@pytest.mark.parametrize(
    ("subject", "data", "status", "text"),
    [
        ("__infoNamedScript", b"nocomma", 400, "Error: invalid request"),
        ("__infoNamedScript", b"a,b,c", 400, "Error: invalid request"),
        ("__infoNamedScript", b"", 400, "Error: invalid request"),
        (
            "__infoNamedScript",
            b"funcs.hello,nobody",
            404,
            "Error: no script found for subject funcs.hello with name nobody",
        ),
        ("__listNamesForScript", b"nothing.here", 404, "Error: script not found for subject: nothing.here"),
        ("__listNamesForScript", b"", 404, "Error: script not found for subject: "),
    ],
)
async def test_internal_subjects_answer_junk_400_and_a_miss_404(
    site: str, client: aiohttp.ClientSession, subject: str, data: bytes, status: int, text: str
) -> None:
    async with client.post(f"{site}/{subject}", data=data) as resp:
        assert resp.status == status
        assert await resp.text() == text


async def test_browse_off_turns_the_pages_off(start_site: SiteFactory, client: aiohttp.ClientSession) -> None:
    async with start_site(browse="off") as url:
        for path in ("/", "/_/", "/_/list", "/_/subject/funcs.hello", "/_/info/funcs.hello/hello"):
            status, _, page = await fetch(client, url + path)
            assert status == 404, path
            assert "OnMessage" not in page
        async with client.post(url + "/__infoNamedScript", data=b"funcs.hello,hello") as resp:
            assert resp.status == 404
            assert "OnMessage" not in await resp.text()
        # The gateway still works.
        async with client.post(url + "/funcs.hello", data=b"John") as resp:
            assert resp.status == 200


def test_readme_comes_from_the_package_metadata_outside_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from msgscript.http import readme

    monkeypatch.setattr(readme, "_CHECKOUT_ROOT", tmp_path)
    text = readme.find_readme()
    assert text is not None
    assert text.startswith("# msgscript")
    assert '<h2 id="features">Features</h2>' in readme.render_readme()


def test_readme_falls_back_to_a_short_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from msgscript.http import readme

    monkeypatch.setattr(readme, "_CHECKOUT_ROOT", tmp_path)
    monkeypatch.setattr(readme, "_DISTRIBUTION", "msgscript-not-installed")
    assert readme.find_readme() is None
    page = readme.render_readme()
    assert '<h1 id="msgscript">msgscript</h1>' in page
    assert '<a href="/_/list">Subjects</a>' in page
