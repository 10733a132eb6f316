"""The file store: a script directory and a library directory, read once at startup."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from msgscript.errors import ConfigError, ScriptParseError
from msgscript.script import parse_script
from msgscript.store.memory import MemoryStore

log = logging.getLogger(__name__)


def _lua_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"failed to read directory {directory}: {exc.strerror or exc}") from exc
    return [directory / e for e in entries if e.endswith(".lua") and (directory / e).is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ConfigError(f"failed to read script file {path}: {exc.strerror or exc}") from exc


def load_file_store(script_dir: str, library_dir: str = "") -> MemoryStore:
    """Load `*.lua` scripts (not recursive, sorted by file name) and libraries (keyed by their name header).

    Raises:
        ConfigError: a directory or a file cannot be read.
    """
    if not script_dir:
        raise ConfigError("script directory cannot be empty")
    store = MemoryStore()
    directory = Path(script_dir).absolute()
    for path in _lua_files(directory):
        try:
            script = parse_script(_read(path))
        except ScriptParseError as exc:
            log.error("skipping script %s: %s", path, exc)
            continue
        store.add(script)
    log.info("loaded %d scripts from %s", len(store), directory)
    if library_dir:
        libraries = _lua_files(Path(library_dir))
        for path in libraries:
            try:
                library = parse_script(_read(path))
            except ScriptParseError as exc:
                log.error("skipping library %s: %s", path, exc)
                continue
            store.add_library(library.name, library.content)
        log.info("loaded %d libraries from %s", len(libraries), library_dir)
    return store
