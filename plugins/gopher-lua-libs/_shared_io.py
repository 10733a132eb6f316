"""Helpers shared by the gopher-lua-libs modules that touch files, processes and sockets.

Argument checks (msgscript.lua.api's, under the names these modules use; a numeric string is not a
number here), paths resolved against the execution's own directory, OS errors worded the way Go's os
package words them (`open x: no such file or directory`), and Go's fmt verbs applied to Lua values.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import stat
import unicodedata
from collections.abc import Callable

from msgscript.lua.api import (
    LuaArgumentError,
    ModuleContext,
    check_self,
    check_string,
    check_table,
    go_float_text,
    is_number,
    lua_number_text,
    lua_type_name,
    raw_text,
)
from msgscript.lua.api import check_number as _check_number

__all__ = [
    "READ_CHUNK_BYTES",
    "TOO_MANY",
    "GoFormatter",
    "GoString",
    "LuaArgumentError",
    "argument_error",
    "check_number",
    "check_self",
    "check_string",
    "check_table",
    "errno_text",
    "go_quote",
    "lua_type_name",
    "open_for_reading",
    "path_error",
    "read_all",
    "resolve",
    "text",
]

# Go's syscall error texts where they differ from the C library's.
_GO_ERRNO_TEXT = {
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "file exists",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.EPIPE: "broken pipe",
    errno.ETIMEDOUT: "connection timed out",
    errno.ENETUNREACH: "network is unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ELOOP: "too many levels of symbolic links",
}

# Raised as `argument_error(position, function, problem)`.
argument_error = LuaArgumentError


def check_number(value: object, position: int, function: str) -> float:
    """A number argument; a numeric string is not one here, as gopher-lua's CheckInt refuses it."""
    return _check_number(value, position, function, numeric_strings=False)


def text(value: bytes) -> str:
    """Lua bytes as a str that turns back into the same bytes (file names need not be UTF-8)."""
    return value.decode("utf-8", "surrogateescape")


def resolve(ctx: ModuleContext, path: bytes | str) -> str:
    """A path as the script means it: relative paths start at the execution's directory."""
    name = text(path) if isinstance(path, bytes) else path
    if name.startswith("/"):
        return name
    return os.path.join(ctx.workdir(), name)


def errno_text(exc: OSError) -> str:
    """The cause of an OS error as Go prints it (lower case, `no such file or directory`)."""
    if exc.errno in _GO_ERRNO_TEXT:
        return _GO_ERRNO_TEXT[exc.errno]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def path_error(op: str, path: bytes | str, exc: OSError) -> str:
    """Go's *PathError text: `op path: cause`, with the path as the script gave it."""
    name = text(path) if isinstance(path, bytes) else path
    return f"{op} {name}: {errno_text(exc)}"


TOO_MANY = "too many open files"
"""Go's text for EMFILE: what opening returns past the files one execution may hold open."""
READ_CHUNK_BYTES = 1024 * 1024
"""Whole-file reads go this much at a time, each piece charged to the script's memory cap."""


def open_for_reading(path: str) -> int:
    """Open a file for `read_all` without waiting: a named pipe without a writer must not block the thread.

    Raises:
        OSError: the file cannot be opened.
    """
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def read_all(ctx: ModuleContext, fd: int) -> bytes:
    """Everything left in an open file, charged to the script's memory cap as it is read: a huge file (or
    /dev/zero) stops at the cap with MemoryError. A pipe, socket or terminal is waited on only until the
    script's deadline.

    Raises:
        OSError: reading failed (IsADirectoryError for a directory).
        TimeoutError: the deadline passed while waiting for data.
        MemoryError: the content would take the script past its memory cap.
    """
    mode = os.fstat(fd).st_mode
    waits = not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode))
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while True:
        if waits and not poller.poll(ctx.remaining_s() * 1000):
            raise TimeoutError("i/o timeout")
        try:
            data = os.read(fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            continue
        if not data:
            break
        ctx.charge(len(data))
        chunks.append(data)
    # The joined copy is what the caller returns to the script, which the call's accounting counts.
    return b"".join(chunks)


# Go's fmt applied to Lua values, as gopher-lua-libs' log does: gopher-lua values are Stringers, so %v, %s,
# %q, %x and %X print a value's text, numbers (float64 underneath) take the float verbs, booleans %t.


class GoString(str):
    """Text the Go library adds itself (a Go string, not a Lua value) when it formats a line."""


_GO_TYPES = {
    "string": "lua.LString",
    "number": "lua.LNumber",
    "boolean": "lua.LBool",
    "nil": "*lua.LNilType",
    "table": "*lua.LTable",
    "function": "*lua.LFunction",
    "thread": "*lua.LState",
}
_DIRECTIVE = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?(.?)", re.DOTALL)
_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _no_charge(nbytes: int) -> None:
    pass


class GoFormatter:
    """fmt.Sprint, Sprintln and Sprintf over Lua values, charging what they write to `charge` as they go.

    Tables, functions and userdata print as gopher-lua's String() prints them (`table: 0x...`): no
    `__tostring` metamethod of the script's runs (it would run with the memory cap lifted).
    """

    def __init__(self, charge: Callable[[int], None] = _no_charge) -> None:
        self._charge = charge

    def text(self, value: object) -> str:
        """A value's String() in gopher-lua: what %v and %s print."""
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return text(value)
        if value is None:
            return "nil"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return lua_number_text(value)
        return raw_text(value)

    @staticmethod
    def go_type(value: object) -> str:
        """The Go type of a value, as `%!d(lua.LString=x)` and `%!(EXTRA ...)` name it."""
        if isinstance(value, GoString):
            return "string"
        return _GO_TYPES.get(lua_type_name(value), "*lua.LUserData")

    def sprint(self, values: list[object]) -> bytes:
        """Operands side by side, with a space between two neighbours that are both not strings."""
        out: list[str] = []
        for i, value in enumerate(values):
            if i > 0 and not isinstance(value, str | bytes) and not isinstance(values[i - 1], str | bytes):
                out.append(" ")
            out.append(self._charged(self.text(value)))
        return "".join(out).encode("utf-8", "surrogateescape")

    def sprintln(self, values: list[object]) -> bytes:
        """Operands separated by spaces, then a newline."""
        parts = [self._charged(self.text(value)) for value in values]
        return (" ".join(parts) + "\n").encode("utf-8", "surrogateescape")

    def _charged(self, piece: str) -> str:
        self._charge(len(piece))
        return piece

    def sprintf(self, format_bytes: bytes, args: list[object]) -> bytes:
        """The format with its directives replaced; mistakes read as Go's (`%!d(MISSING)`, `%!(EXTRA ...)`).

        Integral numbers also take %d, %o and %c, where Go prints `%!d(lua.LNumber=5)`.
        """
        fmt = text(format_bytes)
        out: list[str] = []
        used = pos = 0
        while pos < len(fmt):
            percent = fmt.find("%", pos)
            if percent < 0:
                out.append(fmt[pos:])
                break
            out.append(self._charged(fmt[pos:percent]))
            found = _DIRECTIVE.match(fmt, percent)
            if found is None:  # the pattern matches any "%..." text
                break
            flags, width_text, precision_text, verb = found.groups()
            pos = found.end()
            if verb == "%":
                out.append("%")
                continue
            if not verb:
                out.append("%!(NOVERB)")
                continue
            width = precision = None
            if width_text == "*":
                width, used = _star(args, used)
                if width is None:
                    out.append("%!(BADWIDTH)")
                elif width < 0:
                    flags, width = flags + "-", -width
            elif width_text:
                width = int(width_text)
            if precision_text == "*":
                precision, used = _star(args, used)
                if precision is None or precision < 0:
                    out.append("%!(BADPREC)")
                    precision = None
            elif precision_text is not None:
                precision = int(precision_text or "0")
            if used >= len(args):
                out.append(f"%!{verb}(MISSING)")
                continue
            # A width or precision is text to write (`%999999999d`): charged before it is made.
            self._charge((width or 0) + (precision or 0))
            out.append(self._charged(self._directive(verb, flags, width, precision, args[used])))
            used += 1
        if used < len(args):
            extra = ", ".join(f"{self.go_type(value)}={self.text(value)}" for value in args[used:])
            out.append(self._charged(f"%!(EXTRA {extra})"))
        return "".join(out).encode("utf-8", "surrogateescape")

    def _directive(self, verb: str, flags: str, width: int | None, precision: int | None, value: object) -> str:
        body: str | None = None
        zero_pad_after_sign = False
        if verb in "vs":
            body = self.text(value)[:precision] if precision is not None else self.text(value)
        elif verb == "q":
            body = go_quote(self.text(value))
        elif verb in "xX":
            raw = self.text(value).encode("utf-8", "surrogateescape")[:precision]
            body = raw.hex().upper() if verb == "X" else raw.hex()
            if "#" in flags and body:
                body = ("0X" if verb == "X" else "0x") + body
        elif verb == "t" and isinstance(value, bool):
            body = "true" if value else "false"
        elif is_number(value) and verb in "eEfFgG":
            body, zero_pad_after_sign = _float_directive(verb, flags, precision, float(value)), True  # type: ignore[arg-type]
        elif is_number(value) and verb in "doc" and _is_integral(value):
            body, zero_pad_after_sign = _integer_directive(verb, flags, precision, int(value)), precision is None  # type: ignore[call-overload]
        if body is None:
            return f"%!{verb}({self.go_type(value)}={self.text(value)})"
        return _pad(body, flags, width, zero_pad_after_sign)


def _is_integral(value: object) -> bool:
    number = float(value)  # type: ignore[arg-type]
    return math.isfinite(number) and number.is_integer()


def _star(args: list[object], used: int) -> tuple[int | None, int]:
    """A `*` width or precision: the next argument, which must be an integral number."""
    if used >= len(args):
        return None, used
    value = args[used]
    if is_number(value) and _is_integral(value):
        return int(value), used + 1  # type: ignore[call-overload]
    return None, used + 1


def _sign(negative: bool, flags: str) -> str:
    if negative:
        return "-"
    return "+" if "+" in flags else " " if " " in flags else ""


def _float_directive(verb: str, flags: str, precision: int | None, number: float) -> str:
    if math.isnan(number):
        return _sign(False, flags) + "NaN"
    if math.isinf(number):
        return ("-" if number < 0 else " " if " " in flags and "+" not in flags else "+") + "Inf"
    sign = _sign(math.copysign(1.0, number) < 0, flags)
    if verb in "gG" and precision is None:
        body = go_float_text(abs(number))  # the shortest form, as Go's %g
        return sign + (body.upper() if verb == "G" else body)
    alternate = "#" if "#" in flags else ""
    return sign + format(abs(number), f"{alternate}.{6 if precision is None else precision}{verb}")


def _integer_directive(verb: str, flags: str, precision: int | None, number: int) -> str:
    if verb == "c":
        return chr(number) if 0 <= number <= 0x10FFFF else "\ufffd"
    digits = format(abs(number), "o" if verb == "o" else "d")
    if precision is not None:
        digits = digits.rjust(precision, "0")
    if "#" in flags and verb == "o" and not digits.startswith("0"):
        digits = "0" + digits
    return _sign(number < 0, flags) + digits


def _pad(body: str, flags: str, width: int | None, zero_pad_after_sign: bool) -> str:
    if width is None or len(body) >= width:
        return body
    if "-" in flags:
        return body.ljust(width)
    if "0" not in flags:
        return body.rjust(width)
    if zero_pad_after_sign and body[:1] in ("+", "-", " "):
        return body[0] + body[1:].rjust(width - 1, "0")
    return body.rjust(width, "0")


def go_quote(value: str) -> str:
    """A double-quoted Go string literal, as strconv.Quote writes it."""
    return '"' + _QUOTED_CHAR.sub(_quote_char, value) + '"'


# Printable ASCII other than the quote and the backslash stays as it is; the rest is looked at one by one.
_QUOTED_CHAR = re.compile(r'["\\]|[^\x20-\x7e]')


def _quote_char(found: re.Match[str]) -> str:
    char = found.group()
    code = ord(char)
    if char in ('"', "\\"):
        return "\\" + char
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if unicodedata.category(char)[0] not in "CZ":
        return char
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
