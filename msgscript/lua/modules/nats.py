"""The `nats` Lua module: publish on, and request from, the daemon's NATS connection.

`nats.publish(subject, data)` returns `true`, or `false, "Not connected to NATS"` without a connection
(msgscriptcli dev), or `false, "Failed to publish message: <err>"`, as in the Go msgscript.
`nats.request(subject, data [, timeout_s])` is ours (scripts calling scripts): it returns the reply data
and nil, or nil and an error. The timeout defaults to 5 s and never outlasts the script's deadline.
"""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lupa51

from msgscript.lua.module import ModuleContext
from msgscript.lua.runtime import error_text, lua_number_text

DEFAULT_REQUEST_TIMEOUT_S = 5.0
NOT_CONNECTED = "Not connected to NATS"


class _ArgumentError(Exception):
    pass


def _string_arg(value: object, position: int, function: str) -> bytes:
    """Coerce a Lua argument to bytes like luaL_checkstring: strings and numbers only."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return lua_number_text(value).encode()
    kind = "nil" if value is None else "boolean" if isinstance(value, bool) else lupa51.lua_type(value) or "userdata"
    raise _ArgumentError(f"bad argument #{position} to '{function}' (string expected, got {kind})")


def _subject(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class NatsModule:
    """Builds the `nats` table for one execution, bound to its context."""

    name = "nats"

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{publish = ..., request = ...}`."""
        nc = ctx.nats

        def publish(subject: object = None, data: object = None, *_: object) -> tuple[object, ...]:
            subject_b = _string_arg(subject, 1, "publish")
            data_b = _string_arg(data, 2, "publish")
            if nc is None:
                return (False, NOT_CONNECTED)
            try:
                ctx.call(nc.publish(_subject(subject_b), data_b))
            except Exception as exc:
                return (False, f"Failed to publish message: {error_text(exc)}")
            return (True,)

        def request(
            subject: object = None, data: object = None, timeout_s: object = None, *_: object
        ) -> tuple[object, ...]:
            subject_b = _string_arg(subject, 1, "request")
            data_b = b"" if data is None else _string_arg(data, 2, "request")
            if nc is None:
                return (None, NOT_CONNECTED)
            timeout = DEFAULT_REQUEST_TIMEOUT_S
            if isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool) and timeout_s > 0:
                timeout = float(timeout_s)
            timeout = min(timeout, ctx.remaining_s())
            if timeout <= 0:
                return (None, "nats: timeout")
            try:
                reply = ctx.call(nc.request(_subject(subject_b), data_b, timeout=timeout))
            except Exception as exc:
                return (None, error_text(exc))
            return (bytes(reply.data), None)

        return {"publish": publish, "request": request}


module = NatsModule()
