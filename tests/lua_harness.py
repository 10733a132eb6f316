"""Run Lua through the executors exactly as the daemon composes them (built-ins, plugins, shared clients)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from msgscript.compose import open_executors
from msgscript.config import Settings
from msgscript.executors.base import Executor, RunContext
from msgscript.message import Message, Result
from msgscript.script import Script

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "plugins")


@contextlib.asynccontextmanager
async def lua_executor(
    *, nats: Any | None = None, plugins: bool = True, env: dict[str, str] | None = None, **settings: Any
) -> AsyncIterator[Executor]:
    """The daemon's Lua executor; with `plugins`, the bundled plugins are loaded as by `-plugin plugins/`.

    Other keywords are Settings fields (`plugin_dir` overrides `plugins`).
    """
    options: dict[str, Any] = {
        "max_memory_bytes": 32 * 1024 * 1024,
        "lua_threads": 4,
        "plugin_dir": PLUGIN_DIR if plugins else "",
        "env": dict(os.environ) if env is None else env,
    }
    options.update(settings)
    full = Settings(**options)
    async with open_executors(full, nats) as executors:
        yield executors["lua"]


async def run_lua(
    executor: Executor,
    content: str,
    payload: bytes | str = b"",
    *,
    html: bool = False,
    method: str = "",
    url: str = "",
    libraries: tuple[str, ...] = (),
    timeout_s: float = 10.0,
) -> Result:
    """Run a script's content once; raises ScriptError as the executor does (the dispatcher makes it a result)."""
    if isinstance(payload, str):
        payload = payload.encode()
    script = Script(subject="test.lua", name="test", content=content, html=html)
    ctx = RunContext(deadline=time.monotonic() + timeout_s, timeout_s=timeout_s, libraries=libraries)
    message = Message(subject="test.lua", payload=payload, method=method, url=url)
    return await executor.run(script, message, ctx)


async def on_message(executor: Executor, body: str, payload: bytes | str = b"", **kwargs: Any) -> bytes | None:
    """Run `body` as the body of OnMessage(subject, payload) and return its payload."""
    content = f"function OnMessage(subject, payload)\n{body}\nend"
    return (await run_lua(executor, content, payload, **kwargs)).payload
