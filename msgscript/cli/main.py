"""The `msgscriptcli` command: manage scripts and libraries in a store, run one script locally (`dev`)."""

from __future__ import annotations

import logging
import os

import click

from msgscript import __version__, config
from msgscript.cli.dev import dev
from msgscript.cli.devhttp import devhttp
from msgscript.cli.init import init
from msgscript.cli.scripts import register
from msgscript.cli.testing import script_tests
from msgscript.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-L", "--log", "log_level", default=config.DEFAULT_CLI_LOG_LEVEL, show_default=True, help="Log level.")
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
@click.option("-u", "--natsurl", default=config.DEFAULT_NATS_URL, envvar="NATS_URL", show_default=True)
@click.option(
    "-b", "--backend", default=config.DEFAULT_CLI_BACKEND, show_default=True, help="Script store: etcd or file."
)
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


def main() -> None:
    """Console entry point of `msgscriptcli`."""
    cli(prog_name="msgscriptcli")


cli.add_command(dev)
cli.add_command(devhttp)
cli.add_command(init)
cli.add_command(script_tests)
register(cli)
