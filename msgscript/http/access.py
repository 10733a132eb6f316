"""Who may use what over HTTP: the browse modes, the bearer token, and the health checks that need neither."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from msgscript.config import BROWSE_LOCAL, BROWSE_OFF, BROWSE_PUBLIC
from msgscript.http import pages
from msgscript.http.keys import READINESS

log = logging.getLogger(__name__)

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"
OPEN_PATHS = frozenset({HEALTHZ_PATH, READYZ_PATH})
"""The routes that answer without the bearer token: probes hold no secret and cannot be given one."""
_PLAIN_UTF8 = "text/plain; charset=utf-8"


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped form (::ffff:127.0.0.1); False for anything else."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_client(request: web.BaseRequest) -> bool:
    """True when the request came over a socket from a loopback address (headers cannot change that)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return isinstance(peer, tuple) and isinstance(peer[0], str) and is_loopback_address(peer[0])


def may_browse(request: web.BaseRequest, mode: str) -> bool:
    """True when `request` may see the browse pages and the internal subjects under browse `mode`."""
    if mode == BROWSE_PUBLIC:
        return True
    if mode == BROWSE_LOCAL:
        return is_loopback_client(request)
    return False


def browse_page(handler: Handler, mode: str) -> Handler:
    """The handler of a browse page under `mode`: the page itself, or a 404 for those who may not see it."""
    if mode == BROWSE_PUBLIC:
        return handler
    if mode == BROWSE_OFF:
        return pages.handle_browse_off

    async def loopback_only(request: web.Request) -> web.StreamResponse:
        if not is_loopback_client(request):
            return await pages.handle_browse_off(request)
        return await handler(request)

    return loopback_only


def _digest(token: bytes) -> bytes:
    # Comparing digests takes the same time whatever the length of the token offered.
    return hashlib.sha256(token).digest()


def bearer_token_middleware(token: str) -> Middleware:
    """Answer 401 to every request but the health checks (OPEN_PATHS) that lacks `Authorization: Bearer <token>`."""
    expected = _digest(token.encode("utf-8", "surrogateescape"))

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            _digest(offered.strip().encode("utf-8", "surrogateescape")), expected
        ):
            return await handler(request)
        log.info("HTTP request without a valid bearer token client=%s path=%s", request.remote, request.path)
        return web.Response(
            status=401,
            body=b"Error: this server wants Authorization: Bearer <token>",
            headers={"Content-Type": _PLAIN_UTF8, "WWW-Authenticate": 'Bearer realm="msgscript"'},
        )

    return require_token


async def handle_healthz(request: web.Request) -> web.Response:
    """200 `ok` while the HTTP server runs: for container and load-balancer health checks."""
    return web.Response(body=b"ok", headers={"Content-Type": _PLAIN_UTF8})


async def handle_readyz(request: web.Request) -> web.Response:
    """200 `ready` while the daemon can serve (NATS connected, scripts loaded); 503 `not ready: <reason>` otherwise."""
    reason = request.app[READINESS]()
    if reason:
        return web.Response(status=503, body=f"not ready: {reason}".encode(), headers={"Content-Type": _PLAIN_UTF8})
    return web.Response(body=b"ready", headers={"Content-Type": _PLAIN_UTF8})
