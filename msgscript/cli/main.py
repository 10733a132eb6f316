"""The `msgscriptcli` command: manage scripts and libraries in a store, run one script locally (`dev`)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import click

from msgscript import __version__, config
from msgscript.cli.devhttp import devhttp
from msgscript.cli.scripts import CommandFailed as CommandFailed
from msgscript.cli.scripts import identified, register
from msgscript.cli.scripts import read_script_file as read_script_file
from msgscript.cli.server import run_async
from msgscript.cluster import NoLock
from msgscript.config import Settings
from msgscript.dispatch import Dispatcher
from msgscript.errors import ScriptParseError
from msgscript.executors import open_executors
from msgscript.logs import configure_logging
from msgscript.message import Message, Result
from msgscript.script import parse_script
from msgscript.store.memory import MemoryStore


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-L", "--log", "log_level", default="warning", show_default=True, help="Log level.")
@click.option(
    "-e",
    "--etcdurls",
    default=config.DEFAULT_ETCD_URL,
    envvar="ETCD_ENDPOINTS",
    show_envvar=True,
    show_default=True,
    help="Comma-separated etcd endpoints.",
)
@click.option(
    "--etcd-ca",
    default=config.NO_FILE,
    envvar="ETCDCTL_CACERT",
    show_envvar=True,
    metavar="FILE",
    help="CA certificates that sign etcd's (turns TLS on; https:// endpoints do too).",
)
@click.option(
    "--etcd-cert",
    default=config.NO_FILE,
    envvar="ETCDCTL_CERT",
    show_envvar=True,
    metavar="FILE",
    help="Client certificate for etcd.",
)
@click.option(
    "--etcd-key",
    default=config.NO_FILE,
    envvar="ETCDCTL_KEY",
    show_envvar=True,
    metavar="FILE",
    help="Key of the etcd client certificate.",
)
@click.option(
    "--etcd-user",
    default=config.NO_CREDENTIAL,
    envvar="ETCDCTL_USER",
    show_envvar=True,
    help="etcd user name, or user:password as etcdctl takes it.",
)
@click.option(
    "--etcd-password",
    default=config.NO_CREDENTIAL,
    envvar="ETCDCTL_PASSWORD",
    show_envvar=True,
    help="etcd password (prefer the environment variable: flags show in ps).",
)
@click.option("-u", "--natsurl", default="nats://localhost:4222", envvar="NATS_URL", show_default=True)
@click.option("-b", "--backend", default="etcd", show_default=True, help="Script store: etcd or file.")
@click.option("-x", "--executor", default=None, help="Executor for dev/devhttp (default: the script's header).")
@click.option("--script", "script_dir", default="", metavar="DIR", help="Script directory (-b file).")
@click.option("--library", "library_dir", default="", metavar="DIR", help="Library directory (-b file).")
@click.version_option(__version__, "--version", prog_name="msgscriptcli", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    log_level: str,
    etcdurls: str,
    etcd_ca: str,
    etcd_cert: str,
    etcd_key: str,
    etcd_user: str,
    etcd_password: str,
    natsurl: str,
    backend: str,
    executor: str | None,
    script_dir: str,
    library_dir: str,
) -> None:
    """msgscript is a command line interface for managing scripts for the msgscript-server."""
    from msgscript.logs import parse_level

    try:
        level = parse_level(log_level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log") from None
    configure_logging(logging.DEBUG if os.environ.get("DEBUG") else level)
    ctx.obj = {
        "etcdurls": etcdurls,
        "etcd_ca": etcd_ca,
        "etcd_cert": etcd_cert,
        "etcd_key": etcd_key,
        "etcd_user": etcd_user,
        "etcd_password": etcd_password,
        "natsurl": natsurl,
        "backend": backend,
        "executor": executor,
        "script_dir": script_dir,
        "library_dir": library_dir,
    }


def load_dev_libraries(store: MemoryStore, library_dir: str) -> None:
    """Libraries for dev runs: every `*.lua` below the directory, by relative path without `.lua` and by name header."""
    root = Path(library_dir)
    if not root.exists():
        raise CommandFailed(f"failed to read library path {library_dir}: no such file or directory")
    if not root.is_dir():
        raise CommandFailed(f"given library path {library_dir} isn't a directory")
    for path in sorted(root.rglob("*.lua")):
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        store.add_library(path.relative_to(root).with_suffix("").as_posix(), text)
        try:
            header_name = parse_script(text).name
        except ScriptParseError:
            continue
        if header_name:
            store.add_library(header_name, text)


@cli.command()
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
    script = identified(read_script_file(file), subject, name)
    script = replace(script, executor=obj.get("executor") or script.executor)
    payload = input_.encode("utf-8", "surrogateescape")
    if input_ and Path(input_).is_file():
        payload = Path(input_).read_bytes()
    store = MemoryStore()
    store.add(script)
    if library:
        load_dev_libraries(store, library)
    settings = Settings(plugin_dir=plugin_dir, script_timeout_s=timeout_s, env=dict(os.environ))

    async def run_once() -> Result:
        async with open_executors(settings, None) as executors:
            dispatcher = Dispatcher(store, executors, NoLock(), script_timeout_s=timeout_s)
            return await dispatcher.run(script, Message(subject=script.subject, payload=payload))

    result = run_async(run_once())
    if result.error:
        raise CommandFailed(f"Error while running script: {result.error}")
    click.echo(b"Result: " + (result.payload or b""))


def main() -> None:
    """Console entry point of `msgscriptcli`."""
    cli(prog_name="msgscriptcli")


cli.add_command(devhttp)
register(cli)
