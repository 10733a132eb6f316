"""The `test` Lua module of `msgscriptcli test`: assertions, and the test run's scripts called in-process.

Only the test bed (msgscript.testbed) hands it to the test files it runs. It is no entry point of the
`msgscript.lua_modules` group, so neither the scripts the daemon serves nor the scripts under test can
`require` it. The assertions are Lua (testing.lua), so that a failure points at the test file's line;
`test.invoke` and `test.http` wait here, on the test's worker thread, for the event loop to answer.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from msgscript.lua.args import check_string
from msgscript.lua.contract import ModuleContext, lua_chunk
from msgscript.lua.runtime import CHUNK_NAME, TIMEOUT_MESSAGE, as_text
from msgscript.message import Message, Reply, Result

_SOURCE = files("msgscript.lua").joinpath("testing.lua").read_bytes()


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What the gateway answered to `test.http`."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    """Header names as sent; a header sent several times has its values joined by `, `."""


Invoke = Callable[[Message], Coroutine[Any, Any, Reply]]
"""Runs a message's scripts and answers their Reply (the dispatcher's `dispatch`)."""
HttpCall = Callable[[str, str, bytes, list[tuple[str, str]]], Coroutine[Any, Any, HttpAnswer]]
"""Sends `method path` with a body and headers to the gateway."""


def result_table(result: Result) -> dict[str, object]:
    """One result as test files see it: `payload` (a string), `error` (nil when none), `status`, `headers`, `html`."""
    status = (result.http_code or 200) if result.is_html else result.http_code
    return {
        "payload": result.payload or b"",
        "error": result.error or None,
        "status": status,
        "headers": dict(result.http_headers or {}),
        "html": result.is_html,
    }


def reply_table(reply: Reply) -> dict[str, object]:
    """What `test.invoke` returns: the first result's `payload` and `error` (or the Reply's error), and `results`."""
    results = reply.results or ()
    first = results[0] if results else None
    error = reply.error or (first.error if first is not None else "")
    return {
        "payload": (first.payload or b"") if first is not None else b"",
        "error": error or None,
        "results": [result_table(result) for result in results],
    }


class LuaTestModule:
    """`require("test")` in a test file: bound to one test run's dispatcher (`invoke`) and gateway (`http`, `url`)."""

    name = "test"
    inline_safe = False

    def __init__(self, invoke: Invoke, http: HttpCall, url: str) -> None:
        self._invoke = invoke
        self._http = http
        self._url = url

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Build the module's table for one execution."""

        def invoke(subject: object, payload: object, method: object, url: object) -> dict[str, object]:
            message = Message(
                subject=as_text(check_string(subject, 1, "invoke")),
                payload=check_string(payload, 2, "invoke"),
                method=as_text(check_string(method, 3, "invoke")),
                url=as_text(check_string(url, 4, "invoke")),
            )
            return reply_table(ctx.call(self._invoke(message)))

        def http(method: object, path: object, body: object, *flat: object) -> dict[str, object]:
            headers = [
                (as_text(check_string(flat[i], 4, "http")), as_text(check_string(flat[i + 1], 4, "http")))
                for i in range(0, len(flat) - 1, 2)
            ]
            answer = ctx.call(
                self._http(
                    as_text(check_string(method, 1, "http")),
                    as_text(check_string(path, 2, "http")),
                    check_string(body, 3, "http"),
                    headers,
                )
            )
            return {"status": answer.status, "body": answer.body, "headers": dict(answer.headers)}

        build = lua_chunk(lua, "test", _SOURCE)
        return build(
            ctx.to_lua(invoke),
            ctx.to_lua(http),
            self._url.encode(),
            CHUNK_NAME.encode(),
            TIMEOUT_MESSAGE.encode(),
        )
