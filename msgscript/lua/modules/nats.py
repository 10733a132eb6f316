"""The `nats` Lua module: publish on, and request from, the daemon's NATS connection.

`nats.publish(subject, data)` returns `true`, or `false, "Not connected to NATS"` without a connection
(msgscriptcli dev), or `false, "Failed to publish message: <err>"`, as in the Go msgscript.
`nats.request(subject, data [, timeout_s])` is ours (scripts calling scripts): it returns the reply data
and nil, or nil and an error. The timeout defaults to 5 s and never outlasts the script's deadline.
`nats.jspublish(subject, data [, msg_id])` publishes into the JetStream stream capturing the subject and
returns the stream sequence once the message is stored, or nil and an error; `msg_id` becomes its
`Nats-Msg-Id` (a stream stores a message only once per id). All three carry the script's trace context in
their headers when tracing is on.
"""

from __future__ import annotations

from typing import Any

from msgscript import tracing
from msgscript.lua.args import check_string, is_number, opt_string
from msgscript.lua.contract import ModuleContext
from msgscript.lua.runtime import error_text
from msgscript.message import MSG_ID_HEADER

DEFAULT_REQUEST_TIMEOUT_S = 5.0
NOT_CONNECTED = "Not connected to NATS"


def _subject(value: bytes) -> str:
    return value.decode("utf-8", "replace")


# Run on the event loop in the execution's context, so that the script's span is the parent of these.


async def _publish(nc: Any, subject: str, data: bytes) -> None:
    with tracing.span("nats.publish", kind="producer", attributes={"nats.subject": subject}):
        await nc.publish(subject, data, headers=tracing.headers())


async def _request(nc: Any, subject: str, data: bytes, timeout: float) -> Any:
    with tracing.span("nats.request", kind="client", attributes={"nats.subject": subject}):
        return await nc.request(subject, data, timeout=timeout, headers=tracing.headers())


async def _jspublish(nc: Any, subject: str, data: bytes, msg_id: str, timeout: float) -> int:
    with tracing.span("nats.jspublish", kind="producer", attributes={"nats.subject": subject}):
        headers = tracing.headers({MSG_ID_HEADER: msg_id} if msg_id else None)
        ack = await nc.jetstream().publish(subject, data, headers=headers, timeout=timeout)
        return int(ack.seq)


class NatsModule:
    """Builds the `nats` table for one execution, bound to its context."""

    name = "nats"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{publish = ..., request = ...}`."""
        nc = ctx.nats

        def publish(subject: object = None, data: object = None, *_: object) -> tuple[object, ...]:
            subject_b = check_string(subject, 1, "publish")
            data_b = check_string(data, 2, "publish")
            if nc is None:
                return (False, NOT_CONNECTED)
            try:
                ctx.call(_publish(nc, _subject(subject_b), data_b))
            except Exception as exc:
                return (False, f"Failed to publish message: {error_text(exc)}")
            return (True,)

        def request(
            subject: object = None, data: object = None, timeout_s: object = None, *_: object
        ) -> tuple[object, ...]:
            subject_b = check_string(subject, 1, "request")
            data_b = opt_string(data, 2, "request")
            if nc is None:
                return (None, NOT_CONNECTED)
            timeout = DEFAULT_REQUEST_TIMEOUT_S
            if is_number(timeout_s) and timeout_s > 0:
                timeout = float(timeout_s)
            timeout = min(timeout, ctx.remaining_s())
            if timeout <= 0:
                return (None, "nats: timeout")
            try:
                reply = ctx.call(_request(nc, _subject(subject_b), data_b, timeout))
            except Exception as exc:
                return (None, error_text(exc))
            return (bytes(reply.data), None)

        def jspublish(
            subject: object = None, data: object = None, msg_id: object = None, *_: object
        ) -> tuple[object, ...]:
            subject_b = check_string(subject, 1, "jspublish")
            data_b = check_string(data, 2, "jspublish")
            id_b = opt_string(msg_id, 3, "jspublish")
            if nc is None:
                return (None, NOT_CONNECTED)
            timeout = min(DEFAULT_REQUEST_TIMEOUT_S, ctx.remaining_s())
            if timeout <= 0:
                return (None, "nats: timeout")
            msg_id_text = id_b.decode("utf-8", "replace") if id_b else ""
            try:
                sequence = ctx.call(_jspublish(nc, _subject(subject_b), data_b, msg_id_text, timeout))
            except Exception as exc:
                return (None, error_text(exc))
            return (sequence, None)

        return {"publish": publish, "request": request, "jspublish": jspublish}


module = NatsModule()
