"""The `crypto` Lua module: `crypto.md5(s)` and `crypto.sha256(s)` return the digest as lowercase hex.

These are the two functions of the Go library's version that the Go msgscript bundles. A number
argument is hashed in its Lua text (`md5(1)` is the digest of "1"); anything else but a string raises.
"""

from __future__ import annotations

import hashlib
from typing import Any

from msgscript.lua.api import ModuleContext

from ._shared_text import check_string


class CryptoModule:
    """Builds the `crypto` table for one execution."""

    name = "crypto"
    inline_safe = True
    """Pure computation: scripts using it may run on the event loop."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{md5 = ..., sha256 = ...}`."""

        def md5(value: object = None, *_: object) -> str:
            return hashlib.md5(check_string(value, 1, "md5"), usedforsecurity=False).hexdigest()

        def sha256(value: object = None, *_: object) -> str:
            return hashlib.sha256(check_string(value, 1, "sha256")).hexdigest()

        return {"md5": md5, "sha256": sha256}


module = CryptoModule()
