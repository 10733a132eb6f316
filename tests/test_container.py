"""The container image: built from the Containerfile on the local base image (see .ci/setup-container), then run
with podman the way docs/deploy.md says."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, missing

ROOT = Path(__file__).parent.parent
BASE_IMAGE = "localhost/msgscript-base:bookworm"
IMAGE = "localhost/msgscript:test"
# pip inside the build reaches PyPI through this machine's certificate authorities, not the base image's.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 480.0
PODMAN_STEP_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0

# The first test builds the image (a cold build downloads every dependency from PyPI).
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 120)


def podman(*args: str, timeout: float = PODMAN_STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


def run_image(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the image once with the examples at /scripts; the container is removed when it exits."""
    name = f"test-container-{secrets.token_hex(4)}"
    command = ["run", "--rm", "--pull=never", "--no-healthcheck", "--name", name]
    command += ["-v", f"{ROOT / 'examples'}:/scripts:ro", image, *args]
    try:
        return podman(*command)
    finally:
        podman("rm", "--force", "--ignore", name)


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this checkout, on the local base image."""
    if shutil.which("podman") is None:
        missing("podman")
    if podman("image", "exists", BASE_IMAGE).returncode != 0:
        missing(f"the podman image {BASE_IMAGE} (.ci/setup-container builds it)")
    command = ["build", "--pull=never", "--format", "docker", "--build-arg", f"BASE={BASE_IMAGE}"]
    if HOST_CA_BUNDLE.exists():
        command += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    command += ["-t", IMAGE, str(ROOT)]
    built = podman(*command, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, f"podman build failed:\n{built.stdout}\n{built.stderr}"
    return IMAGE


@dataclass
class Server:
    """A `server` container run by `podman run` in the foreground; `log` holds what it writes."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def http(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (or a POST with `data`), without any proxy of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, data=data, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the container exited ({server.process.returncode}):\n{server.log.read_text()}")
        try:
            if http(server.url("/healthz"))[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"/healthz did not answer within {STARTUP_TIMEOUT_S} s:\n{server.log.read_text()}")


@contextlib.contextmanager
def running_server(image: str, log: Path, *args: str) -> Iterator[Server]:
    """`server <args>` with the examples mounted at /scripts and the gateway on a free port of 127.0.0.1, until
    /healthz answers; killed (and so removed) at the end."""
    name, port = f"test-container-{secrets.token_hex(4)}", free_port()
    # No healthcheck timer: podman wants systemd for it; `podman healthcheck run` still works.
    command = ["podman", "run", "--rm", "--pull=never", "--name", name, "--health-interval", "disable"]
    command += ["-p", f"127.0.0.1:{port}:7643", "-v", f"{ROOT / 'examples'}:/scripts:ro", image, "server", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        server = Server(name, port, log, process)
        wait_until_healthy(server)
        yield server
    finally:
        podman("kill", name)
        try:
            process.wait(PODMAN_STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        podman("rm", "--force", "--ignore", name)


@pytest.fixture(scope="module")
def server(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`server -script /scripts`: the examples."""
    with running_server(image, tmp_path_factory.mktemp("container") / "log", "-script", "/scripts") as running:
        yield running


def test_server_answers_hello_over_http(server: Server) -> None:
    status, body = http(server.url("/funcs.hello"), b"John")
    assert status == 200, body
    [result] = json.loads(body)
    assert result["error"] == ""
    assert base64.b64decode(result["payload"]) == b"Processed subject: funcs.hello with payload: John"


def test_server_loads_the_bundled_plugins_and_libraries(server: Server) -> None:
    for subject, expected in [("funcs.hello_plugin", b"Hello from a Go plugin!"), ("funcs.library", b"Hello, Bob!")]:
        status, body = http(server.url(f"/{subject}"), b"Bob")
        assert status == 200, body
        [result] = json.loads(body)
        assert base64.b64decode(result["payload"]) == expected, result


def test_healthz_and_the_image_healthcheck_pass(image: str, server: Server) -> None:
    assert http(server.url("/healthz"))[0] == 200
    [inspected] = json.loads(podman("image", "inspect", image).stdout)
    assert "MSGSCRIPT_HEALTHCHECK_URL" in " ".join(inspected["Healthcheck"]["Test"])
    assert "MSGSCRIPT_HEALTHCHECK_URL=http://127.0.0.1:7643/healthz" in inspected["Config"]["Env"]
    assert "7643/tcp" in inspected["Config"]["ExposedPorts"]
    check = podman("healthcheck", "run", server.name)
    assert check.returncode == 0, check


def test_every_process_in_the_container_runs_as_non_root(image: str, server: Server) -> None:
    # Real uid of every process: the supervisor (pid 1), its worker, the embedded nats-server.
    probe = (
        "import os; print(*(open(f'/proc/{p}/status').read().split('Uid:')[1].split()[0]"
        " for p in os.listdir('/proc') if p.isdigit()))"
    )
    uids = podman("exec", server.name, "/opt/msgscript/venv/bin/python", "-c", probe)
    assert uids.returncode == 0, uids
    assert len(uids.stdout.split()) >= 3, uids.stdout
    assert set(uids.stdout.split()) == {"10001"}
    assert podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "10001:10001"


def test_cli_passes_its_arguments_through(image: str) -> None:
    helped = run_image(image, "cli", "--help")
    assert helped.returncode == 0, helped
    assert "Usage: msgscriptcli" in helped.stdout
    ran = run_image(image, "cli", "dev", "-i", "John", "/scripts/hello_plugin.lua")
    assert ran.returncode == 0, ran
    # hello.print() also prints its text, as the Go plugin does.
    assert ran.stdout.splitlines()[-1] == "Result: Hello from a Go plugin!"


def test_unknown_command_is_a_usage_error(image: str) -> None:
    ran = run_image(image, "bogus")
    assert ran.returncode == 1
    assert "Error: Unknown command 'bogus'" in ran.stderr
    assert "Usage:" in ran.stderr


def test_no_command_prints_usage_and_fails(image: str) -> None:
    ran = run_image(image)
    assert ran.returncode == 1
    assert "Error: No command specified." in ran.stderr
    assert "Usage:" in ran.stderr


def test_help_prints_usage(image: str) -> None:
    for flag in ("help", "-h", "--help"):
        ran = run_image(image, flag)
        assert ran.returncode == 0, ran
        assert "Usage:" in ran.stdout
        assert "server [args]" in ran.stdout


def test_server_reads_scripts_from_its_workdir_and_stops_on_sigterm(image: str, tmp_path: Path) -> None:
    with running_server(image, tmp_path / "log") as server:
        status, body = http(server.url("/funcs.hello"), b"John")
        assert status == 200, body
        started = time.monotonic()
        stopped = podman("stop", "--time", "20", server.name)
        assert stopped.returncode == 0, stopped
        assert server.process.wait(PODMAN_STEP_TIMEOUT_S) == 0, server.log.read_text()
        assert time.monotonic() - started < 20
