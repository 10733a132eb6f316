"""msgscript: run small functions (Lua, WASM, Podman) when NATS messages or HTTP requests arrive."""

from __future__ import annotations

from importlib import metadata

from msgscript.message import Message, Reply, Result
from msgscript.script import Script, parse_script

try:
    __version__ = metadata.version("msgscript")
except metadata.PackageNotFoundError:  # a checkout run without installing it
    __version__ = "0+unknown"

__all__ = ["Message", "Reply", "Result", "Script", "__version__", "parse_script"]
