"""msgscript: run small functions (Lua, WASM, Podman) when NATS messages or HTTP requests arrive."""

from __future__ import annotations

from msgscript.message import Message, Reply, Result
from msgscript.script import Script, parse_script

__version__ = "0.1.0"

__all__ = ["Message", "Reply", "Result", "Script", "__version__", "parse_script"]
