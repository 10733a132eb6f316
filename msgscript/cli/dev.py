"""`msgscriptcli dev`: run one script file once, locally, through the daemon's dispatcher (without NATS)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click

from msgscript import config
from msgscript.cli.options import CommandFailed
from msgscript.cli.scripts import identified, read_script_file
from msgscript.config import Settings
from msgscript.errors import ScriptParseError
from msgscript.message import Message, Result
from msgscript.script import Script, parse_script
from msgscript.store.memory_store import MemoryStore


def read_dev_libraries(library_dir: str) -> dict[str, str]:
    """Libraries for dev runs: every `*.lua` below the directory, by relative path without `.lua` and by name header.

    Raises:
        CommandFailed: the directory does not exist or is not a directory.
        OSError: a file cannot be read.
    """
    root = Path(library_dir)
    if not root.exists():
        raise CommandFailed(f"failed to read library path {library_dir}: no such file or directory")
    if not root.is_dir():
        raise CommandFailed(f"given library path {library_dir} isn't a directory")
    libraries: dict[str, str] = {}
    for path in sorted(root.rglob("*.lua")):
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        libraries[path.relative_to(root).with_suffix("").as_posix()] = text
        try:
            header_name = parse_script(text).name
        except ScriptParseError:
            continue
        if header_name:
            libraries[header_name] = text
    return libraries


def dev_settings(plugin_dir: str, timeout_s: float) -> Settings:
    """The settings of a local run: the plugins given, the timeout, the environment for `os.getenv`."""
    return Settings(plugin_dir=plugin_dir, script_timeout_s=timeout_s, env=dict(os.environ))


def with_executor(script: Script, executor: str | None) -> Script:
    """The script run by the `-x` executor when one was given."""
    return replace(script, executor_header=executor or script.executor_header)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-s", "--subject", default="", help="Subject (default: the script's header).")
@click.option("-n", "--name", default="", help="Name (default: the script's header).")
@click.option("-i", "--input", "input_", default="", help="Payload, or the path of a file holding it.")
@click.option("-l", "--library", default="", help="Library directory.")
@click.option("-p", "--pluginDir", "plugin_dir", default="", help="Plugin directory.")
@click.option("--timeout", "timeout_s", type=float, default=config.DEFAULT_SCRIPT_TIMEOUT_S, show_default=True)
@click.pass_obj
def dev(
    obj: dict[str, str | None],
    file: str,
    subject: str,
    name: str,
    input_: str,
    library: str,
    plugin_dir: str,
    timeout_s: float,
) -> None:
    """Run a script once, locally, the way the server would (without NATS)."""
    from msgscript.cli.server import run_async
    from msgscript.compose import open_dispatcher

    script = with_executor(identified(read_script_file(file), subject, name), obj.get("executor"))
    payload = input_.encode("utf-8", "surrogateescape")
    if input_ and Path(input_).is_file():
        payload = Path(input_).read_bytes()
    store = MemoryStore()
    store.add(script)
    if library:
        store.replace_libraries(read_dev_libraries(library))

    async def run_once() -> Result:
        async with open_dispatcher(dev_settings(plugin_dir, timeout_s), store) as dispatcher:
            return await dispatcher.run(script, Message(subject=script.subject, payload=payload))

    result = run_async(run_once())
    if result.error:
        raise CommandFailed(f"Error while running script: {result.error}")
    click.echo(b"Result: " + (result.payload or b""))
