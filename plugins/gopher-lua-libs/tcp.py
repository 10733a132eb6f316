"""The `tcp` Lua module: a plain TCP client.

`tcp.open(address [, dial_timeout_s])` connects to `host:port` (`:port` is this host) and returns a
connection, or `nil, err`. Methods, as in gopher-lua-libs (errors are raised, not returned):
`conn:write(s, ...)` sends every string; `conn:read([n])` returns at most n bytes (default 1024) as soon
as some arrive, `conn:read("*l")` a line without its newline, `conn:read("*a")` everything until the
peer closes, `conn:read("*n")` a number; all return nil once the peer has closed and nothing is left;
`conn:close()`. The fields `dialTimeout` (5), `writeTimeout`, `readTimeout` and `closeTimeout` (1) are
seconds, readable and writable; each call is bounded by its timeout and by the script's deadline. A
connection still open when the execution ends is closed.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

from msgscript.lua.api import HandleLimit, ModuleContext, lua_chunk

from ._shared_io import TOO_MANY, LuaArgumentError, argument_error, check_self, check_string, errno_text, text

DEFAULT_READ_BYTES = 1024
RECEIVE_BYTES = 64 * 1024
_NUMBER = re.compile(rb"\s*([-+.0-9a-fA-FxX]*)")
DEFAULT_TIMEOUTS_S = {"dialTimeout": 5.0, "writeTimeout": 1.0, "readTimeout": 1.0, "closeTimeout": 1.0}

# The connection is a Lua table whose metatable serves the timeout fields; its methods are the Python
# functions themselves, so that errors name the script's line.
_CONNECTION = b"""
local setmetatable, type, error = setmetatable, type, error
local FIELDS = {dialTimeout = true, writeTimeout = true, readTimeout = true, closeTimeout = true}
return function(methods, get_field, set_field)
  return setmetatable({}, {
    __index = function(_, key)
      if FIELDS[key] then return get_field(key) end
      return methods[key]
    end,
    __newindex = function(_, key, value)
      if not FIELDS[key] then return end
      if type(value) ~= "number" then
        error("bad argument #3 to '__newindex' (number expected, got " .. type(value) .. ")", 2)
      end
      set_field(key, value)
    end,
    __metatable = false,
  })
end
"""


class TcpError(Exception):
    """A failed network operation, worded like Go's *net.OpError."""


def _endpoint(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connection:
    """One client connection, with a receive buffer so that line reads never lose bytes."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: ModuleContext,
        timeouts: dict[str, float],
        on_closed: Callable[[], object] = lambda: None,
    ) -> None:
        self._sock = sock
        self._ctx = ctx
        self._on_closed = on_closed
        self.timeouts = timeouts
        # What arrived and was not read yet. Each piece received is charged to the script's memory cap by the
        # read that waits for it; between reads at most one piece (RECEIVE_BYTES) stays here.
        self._buffer = bytearray()
        self._eof = False
        self.closed = False
        try:
            self._names = f"{_endpoint(sock.getsockname())}->{_endpoint(sock.getpeername())}"
        except OSError:  # the peer reset the connection already
            self._names = "?"

    def _error(self, op: str, cause: str) -> TcpError:
        return TcpError(f"{op} tcp {self._names}: {cause}")

    def _deadline(self, field: str) -> float:
        return time.monotonic() + min(self.timeouts[field], self._ctx.remaining_s())

    def _receive(self, deadline: float) -> bool:
        """Add what arrives before the deadline to the buffer; False when the peer has closed."""
        if self.closed:
            raise self._error("read", "use of closed network connection")
        if self._eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._error("read", "i/o timeout")
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(RECEIVE_BYTES)
        except TimeoutError:
            raise self._error("read", "i/o timeout") from None
        except OSError as exc:
            raise self._error("read", errno_text(exc)) from None
        if not data:
            self._eof = True
            return False
        self._ctx.charge(len(data))
        self._buffer += data
        return True

    def _take(self, size: int, skip: int = 0) -> bytes:
        """The first size bytes of the buffer, dropping them and `skip` more."""
        data = bytes(self._buffer[:size])
        del self._buffer[: size + skip]
        return data

    def read_some(self, limit: int) -> bytes | None:
        """Up to limit bytes, as soon as any are there; None at the end."""
        if limit <= 0:
            return b""
        if not self._buffer and not self._receive(self._deadline("readTimeout")):
            return None
        return self._take(limit)

    def read_line(self) -> bytes | None:
        """The next line without its newline (the rest at the end), or None at the end."""
        deadline = self._deadline("readTimeout")
        searched = 0
        while (newline := self._buffer.find(b"\n", searched)) < 0:
            # Only what arrives next needs searching.
            searched = len(self._buffer)
            if not self._receive(deadline):
                if not self._buffer:
                    return None
                return self._take(len(self._buffer))
        return self._take(newline, 1)

    def read_all(self) -> bytes:
        """Everything until the peer closes."""
        deadline = self._deadline("readTimeout")
        while self._receive(deadline):
            pass
        return self._take(len(self._buffer))

    def read_number(self) -> float:
        """The next number after any whitespace (0 at the end)."""
        deadline = self._deadline("readTimeout")
        while True:
            found = _NUMBER.match(self._buffer)
            assert found is not None  # the pattern matches any text
            # Done once something that is not part of a number follows it, or the peer has closed.
            if found.end() < len(self._buffer) or not self._receive(deadline):
                break
        token = found[1]
        del self._buffer[: found.end()]
        if not token:
            return 0.0
        try:
            return float(token)
        except ValueError:
            pass
        try:
            return float(int(token, 0))
        except ValueError:
            raise TcpError(f"strconv.ParseFloat: parsing {text(token)!r}: invalid syntax") from None

    def write(self, data: bytes) -> None:
        """Send all of data within the write timeout."""
        if self.closed:
            raise self._error("write", "use of closed network connection")
        left = self._deadline("writeTimeout") - time.monotonic()
        if left <= 0:
            raise self._error("write", "i/o timeout")
        self._sock.settimeout(left)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise self._error("write", "i/o timeout") from None
        except OSError as exc:
            raise self._error("write", errno_text(exc)) from None

    def close(self) -> None:
        """Close the socket; a second close is an error, as in Go."""
        if self.closed:
            raise self._error("close", "use of closed network connection")
        self.closed = True
        self._sock.close()
        self._on_closed()


def dial(ctx: ModuleContext, address: str, timeout_s: float) -> socket.socket:
    """Connect to `host:port` within timeout_s (name lookup included).

    Raises:
        TcpError: the address is malformed, the name unknown, or no address accepts the connection.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise TcpError(f"dial tcp: address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text) if port_text else 0
    except ValueError:
        raise TcpError(f"dial tcp: lookup tcp/{port_text}: unknown port") from None
    if not 0 <= port <= 65535:
        raise TcpError(f"dial tcp: address {address}: invalid port")
    deadline = time.monotonic() + min(timeout_s, ctx.remaining_s())
    try:
        infos = ctx.call(
            ctx.loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM),
            max(0.0, deadline - time.monotonic()),
        )
    except TimeoutError:
        raise TcpError(f"dial tcp: lookup {host}: i/o timeout") from None
    except OSError:
        raise TcpError(f"dial tcp: lookup {host}: no such host") from None
    cause = "i/o timeout"
    target = address
    for family, kind, proto, _, sockaddr in infos:
        target = _endpoint(sockaddr)
        left = deadline - time.monotonic()
        if left <= 0:
            cause = "i/o timeout"
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(left)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            cause = "i/o timeout"
            continue
        except OSError as exc:
            sock.close()
            cause = f"connect: {errno_text(exc)}"
            continue
        return sock
    raise TcpError(f"dial tcp {target}: {cause}")


class TcpModule:
    """Builds the `tcp` table for one execution."""

    name = "tcp"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{open = ...}`."""
        factory = lua_chunk(lua, "gopher_tcp_connection", _CONNECTION)
        handles = HandleLimit()

        def open_(address: object = None, dial_timeout: object = None, *_: object) -> object:
            where = text(check_string(address, 1, "open"))
            timeouts = dict(DEFAULT_TIMEOUTS_S)
            if isinstance(dial_timeout, int | float) and not isinstance(dial_timeout, bool):
                timeouts["dialTimeout"] = float(dial_timeout)
            if not handles.acquire():
                return (None, f"dial tcp {where}: socket: {TOO_MANY}")
            try:
                sock = dial(ctx, where, timeouts["dialTimeout"])
            except TcpError as exc:
                handles.release()
                return (None, str(exc))
            conn = Connection(sock, ctx, timeouts, on_closed=handles.release)
            ctx.on_close(lambda: None if conn.closed else conn.close())
            methods = {"read": _reader(conn), "write": _writer(conn), "close": _closer(conn)}
            return factory(ctx.to_lua(methods), ctx.to_lua(_field_getter(conn)), ctx.to_lua(_field_setter(conn)))

        return {"open": open_}


def _reader(conn: Connection) -> Any:
    def read(obj: object = None, what: object = DEFAULT_READ_BYTES, *_: object) -> object:
        check_self(obj, "read", "tcp_client_ud")
        if what is None:
            what = b"*l"
        if isinstance(what, int | float) and not isinstance(what, bool):
            return conn.read_some(int(what))
        fmt = what if isinstance(what, bytes) else b""
        if fmt.startswith(b"*l"):
            return conn.read_line()
        if fmt.startswith(b"*a"):
            return conn.read_all()
        if fmt.startswith(b"*n"):
            return conn.read_number()
        raise argument_error(2, "read", "unknown fmt string")

    return read


def _writer(conn: Connection) -> Any:
    def write(obj: object = None, *data: object) -> None:
        check_self(obj, "write", "tcp_client_ud")
        chunks = [check_string(value, i + 2, "write") for i, value in enumerate(data)]
        for i, chunk in enumerate(chunks):
            try:
                conn.write(chunk)
            except TcpError as exc:
                raise LuaArgumentError(f"bad argument #{i + 2} to 'write' ({exc})") from None

    return write


def _closer(conn: Connection) -> Any:
    def close(obj: object = None, *_: object) -> None:
        check_self(obj, "close", "tcp_client_ud")
        conn.close()

    return close


def _field_getter(conn: Connection) -> Any:
    def get_field(key: bytes) -> float | None:
        return conn.timeouts.get(text(key))

    return get_field


def _field_setter(conn: Connection) -> Any:
    def set_field(key: bytes, value: float) -> None:
        conn.timeouts[text(key)] = float(value)

    return set_field


module = TcpModule()
