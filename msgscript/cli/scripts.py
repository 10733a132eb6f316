"""`msgscriptcli` store commands: add, list, rm, the `lib` group and `completion`.

With `-b etcd` they write the keys the daemon reads on every message (`msgscript/scripts/<subject>/<name>`,
`msgscript/libs/<name>`); with `-b file` they write the script and library directories the daemon loads at
startup. Messages go to stderr and tables to stdout; a failure exits 1, a usage error 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
from click.shell_completion import get_completion_class

from msgscript.config import Settings
from msgscript.errors import MsgscriptError, ScriptParseError
from msgscript.etcd import EtcdClient, open_etcd
from msgscript.script import Script, parse_script
from msgscript.store import open_store
from msgscript.store.base import Store
from msgscript.store.etcd import LIBRARIES_PREFIX, SCRIPTS_PREFIX, library_key, script_key
from msgscript.store.file import LibraryDirectory, ScriptDirectory, set_headers
from msgscript.subjects import is_valid_pattern

log = logging.getLogger(__name__)

T = TypeVar("T")

PROG_NAME = "msgscriptcli"
COMPLETION_SHELLS = ("bash", "zsh", "fish")
ETCD_REQUEST_TIMEOUT_S = 10.0
"""The bound on every etcd operation of a command once the store is open."""


class CommandFailed(click.ClickException):
    """A command that could not do its work: the message on stderr, exit status 1."""

    def show(self, file: object = None) -> None:
        """Print the bare message (no `Error:` prefix), like the Go CLI."""
        click.echo(self.format_message(), err=True)


def read_text(path: str) -> str:
    """A script file's text (undecodable bytes kept through surrogate escapes)."""
    try:
        return Path(path).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise CommandFailed(f"failed to read the script file {path}: {exc.strerror or exc}") from exc


def parse_text(path: str, text: str) -> Script:
    """Parse a script file's text, turning header errors into a command failure."""
    try:
        return parse_script(text)
    except ScriptParseError as exc:
        raise CommandFailed(f"failed to read the script file {path}: {exc}") from exc


def read_script_file(path: str) -> Script:
    """Parse a script file, turning read and header errors into a command failure."""
    return parse_text(path, read_text(path))


def identified(script: Script, subject: str, name: str) -> Script:
    """The script under the given subject and name, each defaulting to its header; both are required."""
    subject = subject or script.subject
    if not subject:
        raise CommandFailed("subject is required")
    name = name or script.name
    if not name:
        raise CommandFailed("name is required")
    return replace(script, subject=subject, name=name)


def check_subject(subject: str) -> None:
    """Refuse a subject the daemon could not subscribe to, or that would break the etcd key layout."""
    if "/" in subject:
        raise CommandFailed(f"invalid subject {subject!r}: '/' is not allowed")
    if not is_valid_pattern(subject):
        raise CommandFailed(f"invalid subject {subject!r}: not a NATS subject")


def check_name(name: str, what: str = "name") -> None:
    """Refuse a name that a `--* name:` header cannot hold or that would break the etcd key layout."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise CommandFailed(f"invalid {what} {name!r}: control characters are not allowed")


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A borderless table: left-aligned columns two spaces apart, no trailing blanks."""
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


class Catalog(Protocol):
    """Where the store commands read and write scripts and libraries; every failure is a CommandFailed."""

    async def add_script(self, script: Script, text: str) -> None:
        """Store `script` (its subject and name final) whose file text is `text`."""
        ...

    async def remove_script(self, subject: str, name: str) -> bool:
        """Remove a script; False when there was none."""
        ...

    async def scripts(self) -> list[tuple[str, str]]:
        """Every stored (subject, name), sorted."""
        ...

    async def add_library(self, library: Script, text: str) -> None:
        """Store a library under its name header; `text` is the file's text."""
        ...

    async def remove_library(self, name: str) -> bool:
        """Remove a library; False when there was none."""
        ...

    async def libraries(self) -> list[str]:
        """Every stored library name, sorted."""
        ...


class EtcdCatalog:
    """The etcd keys the Go msgscript uses, written through the etcd store and listed by key."""

    def __init__(self, store: Store, client: EtcdClient) -> None:
        self._store = store
        self._client = client

    async def _call(self, failure: str, operation: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(ETCD_REQUEST_TIMEOUT_S):
                return await operation
        except TimeoutError:
            raise CommandFailed(f"{failure}: no answer from etcd within {ETCD_REQUEST_TIMEOUT_S:g}s") from None
        except MsgscriptError as exc:
            raise CommandFailed(f"{failure}: {exc}") from exc

    async def add_script(self, script: Script, text: str) -> None:
        """Put the Script JSON at `msgscript/scripts/<subject>/<name>`."""
        await self._call("Failed to add script to etcd", self._store.put_script(script))

    async def remove_script(self, subject: str, name: str) -> bool:
        """Delete `msgscript/scripts/<subject>/<name>` if it exists."""
        key = script_key(subject, name)
        failure = "failed to remove script"
        if await self._call(failure, self._client.get(key, timeout_s=ETCD_REQUEST_TIMEOUT_S)) is None:
            return False
        await self._call(failure, self._store.delete_script(subject, name))
        return True

    async def scripts(self) -> list[tuple[str, str]]:
        """The (subject, name) of every script key: the first segment after `msgscript/scripts/` is the subject."""
        found = await self._call(
            "failed to list scripts", self._client.get_prefix(SCRIPTS_PREFIX, timeout_s=ETCD_REQUEST_TIMEOUT_S)
        )
        rows = set()
        for kv in found:
            subject, _, name = kv.key.decode("utf-8", "replace").removeprefix(SCRIPTS_PREFIX).partition("/")
            if subject and name:  # other keys are not scripts for the daemon either
                rows.add((subject, name))
        return sorted(rows)

    async def add_library(self, library: Script, text: str) -> None:
        """Put the header-stripped text at `msgscript/libs/<name>`."""
        await self._call(
            f"failed to add library {library.name} to the store", self._store.put_library(library.name, library.content)
        )

    async def remove_library(self, name: str) -> bool:
        """Delete `msgscript/libs/<name>` if it exists."""
        key = library_key(name)
        failure = "failed to remove library"
        if await self._call(failure, self._client.get(key, timeout_s=ETCD_REQUEST_TIMEOUT_S)) is None:
            return False
        await self._call(failure, self._store.delete_library(name))
        return True

    async def libraries(self) -> list[str]:
        """The name of every key under `msgscript/libs/`."""
        found = await self._call(
            "failed to list libraries", self._client.get_prefix(LIBRARIES_PREFIX, timeout_s=ETCD_REQUEST_TIMEOUT_S)
        )
        return sorted(kv.key.decode("utf-8", "replace").removeprefix(LIBRARIES_PREFIX) for kv in found)


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(function, *args)
    except MsgscriptError as exc:
        raise CommandFailed(str(exc)) from exc


class FileCatalog:
    """The script and library directories of the file store (see docs/cli.md for the file name rules)."""

    def __init__(self, script_dir: str, library_dir: str) -> None:
        self._script_dir = script_dir
        self._library_dir = library_dir

    def _scripts(self) -> ScriptDirectory:
        if not self._script_dir:
            raise CommandFailed("script directory cannot be empty")
        return ScriptDirectory(self._script_dir)

    def _libraries(self) -> LibraryDirectory:
        if not self._library_dir:
            raise CommandFailed("library directory cannot be empty")
        return LibraryDirectory(self._library_dir)

    async def add_script(self, script: Script, text: str) -> None:
        """Write the file text, its subject and name headers rewritten where the flags overrode them."""
        directory = self._scripts()
        header = parse_script(text)
        overrides = {
            key: value
            for key, value, old in (("subject", script.subject, header.subject), ("name", script.name, header.name))
            if value != old
        }
        path = await _in_thread(directory.put, script.subject, script.name, set_headers(text, overrides))
        log.info("script written to %s", path)

    async def remove_script(self, subject: str, name: str) -> bool:
        """Remove every file holding the script."""
        directory = self._scripts()
        removed = await _in_thread(directory.remove, subject, name)
        for path in removed:
            log.info("removed %s", path)
        return bool(removed)

    async def scripts(self) -> list[tuple[str, str]]:
        """The scripts the file store would load (files without a subject or a name cannot serve and are left out)."""
        directory = self._scripts()
        found = await _in_thread(directory.scripts)
        return sorted({(s.subject, s.name) for _, s in found if s.subject and s.name})

    async def add_library(self, library: Script, text: str) -> None:
        """Write the library file as it is."""
        directory = self._libraries()
        path = await _in_thread(directory.put, library.name, text)
        log.info("library written to %s", path)

    async def remove_library(self, name: str) -> bool:
        """Remove every file holding the library."""
        directory = self._libraries()
        removed = await _in_thread(directory.remove, name)
        for path in removed:
            log.info("removed %s", path)
        return bool(removed)

    async def libraries(self) -> list[str]:
        """The library names the file store would load."""
        directory = self._libraries()
        found = await _in_thread(directory.libraries)
        return sorted({library.name for _, library in found if library.name})


def etcd_endpoints(urls: str) -> tuple[str, ...]:
    """The `-e` value (or ETCD_ENDPOINTS) split on commas."""
    return tuple(part.strip() for part in urls.split(",") if part.strip())


def etcd_settings(options: Mapping[str, str | None]) -> Settings:
    """Settings for the etcd backend from the global flags: endpoints, TLS files, user and password."""
    return Settings(
        backend="etcd",
        etcd_endpoints=etcd_endpoints(options.get("etcdurls") or ""),
        etcd_tls_ca_file=options.get("etcd_ca") or "",
        etcd_tls_cert_file=options.get("etcd_cert") or "",
        etcd_tls_key_file=options.get("etcd_key") or "",
        etcd_user=options.get("etcd_user") or "",
        etcd_password=options.get("etcd_password") or "",
    )


@contextlib.asynccontextmanager
async def open_catalog(options: Mapping[str, str | None]) -> AsyncIterator[Catalog]:
    """The catalog of the `-b` backend; for etcd, a store whose etcd answered.

    Raises:
        CommandFailed: unknown backend, or the etcd store cannot be opened or reached.
    """
    backend = options.get("backend") or "etcd"
    if backend == "file":
        yield FileCatalog(options.get("script_dir") or "", options.get("library_dir") or "")
        return
    if backend != "etcd":
        raise CommandFailed(f"Unknown backend: {backend}")
    settings = etcd_settings(options)
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(open_etcd(settings))
            # Opening reads the store once (bounded): an unreachable etcd fails here, within seconds.
            store = await stack.enter_async_context(open_store(settings, etcd=client))
        except MsgscriptError as exc:
            raise CommandFailed(f"failed to get script store: {exc}") from exc
        yield EtcdCatalog(store, client)


def run_with_catalog(options: Mapping[str, str | None], action: Callable[[Catalog], Awaitable[T]]) -> T:
    """Open the catalog, run `action` on it, close it."""
    from msgscript.cli.server import run_async

    async def main() -> T:
        async with open_catalog(options) as catalog:
            return await action(catalog)

    with _quiet_etcd_client():
        return run_async(main())


@contextlib.contextmanager
def _quiet_etcd_client() -> Iterator[None]:
    # The etcd client logs an outage for the daemon's sake; the command reports it itself, once
    # (unless debugging).
    logger = logging.getLogger("msgscript.etcd")
    previous = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


# Commands ---------------------------------------------------------------------------------------------


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-s", "--subject", default="", help="Subject (default: the script's header).")
@click.option("-n", "--name", default="", help="Name (default: the script's header).")
@click.pass_obj
def add(obj: dict[str, str | None], file: str, subject: str, name: str) -> None:
    """Add a script to the store, or replace the one with the same subject and name."""
    text = read_text(file)
    script = identified(parse_text(file, text), subject, name)
    check_subject(script.subject)
    check_name(script.name)

    async def action(catalog: Catalog) -> None:
        await catalog.add_script(script, text)

    run_with_catalog(obj, action)
    # The trailing space is the Go CLI's.
    click.echo(f"Script added successfully for subject {script.subject} named {script.name} ", err=True)


@click.command("list")
@click.pass_obj
def list_scripts(obj: dict[str, str | None]) -> None:
    """List the scripts in the store (alias: ls)."""

    async def action(catalog: Catalog) -> list[tuple[str, str]]:
        return await catalog.scripts()

    rows = run_with_catalog(obj, action)
    if not rows:
        click.echo("No script in store", err=True)
        return
    click.echo(format_table(("SUBJECT", "NAME"), rows))


@click.command("rm")
@click.option("-s", "--subject", required=True, help="Subject of the script.")
@click.option("-n", "--name", required=True, help="Name of the script.")
@click.pass_obj
def remove_script(obj: dict[str, str | None], subject: str, name: str) -> None:
    """Remove a script from the store."""

    async def action(catalog: Catalog) -> bool:
        return await catalog.remove_script(subject, name)

    if not run_with_catalog(obj, action):
        raise CommandFailed(f"script {name} not found for subject {subject}")
    click.echo("Script removed", err=True)


@click.group()
def lib() -> None:
    """Library related commands."""


def _library_files(paths: Sequence[str], recursive: bool) -> list[str]:
    """The files named, and the `*.lua` files of the directories named (directly inside, or below with -r)."""
    files: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(str(path))
            continue
        try:
            found = path.rglob("*.lua") if recursive else path.glob("*.lua")
            files.extend(str(p) for p in sorted(found) if p.is_file())
        except OSError as exc:
            raise CommandFailed(f"failed to parse directories for librairies: {exc}") from exc
    return files


@lib.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-r", "--recursive", is_flag=True, help="Take the *.lua files of directories at any depth.")
@click.pass_obj
def add_libraries(obj: dict[str, str | None], paths: tuple[str, ...], recursive: bool) -> None:
    """Add libraries (files, or the *.lua files of directories), each under its `--* name:` header."""
    libraries: dict[str, tuple[str, Script, str]] = {}
    for file in _library_files(paths, recursive):
        text = read_text(file)
        library = parse_text(file, text)
        if not library.name:
            raise CommandFailed(f"script at {file} requires to have the 'name' header")
        check_name(library.name, "library name")
        if library.name in libraries:
            raise CommandFailed(f"{libraries[library.name][0]} and {file} both have the name {library.name}")
        libraries[library.name] = (file, library, text)

    async def action(catalog: Catalog) -> None:
        for _, library, text in libraries.values():
            await catalog.add_library(library, text)

    run_with_catalog(obj, action)
    click.echo(f"Added {len(libraries)} libraries", err=True)


@lib.command("list")
@click.pass_obj
def list_libraries(obj: dict[str, str | None]) -> None:
    """List the libraries in the store (alias: ls)."""

    async def action(catalog: Catalog) -> list[str]:
        return await catalog.libraries()

    names = run_with_catalog(obj, action)
    if not names:
        click.echo("No library in store", err=True)
        return
    click.echo(format_table(("NAME",), [(name,) for name in names]))


@lib.command("rm")
@click.argument("name")
@click.pass_obj
def remove_library(obj: dict[str, str | None], name: str) -> None:
    """Remove a library from the store."""

    async def action(catalog: Catalog) -> bool:
        return await catalog.remove_library(name)

    if not run_with_catalog(obj, action):
        raise CommandFailed(f"library {name} not found")
    click.echo("Library removed", err=True)


def _hidden_alias(command: click.Command, name: str) -> click.Command:
    """The same command under another name, left out of the help."""
    return click.Command(
        name, callback=command.callback, params=command.params, help=command.help, hidden=True, context_settings={}
    )


lib.add_command(_hidden_alias(list_libraries, "ls"))


@click.command()
@click.argument("shell", metavar="[bash|zsh|fish]")
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    bash: source <(msgscriptcli completion bash)
    zsh:  source <(msgscriptcli completion zsh)
    fish: msgscriptcli completion fish | source
    """
    cls = get_completion_class(shell) if shell in COMPLETION_SHELLS else None
    if cls is None:
        raise click.BadParameter(
            f"{shell!r} is not supported; choose one of {', '.join(COMPLETION_SHELLS)}", ctx=ctx, param_hint="SHELL"
        )
    complete_var = f"_{PROG_NAME.upper()}_COMPLETE"
    click.echo(cls(ctx.find_root().command, {}, PROG_NAME, complete_var).source())


def register(group: click.Group) -> None:
    """Add the store commands to the `msgscriptcli` group."""
    group.add_command(add)
    group.add_command(list_scripts)
    group.add_command(_hidden_alias(list_scripts, "ls"))
    group.add_command(remove_script)
    group.add_command(lib)
    group.add_command(completion)
