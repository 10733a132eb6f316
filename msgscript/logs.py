"""Logging configuration for the commands: logfmt lines (`time=… level=… msg=…`) on stderr."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}

_LEVEL_NAMES = {
    logging.CRITICAL: "fatal",
    logging.ERROR: "error",
    logging.WARNING: "warning",
    logging.INFO: "info",
    logging.DEBUG: "debug",
}


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt, the shape of the Go server's logrus text output; with a `worker`, each line
    ends with `worker=<index>` (a daemon with several workers)."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self._suffix = f" worker={_quote(worker)}" if worker else ""

    def format(self, record: logging.LogRecord) -> str:
        """One logfmt line; a traceback follows on the next lines."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        offset = time.strftime("%z", time.localtime(record.created))
        offset = offset[:3] + ":" + offset[3:] if offset else "Z"
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        line = f"time={stamp}{offset} level={level} msg={_quote(record.getMessage())}{self._suffix}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def parse_level(name: str) -> int:
    """The logging level for a logrus level name; raises ValueError for an unknown one."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"Invalid log level: {name}") from None


def configure_logging(level: int, *, worker: str = "") -> None:
    """Send msgscript's logs to stderr as logfmt at `level`, each line naming `worker` when one is given."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("msgscript").setLevel(level)
