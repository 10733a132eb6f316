"""The browse pages in a real headless Chromium, driven over the Chrome DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import DaemonFactory
from tests.servers import free_port, missing, stop_process

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
START_TIMEOUT_S = 30.0
NAVIGATION_TIMEOUT_S = 15.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,800",
    "--remote-debugging-port=0",
)


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    missing("chromium")
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def run_chromium() -> AsyncIterator[str]:
    """Start headless Chromium with a fresh profile; yields the DevTools HTTP endpoint."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="msgscript-chromium-", ignore_cleanup_errors=True) as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT_S
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None or loop.time() > deadline:
                    raise AssertionError(f"chromium did not start (exit status {proc.returncode})")
                await asyncio.sleep(0.05)
            port = int(port_file.read_text().splitlines()[0])
            yield f"http://127.0.0.1:{port}"
        finally:
            await stop_process(proc, 10)


class Tab:
    """One browser tab, driven by DevTools commands over its websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events arriving meanwhile are skipped)."""
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), NAVIGATION_TIMEOUT_S)
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise AssertionError(f"{method} failed: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for_page(self, path: str) -> None:
        """Wait until the tab shows `path`, fully loaded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NAVIGATION_TIMEOUT_S
        while True:
            state = await self.evaluate("[location.pathname, document.readyState]")
            if state == [path, "complete"]:
                return
            if loop.time() > deadline:
                raise AssertionError(f"the tab is at {state}, not at {path}")
            await asyncio.sleep(0.05)

    async def click_link(self, href: str) -> None:
        """Click, with the mouse, the link whose href attribute is `href`."""
        box = await self.evaluate(
            f"(() => {{ const a = document.querySelector('a[href=\"{href}\"]');"
            " if (!a) return null; a.scrollIntoView(); const r = a.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        assert box is not None, f"no link to {href} on the page"
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page."""
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def open_tab(session: aiohttp.ClientSession, devtools: str) -> AsyncIterator[Tab]:
    async with session.get(devtools + "/json/list") as resp:
        targets = await resp.json()
    page = next(t for t in targets if t["type"] == "page")
    async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
        tab = Tab(ws)
        await tab.call("Page.enable")
        yield tab


async def test_browse_from_the_list_to_a_script_source(make_daemon: DaemonFactory) -> None:
    chromium_binary()
    port = free_port()
    site = f"http://127.0.0.1:{port}"
    async with (
        make_daemon(http_port=port, http_host="127.0.0.1"),
        run_chromium() as devtools,
        aiohttp.ClientSession() as session,
        open_tab(session, devtools) as tab,
    ):
        await tab.call("Page.navigate", url=site + "/_/list")
        await tab.wait_for_page("/_/list")
        assert await tab.evaluate("document.title") == "Msgscript :: List all subjects"
        await tab.screenshot(ARTIFACTS / "browse-list.png")

        await tab.click_link("/_/subject/funcs.lib")
        await tab.wait_for_page("/_/subject/funcs.lib")
        assert await tab.evaluate("document.querySelector('h1').innerText") == "Names for subject funcs.lib"

        await tab.click_link("/_/info/funcs.lib/lib")
        await tab.wait_for_page("/_/info/funcs.lib/lib")
        assert await tab.evaluate("document.title") == "Msgscript :: Info for script funcs.lib/lib"
        source = await tab.evaluate("document.querySelector('pre').innerText")
        assert source.strip() == "function OnMessage(_, p) return Greet(p) end"
        properties = await tab.evaluate("document.querySelector('table').innerText")
        assert "Libraires used" in properties
        assert "greet" in properties
        await tab.screenshot(ARTIFACTS / "browse-info.png")
    assert (ARTIFACTS / "browse-info.png").stat().st_size > 0


@pytest.mark.parametrize("path", ["/", "/_/info/web.page/page"])
async def test_pages_are_styled_and_fetch_no_external_assets(make_daemon: DaemonFactory, path: str) -> None:
    chromium_binary()
    port = free_port()
    site = f"http://127.0.0.1:{port}"
    async with (
        make_daemon(http_port=port, http_host="127.0.0.1"),
        run_chromium() as devtools,
        aiohttp.ClientSession() as session,
        open_tab(session, devtools) as tab,
    ):
        await tab.call("Page.navigate", url=site + path)
        await tab.wait_for_page(path)
        # The inline stylesheet applied: the page is laid out in a centred column.
        width = await tab.evaluate("document.querySelector('main').getBoundingClientRect().width")
        assert 0 < width < 1100
        # No resource other than the page itself was fetched (no external assets).
        resources = await tab.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        assert resources == []
