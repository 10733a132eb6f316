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
from collections.abc import Iterator, Mapping
from typing import Any

import chevron
import chevron.tokenizer

from msgscript.lua.module import ModuleContext
from msgscript.lua.runtime import lua_number_text

from ._shared_text import argument_error, check_string, check_table, is_table, lua_bytes, text

ENGINES = ("mustache",)
PARTIAL_EXTENSIONS = ("", ".mustache", ".stache")
_MAX_NESTING = 200
_MAX_VALUES = 1_000_000
# chevron's tokenizer counts lines in module globals: one tokenization at a time keeps its line numbers right.
_TOKENIZE_LOCK = threading.Lock()
_GO_HTML_ESCAPES = {"&": "&amp;", "'": "&#39;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "\x00": "\ufffd"}
_GO_HTML_TABLE = str.maketrans(_GO_HTML_ESCAPES)


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
    """A Lua array: a section over it repeats for each item."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            raise KeyError(key)
        return list.__getitem__(self, key)


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


def to_template_value(value: Any) -> Any:
    """A Lua value as chevron reads it: arrays (keys 1..n) become lists, other tables dicts.

    Raises:
        TemplateError: the tables nest deeper than _MAX_NESTING (a table containing itself does), or
            hold more than _MAX_VALUES values in all (shared subtables count each time they are met).
    """
    budget = [_MAX_VALUES]
    return _convert(value, 0, budget)


def _convert(value: Any, depth: int, budget: list[int]) -> Any:
    if value is None:
        return _NOTHING
    if value is True:
        return _Text("true")
    if value is False:
        return _FALSE
    if isinstance(value, int | float):
        return _Text(lua_number_text(value))
    if isinstance(value, bytes):
        return _Text(text(value))
    if not is_table(value):
        return _NOTHING
    if depth >= _MAX_NESTING:
        raise TemplateError("cannot render recursively nested tables")
    items = list(value.items())
    budget[0] -= len(items)
    if budget[0] < 0:
        raise TemplateError("too many values to render")
    if _is_array(items):
        items.sort(key=lambda item: item[0])
        return _Array(_convert(item, depth + 1, budget) for _, item in items)
    converted = {}
    for key, item in items:
        if isinstance(key, bytes):
            name = text(key)
        elif isinstance(key, int | float) and not isinstance(key, bool):
            name = lua_number_text(key)
        else:
            continue
        converted[name] = _convert(item, depth + 1, budget)
    return converted


def _is_array(items: list[tuple[Any, Any]]) -> bool:
    keys = {key for key, _ in items if isinstance(key, int | float) and not isinstance(key, bool)}
    return len(keys) == len(items) and keys == set(range(1, len(items) + 1))


class _Partials(Mapping[str, str]):
    """Partials read from files on demand, relative to the execution's directory."""

    def __init__(self, ctx: ModuleContext) -> None:
        self._ctx = ctx

    def __getitem__(self, name: str) -> str:
        base = name if name.startswith("/") else os.path.join(self._ctx.workdir(), name)
        for extension in PARTIAL_EXTENSIONS:
            try:
                with open(base + extension, "rb") as handle:
                    return text(handle.read())
            except OSError:
                continue
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


def render(template: bytes, values: Any, partials: Mapping[str, str]) -> bytes:
    """Render a Mustache template with a Lua table of values.

    Raises:
        TemplateError: the template is malformed or the values nest too deeply.
    """
    tokens = _tokens(text(template))
    data = to_template_value(values)
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
    # Not inline_safe: render_file and partials read files.

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{choose = ...}`."""
        partials = _Partials(ctx)

        def check_engine(engine: object, function: str) -> None:
            if not is_table(engine):
                raise argument_error(1, function, "template expected")

        def render_text(engine: object = None, body: object = None, values: object = None, *_: object) -> object:
            check_engine(engine, "render")
            template = check_string(body, 2, "render")
            table = check_table(values, 3, "render")
            try:
                return render(template, table, partials)
            except TemplateError as exc:
                return (None, str(exc))

        def render_file(engine: object = None, path: object = None, values: object = None, *_: object) -> object:
            check_engine(engine, "render_file")
            name = text(check_string(path, 2, "render_file"))
            table = check_table(values, 3, "render_file")
            full = name if name.startswith("/") else os.path.join(ctx.workdir(), name)
            try:
                with open(full, "rb") as handle:
                    template = handle.read()
            except IsADirectoryError:
                return (None, f"read {name}: is a directory")
            except OSError as exc:
                return (None, f"open {name}: {_errno_text(exc)}")
            try:
                return render(template, table, partials)
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
