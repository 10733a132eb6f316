"""The `runtime` Lua module: `runtime.goos()` and `runtime.goarch()` name the platform the way Go does.

Go reports the platform it was compiled for (`linux`, `darwin`, `windows`; `amd64`, `arm64`, `386`);
here the names come from the running interpreter, translated to Go's spelling so that scripts which
branch on them behave the same.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from msgscript.lua.api import ModuleContext

# sys.platform prefixes → GOOS.
_GOOS = (
    ("linux", "linux"),
    ("darwin", "darwin"),
    ("win32", "windows"),
    ("cygwin", "windows"),
    ("freebsd", "freebsd"),
    ("openbsd", "openbsd"),
    ("netbsd", "netbsd"),
    ("dragonfly", "dragonfly"),
    ("sunos", "solaris"),
    ("aix", "aix"),
)

# platform.machine() values (lower case) → GOARCH.
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "arm",
    "armv7l": "arm",
    "armv6l": "arm",
    "armv5tel": "arm",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips": "mips",
    "mipsel": "mipsle",
    "mips64": "mips64",
    "mips64el": "mips64le",
    "loongarch64": "loong64",
    "wasm32": "wasm",
}


def go_os(name: str = sys.platform) -> str:
    """GOOS for a sys.platform value (unknown systems keep their name without a version suffix)."""
    for prefix, goos in _GOOS:
        if name.startswith(prefix):
            return goos
    return name.rstrip("0123456789") or name


def go_arch(machine: str | None = None) -> str:
    """GOARCH for a platform.machine() value (unknown machines keep their lower-case name)."""
    name = (platform.machine() if machine is None else machine).lower()
    return _GOARCH.get(name, name)


class RuntimeModule:
    """Builds the `runtime` table for one execution."""

    name = "runtime"
    inline_safe = True
    """Pure computation: scripts using it may run on the event loop."""

    def __init__(self) -> None:
        self._goos = go_os()
        self._goarch = go_arch()

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{goos = ..., goarch = ...}`."""
        goos, goarch = self._goos, self._goarch

        def goos_(*_: object) -> str:
            return goos

        def goarch_(*_: object) -> str:
            return goarch

        return {"goos": goos_, "goarch": goarch_}


module = RuntimeModule()
