"""The `template` Lua module: Mustache templates rendered with Lua tables.

`template.choose("mustache")` returns an engine (or `nil, "unknown template engine: <name>"`) with
`engine:render(text, values)` and `engine:render_file(path, values)`, each returning the rendered string
or `nil, err`. `{{name}}` is HTML-escaped as Go's html escaper does it (`&#34;` and `&#39;` for quotes),
`{{{name}}}` and `{{& name}}` are not; sections iterate over arrays (tables with the keys 1..n), enter
other tables, and are skipped for nil, false, empty strings and empty tables (inverted sections the
reverse); dotted names (`{{user.name}}`) reach into tables. Numbers print the Lua way (`3`, `1.5`).
Partials (`{{> name}}`) and `render_file` read files; relative paths start in the execution's own
directory, and a partial is looked up as `name`, `name.mustache` and `name.stache` (missing: empty).

The module is not inline-safe: render_file and partials read files, and requiring a module is the point
where an execution is moved off the event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import chevron
import chevron.tokenizer

from msgscript.lua.api import ModuleContext, lua_number_text

from ._shared_io import open_for_reading, read_all
from ._shared_text import argument_error, check_string, check_table, is_table, lua_bytes, text

ENGINES = ("mustache",)
PARTIAL_EXTENSIONS = ("", ".mustache", ".stache")
_MAX_NESTING = 200
_MAX_VALUES = 1_000_000
# chevron's tokenizer counts lines in module globals: one tokenization at a time keeps its line numbers right.
_TOKENIZE_LOCK = threading.Lock()
_GO_HTML_ESCAPES = {"&": "&amp;", "'": "&#39;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "\x00": "\ufffd"}
_GO_HTML_TABLE = str.maketrans(_GO_HTML_ESCAPES)
# What rendering charges the script's memory cap (besides text): per value converted for chevron, per table,
# per table entry, and per name looked up or item iterated while rendering.
_VALUE_BYTES = 56
_TABLE_BYTES = 64
_ENTRY_BYTES = 16
_LOOKUP_BYTES = 16
_TOKEN_BYTES = 96


class _Meter:
    """What one rendering charges: every value it prints, and each time a section's text repeats.

    chevron builds its output in one piece, so the charges come from the values it asks for: a name looked up
    (its text, or the text of a section if it opens one) and an item iterated (a section's text again). A
    section's text is bounded by the most literal text any section of the template or its partials holds.
    """

    __slots__ = ("charge", "section_bytes")

    def __init__(self, charge: Callable[[int], None]) -> None:
        self.charge = charge
        self.section_bytes = 0

    def opened(self, value: object) -> None:
        """Charge a value chevron is about to print or enter."""
        if isinstance(value, str):
            self.charge(len(value) + _LOOKUP_BYTES)
        elif isinstance(value, _Scope | _Array):
            self.charge(self.section_bytes + _LOOKUP_BYTES)
        else:
            self.charge(_LOOKUP_BYTES)

    def read(self, tokens: list[tuple[str, str]]) -> None:
        """Note the sections of a template (or partial) about to be rendered, and charge its tokens."""
        self.charge(_TOKEN_BYTES * len(tokens))
        self.section_bytes = max(self.section_bytes, _section_text_bytes(tokens))


def _section_text_bytes(tokens: list[tuple[str, str]]) -> int:
    """The most literal text directly inside one section of the tokens."""
    most = 0
    open_sections: list[int] = []
    for tag, key in tokens:
        if tag in ("section", "inverted section"):
            open_sections.append(0)
        elif tag == "end" and open_sections:
            most = max(most, open_sections.pop())
        elif tag == "literal" and open_sections:
            open_sections[-1] += len(key)
    return max([most, *open_sections])


class TemplateError(Exception):
    """A template that cannot be rendered; the text is returned to the script as `nil, err`."""


# chevron looks a dotted name up with scope[name], falling back to attributes when that raises TypeError
# or AttributeError. The value classes below raise KeyError instead, so that `{{list.pop}}` or
# `{{name.upper}}` finds nothing rather than a Python method.


class _Text(str):
    """A value as it prints. chevron escapes with str.replace, starting with "&": the first call escapes
    the whole text the way Go's html escaper does, which leaves nothing for the later calls to change."""

    __slots__ = ()

    def replace(self, old: str, new: str, count: int = -1) -> str:  # type: ignore[override]
        return str.translate(self, _GO_HTML_TABLE)

    def __getitem__(self, key: object) -> Any:
        raise KeyError(key)


class _Array(list[Any]):
    """A Lua array: a section over it repeats for each item (each repetition charged)."""

    __slots__ = ("_meter",)

    def __init__(self, items: list[Any], meter: _Meter) -> None:
        super().__init__(items)
        self._meter = meter

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            raise KeyError(key)
        return list.__getitem__(self, key)

    def __iter__(self) -> Iterator[Any]:
        meter = self._meter
        for item in list.__iter__(self):
            # The section's text once more, and the item when the section prints it (`{{.}}`).
            meter.charge(meter.section_bytes + _LOOKUP_BYTES + (len(item) if isinstance(item, str) else 0))
            yield item


class _Scope(dict[str, Any]):
    """A Lua table that is not an array: a section over it enters it once; names are looked up in it."""

    __slots__ = ("_meter",)

    def __init__(self, items: dict[str, Any], meter: _Meter) -> None:
        super().__init__(items)
        self._meter = meter

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        self._meter.opened(value)
        return value


class _False:
    """Lua's false: prints as `false` and counts as false in sections."""

    _CHEVRON_return_scope_when_falsy = True

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return "false"

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def __getitem__(self, key: object) -> Any:
        raise KeyError(key)


_FALSE = _False()
_NOTHING = _Text("")
"""Functions, userdata and threads: they print as nothing and count as false."""


def to_template_value(value: Any, meter: _Meter) -> Any:
    """A Lua value as chevron reads it: arrays (keys 1..n) become lists, other tables dicts; each copy is
    charged to the script's memory cap through the meter.

    Raises:
        TemplateError: the tables nest deeper than _MAX_NESTING (a table containing itself does), or
            hold more than _MAX_VALUES values in all (shared subtables count each time they are met).
        MemoryError: the copy would take the script past its memory cap.
    """
    budget = [_MAX_VALUES]
    return _convert(value, 0, budget, meter)


def _convert(value: Any, depth: int, budget: list[int], meter: _Meter) -> Any:
    if value is None:
        return _NOTHING
    if value is True:
        return _Text("true")
    if value is False:
        return _FALSE
    if isinstance(value, int | float):
        meter.charge(_VALUE_BYTES)
        return _Text(lua_number_text(value))
    if isinstance(value, bytes):
        meter.charge(len(value) + _VALUE_BYTES)
        return _Text(text(value))
    if not is_table(value):
        return _NOTHING
    if depth >= _MAX_NESTING:
        raise TemplateError("cannot render recursively nested tables")
    items = []
    for item in value.items():
        meter.charge(_ENTRY_BYTES)
        items.append(item)
    meter.charge(_TABLE_BYTES)
    budget[0] -= len(items)
    if budget[0] < 0:
        raise TemplateError("too many values to render")
    if _is_array(items):
        items.sort(key=lambda item: item[0])
        return _Array([_convert(item, depth + 1, budget, meter) for _, item in items], meter)
    converted = {}
    for key, item in items:
        if isinstance(key, bytes):
            name = text(key)
        elif isinstance(key, int | float) and not isinstance(key, bool):
            name = lua_number_text(key)
        else:
            continue
        converted[name] = _convert(item, depth + 1, budget, meter)
    return _Scope(converted, meter)


def _is_array(items: list[tuple[Any, Any]]) -> bool:
    keys = {key for key, _ in items if isinstance(key, int | float) and not isinstance(key, bool)}
    return len(keys) == len(items) and keys == set(range(1, len(items) + 1))


class _Partials(Mapping[str, str]):
    """Partials read from files on demand, relative to the execution's directory; each read charged (a
    partial is read again each time it is rendered, so a section repeating it repeats the charge)."""

    def __init__(self, ctx: ModuleContext, meter: _Meter) -> None:
        self._ctx = ctx
        self._meter = meter

    def __getitem__(self, name: str) -> str:
        base = name if name.startswith("/") else os.path.join(self._ctx.workdir(), name)
        for extension in PARTIAL_EXTENSIONS:
            try:
                content = read_file(self._ctx, base + extension)
            except OSError:
                continue
            partial = text(content)
            self._meter.charge(len(partial))
            try:
                self._meter.read(_tokens(partial))
            except TemplateError:
                pass  # chevron reports it when it renders the partial
            return partial
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _tokens(template: str) -> list[tuple[str, str]]:
    """Tokenize a template, turning chevron's complaints into `line N: ...` errors."""
    with _TOKENIZE_LOCK:
        try:
            return list(chevron.tokenizer.tokenize(template))
        except chevron.tokenizer.ChevronError as exc:
            raise TemplateError(_syntax_error(str(exc), template)) from None
        except IndexError:
            raise TemplateError(f"line {chevron.tokenizer._CURRENT_LINE}: empty tag") from None


def _syntax_error(message: str, template: str = "") -> str:
    """chevron's multi-line messages as one line in the Go library's manner (`line 3: unmatched open tag`)."""
    line = message.rsplit(" ", 1)[-1]
    if message.startswith("unclosed tag"):
        return f"line {line}: unmatched open tag"
    if message.startswith("unclosed set delimiter"):
        return f"line {line}: invalid meta tag"
    tag = message.split('"')[1] if '"' in message else ""
    if "Looks like it was not opened" in message or "last open tag is" in message:
        problem = "unmatched close tag" if "not opened" in message else "interleaved closing tag"
        if template:
            line = str(_closing_tag_line(template, message.split("\n", 1)[0]))
        return f"line {line}: {problem}: {tag}"
    if message.startswith("Unexpected EOF"):
        return f"line {line}: section {tag} has no closing tag"
    return message.replace("\n", " ")


def _closing_tag_line(template: str, complaint: str) -> int:
    """The line of the closing tag chevron complained about.

    chevron's own count drifts (it drops the line ends of standalone tags uncounted), so find the shortest
    start of the template that already draws the same complaint: it ends with the offending tag.
    """

    def complains(size: int) -> bool:
        try:
            for _ in chevron.tokenizer.tokenize(template[:size]):
                pass
        except chevron.tokenizer.ChevronError as exc:
            return str(exc).startswith(complaint)
        except IndexError:
            return False
        return False

    low, high = 0, len(template)
    while low < high:
        middle = (low + high) // 2
        if complains(middle):
            high = middle
        else:
            low = middle + 1
    return template.count("\n", 0, low) + 1


def read_file(ctx: ModuleContext, path: str) -> bytes:
    """A template or partial file's content, charged to the script's memory cap as it is read.

    Raises:
        OSError: the file cannot be opened or read.
        TimeoutError: the deadline passed while waiting for a pipe.
        MemoryError: the file is larger than the cap leaves.
    """
    fd = open_for_reading(path)
    try:
        return read_all(ctx, fd)
    finally:
        os.close(fd)


def render(template: bytes, values: Any, partials: Mapping[str, str], meter: _Meter) -> bytes:
    """Render a Mustache template with a Lua table of values, charging the work through the meter.

    Raises:
        TemplateError: the template is malformed or the values nest too deeply.
        MemoryError: the copy of the values or the output would take the script past its memory cap.
    """
    source = text(template)
    meter.charge(len(source))
    tokens = _tokens(source)
    meter.read(tokens)
    data = to_template_value(values, meter)
    try:
        output = chevron.render(tokens, data, partials_path=None, partials_dict=partials)
    except chevron.tokenizer.ChevronError as exc:  # in a partial
        raise TemplateError(_syntax_error(str(exc))) from None
    except RecursionError:
        raise TemplateError("template nesting too deep") from None
    return lua_bytes(output)


class TemplateModule:
    """Builds the `template` table for one execution."""

    name = "template"
    inline_safe = False
    """render_file and partials read files."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{choose = ...}`."""

        def check_engine(engine: object, function: str) -> None:
            if not is_table(engine):
                raise argument_error(1, function, "template expected")

        def render_text(engine: object = None, body: object = None, values: object = None, *_: object) -> object:
            check_engine(engine, "render")
            template = check_string(body, 2, "render")
            table = check_table(values, 3, "render")
            meter = _Meter(ctx.charge)
            try:
                return render(template, table, _Partials(ctx, meter), meter)
            except TemplateError as exc:
                return (None, str(exc))

        def render_file(engine: object = None, path: object = None, values: object = None, *_: object) -> object:
            check_engine(engine, "render_file")
            name = text(check_string(path, 2, "render_file"))
            table = check_table(values, 3, "render_file")
            full = name if name.startswith("/") else os.path.join(ctx.workdir(), name)
            try:
                fd = open_for_reading(full)
            except OSError as exc:
                return (None, f"open {name}: {_errno_text(exc)}")
            try:
                template = read_all(ctx, fd)
            except IsADirectoryError:
                return (None, f"read {name}: is a directory")
            except OSError as exc:
                return (None, f"read {name}: {_errno_text(exc)}")
            finally:
                os.close(fd)
            meter = _Meter(ctx.charge)
            try:
                return render(template, table, _Partials(ctx, meter), meter)
            except TemplateError as exc:
                return (None, str(exc))

        def choose(engine: object = None, *_: object) -> object:
            kind = check_string(engine, 1, "choose")
            if text(kind) not in ENGINES:
                return (None, b"unknown template engine: " + kind)
            return {"render": render_text, "render_file": render_file}

        return {"choose": choose}


def _errno_text(exc: OSError) -> str:
    """The cause of an OS error in Go's words (`no such file or directory`)."""
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


module = TemplateModule()
