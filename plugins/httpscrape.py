"""The httpscrape plugin: module `scrape`, which pulls attributes and text out of an HTML string.

The API is that of the Go library the Go msgscript bundles (gluahttpscrape):

    find_attr_by_class(html, attr, class)        → { value, ... }
    find_attr_by_id(html, attr, id)              (and find_attr_by_tag(html, attr, tag))
    find_attrs_by_class(html, n, a1, ..., aN, class) → { {a1 = value, ..., aN = value}, ... }
    find_attrs_by_id / find_attrs_by_tag         (same shape)
    find_text_by_class(html, class)              → { text, ... }
    find_text_by_id(html, id) / find_text_by_tag(html, tag)

Each returns `results, nil` (results is a 1-based list, one entry per matching element, in document
order) or `nil, error` when the document cannot be parsed. A missing attribute reads as "". Elements
are matched as in the Go library: a class matches any word of the whitespace-separated `class`
attribute, an id matches the `id` attribute exactly, and once an element matches, the elements inside
it are not searched. An element's text is the text of all its descendants, each piece stripped of
surrounding whitespace, empty pieces dropped, the rest joined with single spaces.

Parsing uses the standard library's tolerant html.parser, with the implied end tags of HTML that
matter most for scraping (void elements, `<p>`, `<li>`, table cells and rows, options).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from msgscript.lua.api import ModuleContext, PluginModules, to_integer, to_text

VOID_ELEMENTS = frozenset("area base br col embed hr img input keygen link meta param source track wbr".split())
"""Elements that never have content or an end tag."""

_CLOSES_P = frozenset(
    "address article aside blockquote center details dialog dir div dl dd dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hgroup hr li listing main menu nav ol p pre section summary table ul".split()
)
_SCOPE = frozenset("applet caption html marquee object table td th template button".split())
_LIST_SCOPE = _SCOPE | {"ol", "ul"}
_TABLE_SCOPE = frozenset({"html", "table", "template"})

# For a start tag: which open elements it ends, and which open elements stop the search for them.
_IMPLIED_ENDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), _LIST_SCOPE),
    "dt": (frozenset({"dt", "dd"}), _SCOPE | {"dl"}),
    "dd": (frozenset({"dt", "dd"}), _SCOPE | {"dl"}),
    "tr": (frozenset({"tr"}), _TABLE_SCOPE | {"thead", "tbody", "tfoot"}),
    "td": (frozenset({"td", "th"}), _TABLE_SCOPE | {"tr"}),
    "th": (frozenset({"td", "th"}), _TABLE_SCOPE | {"tr"}),
    "thead": (frozenset({"thead", "tbody", "tfoot"}), _TABLE_SCOPE),
    "tbody": (frozenset({"thead", "tbody", "tfoot"}), _TABLE_SCOPE),
    "tfoot": (frozenset({"thead", "tbody", "tfoot"}), _TABLE_SCOPE),
    "option": (frozenset({"option"}), frozenset({"select", "datalist", "optgroup"})),
    "optgroup": (frozenset({"option", "optgroup"}), frozenset({"select"})),
}


@dataclass(slots=True)
class Element:
    """One element of the parsed tree; children are elements or text (str)."""

    tag: str
    attrs: list[tuple[str, str]]
    children: list[Element | str] = field(default_factory=list)

    def attr(self, name: str) -> str:
        """The first value of attribute `name`, or "" (as the Go library answers for a missing one)."""
        for key, value in self.attrs:
            if key == name:
                return value
        return ""

    def text(self) -> str:
        """The descendant text pieces, stripped, without empty ones, joined with spaces."""
        return " ".join(piece for piece in (raw.strip() for raw in self._texts()) if piece)

    def _texts(self) -> Iterator[str]:
        # Iterative: documents may nest deeper than Python's recursion limit.
        pending: list[Element | str] = list(reversed(self.children))
        while pending:
            child = pending.pop()
            if isinstance(child, str):
                yield child
            else:
                pending.extend(reversed(child.children))


class _TreeBuilder(HTMLParser):
    """Builds an Element tree, closing what HTML closes implicitly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", [])
        self._open: list[Element] = [self.root]
        self._after_comment = False

    def parse_html_declaration(self, i: int) -> int:
        # html.parser gives up on some malformed `<!...>` markup; HTML reads it as a comment.
        try:
            return int(super().parse_html_declaration(i))
        except AssertionError:
            return int(self.parse_bogus_comment(i))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._end_implied(tag)
        element = Element(tag, [(key, value or "") for key, value in attrs])
        self._open[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._end_implied(tag)
        self._open[-1].children.append(Element(tag, [(key, value or "") for key, value in attrs]))

    def handle_endtag(self, tag: str) -> None:
        # An end tag closes the innermost open element of that name and everything opened inside it;
        # a stray end tag is ignored.
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        # Adjacent text is one text node, as in an HTML tree; a comment between two pieces separates them.
        children = self._open[-1].children
        if children and isinstance(children[-1], str) and not self._after_comment:
            children[-1] += data
        else:
            children.append(data)
        self._after_comment = False

    def handle_comment(self, data: str) -> None:
        self._after_comment = True

    def handle_decl(self, decl: str) -> None:
        self._after_comment = True

    def handle_pi(self, data: str) -> None:
        self._after_comment = True

    def unknown_decl(self, data: str) -> None:
        self._after_comment = True

    def _end_implied(self, tag: str) -> None:
        if tag in _CLOSES_P:
            self._close_in_scope(frozenset({"p"}), _SCOPE)
        implied = _IMPLIED_ENDS.get(tag)
        if implied is not None:
            self._close_in_scope(*implied)

    def _close_in_scope(self, targets: frozenset[str], boundaries: frozenset[str]) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            current = self._open[depth].tag
            if current in targets:
                del self._open[depth:]
                return
            if current in boundaries:
                return


def parse_html(text: str) -> Element:
    """Parse an HTML document or fragment into a tree whose root is a document node."""
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


Matcher = Callable[[Element], bool]


def by_class(name: str) -> Matcher:
    """Match elements whose class list contains `name`."""
    return lambda element: name in element.attr("class").split()


def by_id(name: str) -> Matcher:
    """Match elements whose id is `name`."""
    return lambda element: element.attr("id") == name


def by_tag(name: str) -> Matcher:
    """Match elements named `name` (HTML element names are case-insensitive)."""
    wanted = name.lower()
    return lambda element: element.tag == wanted


def find_all(root: Element, matches: Matcher) -> list[Element]:
    """The matching elements in document order, not searching inside a match (the Go library's FindAll)."""
    found: list[Element] = []
    pending: list[Element] = [root]
    while pending:
        element = pending.pop()
        if element is not root and matches(element):
            found.append(element)
            continue
        pending.extend(reversed([child for child in element.children if isinstance(child, Element)]))
    return found


def _out(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _parse(html: object, charge: Charge) -> tuple[Element | None, str]:
    # Charged before parsing: the decoded text and its pieces, and a tree node per tag.
    raw = html if isinstance(html, bytes) else to_text(html).encode("utf-8", "surrogateescape")
    charge(2 * len(raw) * (1 if raw.isascii() else 4) + _TAG_BYTES * raw.count(b"<"))
    try:
        return parse_html(to_text(html)), ""
    except (AssertionError, ValueError) as exc:
        return None, f"failed to parse html: {exc}"


MATCHERS: Mapping[str, Callable[[str], Matcher]] = {"class": by_class, "id": by_id, "tag": by_tag}
Charge = Callable[[int], None]
_TAG_BYTES = 512
"""Charged per `<` of a document: the tree node (and attribute and child lists) a tag makes."""
_RESULT_BYTES = 64
"""Charged per result table and per entry in it."""


def _find_attr(matcher: Callable[[str], Matcher], charge: Charge) -> Callable[..., tuple[object, object]]:
    def find(html: object = None, attr: object = None, query: object = None, *_: object) -> tuple[object, object]:
        root, error = _parse(html, charge)
        if root is None:
            return None, error
        name = to_text(attr)
        return [_out(element.attr(name)) for element in find_all(root, matcher(to_text(query)))], None

    return find


def _find_attrs(matcher: Callable[[str], Matcher], charge: Charge) -> Callable[..., tuple[object, object]]:
    def find(html: object = None, count: object = None, *rest: object) -> tuple[object, object]:
        n = max(0, to_integer(count))
        # Names past the last argument are all "" (one key); the selector follows the N names.
        names = [to_text(name) for name in rest[:n]] + ([""] if n > len(rest) else [])
        query = to_text(rest[n]) if n < len(rest) else ""
        root, error = _parse(html, charge)
        if root is None:
            return None, error
        found = find_all(root, matcher(query))
        # A table per element with an entry per name: charged before it is built.
        charge(len(found) * (_RESULT_BYTES + _RESULT_BYTES * len(set(names))))
        return [{_out(name): _out(element.attr(name)) for name in names} for element in found], None

    return find


def _find_text(matcher: Callable[[str], Matcher], charge: Charge) -> Callable[..., tuple[object, object]]:
    def find(html: object = None, query: object = None, *_: object) -> tuple[object, object]:
        root, error = _parse(html, charge)
        if root is None:
            return None, error
        return [_out(element.text()) for element in find_all(root, matcher(to_text(query)))], None

    return find


def functions(charge: Charge) -> dict[str, Callable[..., tuple[object, object]]]:
    """The module's functions, charging what they parse and build to `charge` (the script's memory cap)."""
    return {
        **{f"find_attr_by_{kind}": _find_attr(matcher, charge) for kind, matcher in MATCHERS.items()},
        **{f"find_attrs_by_{kind}": _find_attrs(matcher, charge) for kind, matcher in MATCHERS.items()},
        **{f"find_text_by_{kind}": _find_text(matcher, charge) for kind, matcher in MATCHERS.items()},
    }


class Scrape:
    """The `scrape` Lua module."""

    name = "scrape"
    inline_safe = False
    """Not on the event loop: html.parser is pure Python (several microseconds a tag, more than an inline
    execution's whole budget for any real page), and some malformed markup takes it quadratic time."""

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return the table of find_* functions."""
        return functions(ctx.charge)


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    """Add the `scrape` module."""
    modules.add(Scrape())
