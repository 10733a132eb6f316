"""`msgscriptcli` store commands: add, list, rm, the `lib` group and `completion`.

They read and write through the Store protocol (msgscript.cli.command_store opens the `-b` one): with
`-b etcd` the keys the daemon follows (`msgscript/scripts/<subject>/<name>`, `msgscript/libs/<name>`), with
`-b file` the script and library directories the daemon loads at startup. Messages go to stderr and tables to
stdout; a failure exits 1, a usage error 2.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeVar

import click
from click.shell_completion import get_completion_class

from msgscript.cli.command_store import CommandStore, open_command_store, quiet_etcd_client
from msgscript.cli.options import CommandFailed
from msgscript.errors import MsgscriptError, ScriptParseError
from msgscript.script import Script, parse_script
from msgscript.subjects import is_valid_pattern

T = TypeVar("T")

PROG_NAME = "msgscriptcli"
COMPLETION_SHELLS = ("bash", "zsh", "fish")


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


def run_with_store(
    options: Mapping[str, str | None],
    holding: Literal["scripts", "libraries"],
    action: Callable[[CommandStore], Awaitable[T]],
) -> T:
    """Open the `-b` store (see open_command_store), run `action` on it, close it.

    Raises:
        CommandFailed: the store cannot be opened, or `action` failed with a msgscript error.
    """
    from msgscript.cli.server import run_async

    async def main() -> T:
        async with open_command_store(options, holding) as target:
            return await action(target)

    try:
        with quiet_etcd_client():
            return run_async(main())
    except MsgscriptError as exc:
        raise CommandFailed(str(exc)) from exc


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

    async def action(target: CommandStore) -> None:
        # With the file backend the file is written as it is, its headers set to the -s/-n values.
        await target.call("Failed to add script to etcd", target.store.put_script(script, text=text))

    run_with_store(obj, "scripts", action)
    # The trailing space is the Go CLI's.
    click.echo(f"Script added successfully for subject {script.subject} named {script.name} ", err=True)


@click.command("list")
@click.pass_obj
def list_scripts(obj: dict[str, str | None]) -> None:
    """List the scripts in the store (alias: ls)."""

    async def action(target: CommandStore) -> list[tuple[str, str]]:
        return await target.call("failed to list scripts", target.store.script_names())

    rows = run_with_store(obj, "scripts", action)
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

    async def action(target: CommandStore) -> bool:
        return await target.call("failed to remove script", target.store.delete_script(subject, name))

    if not run_with_store(obj, "scripts", action):
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

    async def action(target: CommandStore) -> None:
        for _, library, text in libraries.values():
            await target.call(
                f"failed to add library {library.name} to the store",
                target.store.put_library(library.name, library.content, text=text),
            )

    run_with_store(obj, "libraries", action)
    click.echo(f"Added {len(libraries)} libraries", err=True)


@lib.command("list")
@click.pass_obj
def list_libraries(obj: dict[str, str | None]) -> None:
    """List the libraries in the store (alias: ls)."""

    async def action(target: CommandStore) -> list[str]:
        return await target.call("failed to list libraries", target.store.library_names())

    names = run_with_store(obj, "libraries", action)
    if not names:
        click.echo("No library in store", err=True)
        return
    click.echo(format_table(("NAME",), [(name,) for name in names]))


@lib.command("rm")
@click.argument("name")
@click.pass_obj
def remove_library(obj: dict[str, str | None], name: str) -> None:
    """Remove a library from the store."""

    async def action(target: CommandStore) -> bool:
        return await target.call("failed to remove library", target.store.delete_library(name))

    if not run_with_store(obj, "libraries", action):
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
