"""The HTTP side of the daemon: the function gateway on `/<subject>` and the browse pages under `/_/`."""

from __future__ import annotations

from msgscript.http.server import build_app, http_site

__all__ = ["build_app", "http_site"]
