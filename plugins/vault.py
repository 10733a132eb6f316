"""The vault plugin: module `vault`, a client for the KV version 2 secrets engine of OpenBao or Vault.

The API is the Go msgscript's:

    local vault = require("vault")            -- also defines the global VaultKV = {new = vault.new}
    local v, err = vault.new(address, token [, from_env])
    err = v:write("/app", {user = "me", port = 5432}, "secret")    -- values are stored as strings
    local data, err = v:read("/app", "secret")                     -- {user = "me", port = "5432"}
    local keys, err = v:list("/", "secret")                        -- {"app", "dir/", ...}
    err = v:delete("/app", "secret")                               -- every version and the metadata

`new` returns `client, nil` or `nil, "failed to create new vault client: <err>"`. With `from_env` true,
the address and token come from VAULT_ADDR and VAULT_TOKEN in the daemon's environment (the two
arguments, still required, are the fallback when a variable is unset). An empty address means
https://127.0.0.1:8200, the usual default. TLS certificates are not verified.

Paths start with `/` and are appended to `<mount>/data` (write, read) or `<mount>/metadata` (list,
delete). `write` and `delete` return nil or an error string; `read` returns `nil, "path <p> not found"`
for a secret that does not exist and `nil, "failed to read path <p>: <err>"` on failure; `list` returns
`nil, "failed to list <p>: <err>"` on failure and an empty table for a path without secrets (where the
Go plugin raised a Lua error).

Requests go through the daemon's shared HTTP client, each bounded by REQUEST_TIMEOUT_S and by the
script's deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import yarl

from msgscript.lua.api import (
    LoopCharges,
    ModuleContext,
    PluginModules,
    check_self,
    check_table,
    check_text,
    error_text,
    json_decode_bytes,
    lua_number_text,
    opt_bool,
)

DEFAULT_ADDRESS = "https://127.0.0.1:8200"
REQUEST_TIMEOUT_S = 60.0
"""The Vault client's own default; the script's deadline usually comes first."""
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_VALUE_BYTES = 64
"""Charged per value of a secret written, besides its text."""


class VaultError(Exception):
    """A request to the server failed; the text is what the script sees after the operation's prefix."""


def _text(value: object) -> str:
    """A Lua value as text, the way the Go plugin stores it (tostring, without the metamethods)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return lua_number_text(value)
    return str(value)


def _secret_text(value: object) -> str:
    """A value of a secret read back: strings as they are, anything else as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_address(address: str) -> yarl.URL:
    """The server's base URL; raises ValueError for anything that is not an http(s) URL with a host."""
    try:
        url = yarl.URL(address or DEFAULT_ADDRESS)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid address {address!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"invalid address {address!r}: want http(s)://host[:port]")
    return url


def _response_error(method: str, url: yarl.URL, status: int, body: bytes) -> VaultError:
    """An error status in the layout of the Vault API client, so that scripts can look for `Code: 403`."""
    lines = ["Error making API request.", "", f"URL: {method} {url}"]
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list):
        lines += [f"Code: {status}. Errors:", ""] + [f"* {error}" for error in errors]
    else:
        lines += [f"Code: {status}. Raw Message:", "", body.decode("utf-8", "replace")]
    return VaultError("\n".join(lines))


async def _send(
    session: aiohttp.ClientSession | None,
    method: str,
    url: yarl.URL,
    headers: dict[str, str],
    body: bytes | None,
    timeout_s: float,
    charge: Callable[[int], None],
) -> tuple[int, bytes]:
    """One HTTP exchange (certificates unchecked); returns the status and the body, each piece of which is
    charged to the script's memory cap as it arrives."""
    own = session is None
    client = aiohttp.ClientSession(trust_env=False) if session is None else session
    try:
        async with client.request(
            method, url, headers=headers, data=body, ssl=False, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise VaultError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                charge(len(chunk))
                chunks.append(chunk)
            return response.status, b"".join(chunks)
    finally:
        if own:
            await client.close()


class VaultClient:
    """One `vault.new()` client: a server address and a token."""

    def __init__(self, ctx: ModuleContext, address: yarl.URL, token: str) -> None:
        self._ctx = ctx
        self._address = address
        self._headers = {"X-Vault-Request": "true"}
        if token:
            self._headers["X-Vault-Token"] = token

    def _url(self, api_path: str) -> yarl.URL:
        base = self._address.path.rstrip("/")
        return self._address.with_path(f"{base}/v1/{api_path.lstrip('/')}").with_query(None).with_fragment(None)

    def request(
        self, method: str, api_path: str, payload: object = None, query: str = "", *, absent_ok: bool = False
    ) -> tuple[int, Any]:
        """Send one request and return its status and decoded JSON body (None when empty).

        With `absent_ok`, a 404 is an answer (the secret does not exist), as for the Vault client's reads.

        Raises:
            VaultError: the request failed, timed out, or got an error status.
        """
        url = self._url(api_path)
        if query:
            url = url.with_query(query)
        timeout_s = min(REQUEST_TIMEOUT_S, self._ctx.remaining_s())
        body = None if payload is None else json.dumps(payload).encode()
        if body is not None:
            self._ctx.charge(len(body))
        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/json"}
        session = None if self._ctx.services is None else self._ctx.services.http
        try:
            if timeout_s <= 0:
                raise TimeoutError("context deadline exceeded")
            with LoopCharges(self._ctx) as charge:
                status, raw = self._ctx.call(_send(session, method, url, headers, body, timeout_s, charge), timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError, VaultError) as exc:
            raise VaultError(f'{method.capitalize()} "{url}": {error_text(exc)}') from exc
        if status >= 400 and not (absent_ok and status == 404):
            raise _response_error(method, url, status, raw)
        self._ctx.charge(json_decode_bytes(raw))
        try:
            return status, json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise VaultError(f"invalid JSON in the response of {method} {url}: {exc}") from exc

    def write(self, path: str, data: dict[str, str], mount: str) -> str | None:
        """Store a new version of the secret; returns the error text or None."""
        try:
            self.request("PUT", f"{mount}/data{path}", {"data": data})
        except VaultError as exc:
            return f"failed to write to {path}: {exc}"
        return None

    def read(self, path: str, mount: str) -> tuple[object, ...]:
        """The secret's latest data as a string → string table, or `nil, error`."""
        try:
            status, doc = self.request("GET", f"{mount}/data{path}", absent_ok=True)
        except VaultError as exc:
            return (None, f"failed to read path {path}: {exc}")
        data = doc.get("data") if isinstance(doc, dict) else None
        values = data.get("data") if isinstance(data, dict) else None
        if status == 404 or not isinstance(values, dict):
            # A 404 (or a deleted version, which has metadata but no data) is an absent secret.
            return (None, f"path {path} not found")
        return ({key: _secret_text(value) for key, value in values.items()}, None)

    def delete(self, path: str, mount: str) -> str | None:
        """Delete every version of the secret and its metadata; returns the error text or None."""
        try:
            self.request("DELETE", f"{mount}/metadata{path}")
        except VaultError as exc:
            return f"failed to delete {path}: {exc}"
        return None

    def list(self, path: str, mount: str) -> tuple[object, ...]:
        """The key names under the path (folders end with `/`), or `nil, error`."""
        try:
            status, doc = self.request("GET", f"{mount}/metadata{path}", query="list=true", absent_ok=True)
        except VaultError as exc:
            return (None, f"failed to list {path}: {exc}")
        data = doc.get("data") if isinstance(doc, dict) else None
        keys = data.get("keys") if isinstance(data, dict) else None
        if status == 404 or not isinstance(keys, list):
            return ([], None)
        return ([_secret_text(key) for key in keys], None)

    def lua_object(self) -> dict[str, Callable[..., object]]:
        """The Lua client table: write, read, delete, list."""

        def write(
            this: object = None, path: object = None, data: object = None, mount: object = None, *_: object
        ) -> object:
            check_self(this, "write", "client")
            path_s = check_text(path, 2, "write")
            table = check_table(data, 3, "write")
            mount_s = check_text(mount, 4, "write")
            values = {}
            for key, value in table.items():
                name, text = _text(key), _text(value)
                self._ctx.charge(len(name) + len(text) + _VALUE_BYTES)
                values[name] = text
            return self.write(path_s, values, mount_s)

        def read(this: object = None, path: object = None, mount: object = None, *_: object) -> tuple[object, ...]:
            check_self(this, "read", "client")
            return self.read(check_text(path, 2, "read"), check_text(mount, 3, "read"))

        def delete(this: object = None, path: object = None, mount: object = None, *_: object) -> object:
            check_self(this, "delete", "client")
            return self.delete(check_text(path, 2, "delete"), check_text(mount, 3, "delete"))

        def list_(this: object = None, path: object = None, mount: object = None, *_: object) -> tuple[object, ...]:
            check_self(this, "list", "client")
            return self.list(check_text(path, 2, "list"), check_text(mount, 3, "list"))

        return {"write": write, "read": read, "delete": delete, "list": list_}


class VaultModule:
    """The `vault` Lua module."""

    name = "vault"
    inline_safe = False

    def load(self, lua: Any, ctx: ModuleContext) -> object:
        """Return `{new = ...}` and define the global `VaultKV` with the same `new`."""

        def new(
            address: object = None, token: object = None, from_env: object = None, *_: object
        ) -> tuple[object, ...]:
            address_s = check_text(address, 1, "new")
            token_s = check_text(token, 2, "new")
            if opt_bool(from_env, 3, "new"):
                address_s = ctx.env.get("VAULT_ADDR") or address_s
                token_s = ctx.env.get("VAULT_TOKEN") or token_s
            try:
                url = parse_address(address_s)
            except ValueError as exc:
                return (None, f"failed to create new vault client: {exc}")
            return (VaultClient(ctx, url, token_s).lua_object(), None)

        ctx.set_global("VaultKV", {"new": new})
        return {"new": new}


def preload(modules: PluginModules, envs: Mapping[str, str]) -> None:
    """Add the `vault` module."""
    modules.add(VaultModule())
