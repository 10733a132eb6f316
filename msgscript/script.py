"""Script files: the `--* key: value` headers and the Script value (also the etcd JSON document)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace

from msgscript import _gojson
from msgscript.cron import CronSchedule, parse_cron
from msgscript.durations import parse_duration
from msgscript.errors import ScriptParseError

HEADER_PREFIX = "--*"
# Headers the Go msgscript knows: their lines are removed from the content.
_UPSTREAM_KEYS = frozenset({"subject", "name", "require", "html", "http", "executor"})
# Our own headers stay in the content, so they survive a round trip through the
# upstream Script JSON (which has no field for them) and read as comments to Go.
_EXTENSION_KEYS = frozenset({"timeout", "lock", "durable", "stream", "retries", "backoff", "cron"})

DEFAULT_RETRIES = 5
"""Deliveries of a durable message after the first, when the script says nothing (`--* retries: N`)."""
DEFAULT_BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
"""Delays before the redeliveries of a failed durable message (`--* backoff: 1s,5s`); the last one repeats."""

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool, where anything that is not true (errors included) is false."""
    return value in _TRUE


@dataclass(frozen=True, slots=True)
class Script:
    """A parsed script: where it listens, how it runs, and its header-stripped source."""

    subject: str = ""
    name: str = ""
    content: str = ""
    executor_header: str = ""
    """The `--* executor:` header as written (the Script JSON's `executor`); empty means Lua."""
    html: bool = False
    libraries: tuple[str, ...] = ()
    timeout_s: float | None = None
    lock: bool = False
    durable: bool = False
    """Triggered from JetStream, at least once (docs/durable.md), instead of core NATS."""
    stream: str = ""
    """The user's stream a durable script consumes from; empty: the daemon's own (`-stream`)."""
    retries: int = DEFAULT_RETRIES
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    cron: CronSchedule | None = None
    """When the script also runs on its own (`--* cron:`), with `OnMessage(<subject>, "")`: msgscript.schedules."""
    executor: str = field(init=False, repr=False, compare=False)
    """The name of the executor that runs this script (a field rather than a property: it is read per message)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "executor", self.executor_header or "lua")

    def to_json(self) -> bytes:
        """Encode as the upstream Script JSON (the etcd value): content base64, Go field order and escaping."""
        content = base64.b64encode(self.content.encode("utf-8", "surrogateescape")).decode("ascii")
        libraries = "[" + ",".join(_gojson.go_string(lib) for lib in self.libraries) + "]" if self.libraries else "null"
        return (
            f'{{"content":"{content}","executor":{_gojson.go_string(self.executor_header)},'
            f'"is_html":{"true" if self.html else "false"},"libraries":{libraries},'
            f'"name":{_gojson.go_string(self.name)},"subject":{_gojson.go_string(self.subject)}}}'
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Script:
        """Decode the upstream Script JSON strictly (Go's types); our own headers are read back from the content.

        Raises:
            ScriptParseError: when the data is not a Script document or carries an unusable header value.
        """
        try:
            doc = _gojson.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            found = _gojson.fields(doc, _JSON_FIELDS)
            encoded = _gojson.optional_str(found.get("content"), "content")
            content = _gojson.b64decode(encoded).decode("utf-8", "surrogateescape")
            libraries = found.get("libraries")
            if libraries is not None and not isinstance(libraries, list):
                raise ValueError("libraries must be an array of strings")
            html = found.get("is_html")
            if html is not None and not isinstance(html, bool):
                raise ValueError("is_html must be a boolean")
            base = cls(
                subject=_gojson.optional_str(found.get("subject"), "subject"),
                name=_gojson.optional_str(found.get("name"), "name"),
                content=content,
                executor_header=_gojson.optional_str(found.get("executor"), "executor"),
                html=bool(html),
                libraries=tuple(_gojson.optional_str(lib, "libraries") for lib in libraries or ()),
            )
        except ValueError as exc:
            raise ScriptParseError(f"invalid script JSON: {exc}") from exc
        return _with_extensions(base, _read_extension_headers(content))


_JSON_FIELDS = frozenset({"content", "executor", "is_html", "libraries", "name", "subject"})


def _lines(text: str) -> list[str]:
    """Split text like Go's bufio.Scanner lines: on LF, one trailing CR dropped, no empty last line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _split_header(line: str) -> tuple[str, str]:
    """Return (key, value) of a candidate header line, with Go's single-space splitting."""
    parts = line.split(" ")
    key = parts[1] if len(parts) >= 2 else ""
    if key.endswith(":"):
        key = key[:-1]
    value = " ".join(parts[2:]) if len(parts) >= 3 else ""
    return key, value


def _read_extension_headers(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in _lines(text):
        if line.startswith(HEADER_PREFIX):
            key, value = _split_header(line)
            if key in _EXTENSION_KEYS:
                found[key] = value
    return found


def _with_extensions(script: Script, ext: dict[str, str]) -> Script:
    timeout_s: float | None = None
    if "timeout" in ext:
        raw = ext["timeout"].strip()
        try:
            timeout_s = parse_duration(raw)
        except ValueError as exc:
            raise ScriptParseError(f"invalid timeout header {raw!r}: {exc}") from exc
        if timeout_s <= 0:
            raise ScriptParseError(f"invalid timeout header {raw!r}: must be positive")
    lock = parse_bool(ext.get("lock", "").strip())
    # An HTML-mode script answers HTTP methods; a durable message has none.
    durable = parse_bool(ext.get("durable", "").strip()) and not script.html
    stream = ext.get("stream", "").strip()
    if stream and not _is_stream_name(stream):
        raise ScriptParseError(f"invalid stream header {stream!r}: a stream name has no spaces, '.', '*', '>', '/'")
    retries = DEFAULT_RETRIES
    if "retries" in ext:
        raw = ext["retries"].strip()
        if not raw.isdigit():
            raise ScriptParseError(f"invalid retries header {raw!r}: expected a number of redeliveries (0 or more)")
        retries = int(raw)
    backoff_s = DEFAULT_BACKOFF_S
    if "backoff" in ext:
        raw = ext["backoff"].strip()
        try:
            backoff_s = tuple(parse_duration(part.strip()) for part in raw.split(","))
        except ValueError as exc:
            raise ScriptParseError(f"invalid backoff header {raw!r}: {exc}") from exc
        if any(delay < 0 for delay in backoff_s):
            raise ScriptParseError(f"invalid backoff header {raw!r}: delays cannot be negative")
    cron = _cron(ext["cron"].strip(), html=script.html) if "cron" in ext else None
    return replace(
        script,
        timeout_s=timeout_s,
        lock=lock,
        durable=durable,
        stream=stream,
        retries=retries,
        backoff_s=backoff_s,
        cron=cron,
    )


def _cron(raw: str, *, html: bool) -> CronSchedule:
    try:
        schedule = parse_cron(raw)
    except ValueError as exc:
        raise ScriptParseError(f"invalid cron header {raw!r}: {exc}") from exc
    if html:
        # An HTML-mode script answers HTTP methods (`GET(url, body)`); a tick has none to call.
        raise ScriptParseError(f"invalid cron header {raw!r}: an HTML-mode script cannot run on a schedule")
    return schedule


def _is_stream_name(name: str) -> bool:
    return not any(c in name for c in " \t.*>/\\") and name.isprintable()


def parse_script(text: str) -> Script:
    """Parse a script file's text.

    Raises:
        ScriptParseError: when one of our own headers (`timeout`, `cron`, …) has an unusable value.
    """
    subject = name = executor = ""
    html = False
    libraries: list[str] = []
    ext: dict[str, str] = {}
    kept: list[str] = []
    for line in _lines(text):
        if line.startswith(HEADER_PREFIX):
            key, value = _split_header(line)
            if key in _UPSTREAM_KEYS:
                if key == "subject":
                    subject = value
                elif key == "name":
                    name = value
                elif key == "require":
                    libraries.append(value)
                elif key in ("html", "http"):
                    html = parse_bool(value)
                else:
                    executor = value
                continue
            if key in _EXTENSION_KEYS:
                ext[key] = value
        kept.append(line)
    content = "".join(line + "\n" for line in kept)
    if content.endswith("\n"):
        content = content[:-1]
    base = Script(
        subject=subject, name=name, content=content, executor_header=executor, html=html, libraries=tuple(libraries)
    )
    return _with_extensions(base, ext)


def render_script(script: Script) -> str:
    """Script file text for `script`: its upstream headers (those that are set), then its content.

    Our own headers (`timeout`, `lock`, …) are part of the content already. `parse_script` reads the text back
    as `script` unless a value holds a line break or the content holds upstream header lines (possible in a
    Script built by hand or read from JSON); callers that need the same script check.
    """
    headers = [(key, value) for key, value in (("subject", script.subject), ("name", script.name)) if value]
    headers += [("require", library) for library in script.libraries]
    if script.html:
        headers.append(("html", "true"))
    if script.executor_header:
        headers.append(("executor", script.executor_header))
    head = "".join(f"{HEADER_PREFIX} {key}: {value}\n" for key, value in headers)
    return head + script.content + ("\n" if script.content else "")
