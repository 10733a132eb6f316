"""The podman executor with real containers of the locally imported busybox image (see .ci/setup-podman)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from msgscript.errors import ScriptError, ScriptTimeout
from msgscript.executors.base import RunContext
from msgscript.executors.podman import MAX_STDOUT_BYTES, PodmanExecutor, podman_url
from msgscript.executors.podman_config import parse_config
from msgscript.message import Message, Reply, Result
from msgscript.script import Script, parse_script
from tests.conftest import DaemonFactory
from tests.processes import command_env, daemon_running
from tests.servers import NatsServer, free_port, missing

ROOT = Path(__file__).parent.parent
IMAGE = "localhost/msgscript-busybox:latest"
UNREACHABLE_IMAGE = "msgscript.invalid/missing:latest"
STUB_ERROR = "msgscript wasn't built with podman support"
PODMAN_STEP_TIMEOUT_S = 30.0


def container(subject: str, name: str, config: dict[str, Any], *headers: str) -> str:
    """A podman script file: the headers, then the configuration as JSON."""
    lines = [f"--* subject: {subject}", f"--* name: {name}", "--* executor: podman", *headers]
    return "\n".join(lines) + "\n" + json.dumps(config, indent=2) + "\n"


def shell(command: str, **extra: Any) -> dict[str, Any]:
    return {"image": IMAGE, "command": ["sh", "-c", command], **extra}


SCRIPTS = {
    "echo.lua": (ROOT / "examples" / "podman" / "echo.lua").read_text(),
    "fail.lua": (ROOT / "examples" / "podman" / "fail.lua").read_text(),
    "env.lua": container(
        "pod.env", "env", shell('printf "%s|%s|%s|%s|" "$SUBJECT" "$METHOD" "$URL" "$PAYLOAD"; env; printf "|"; cat')
    ),
    "badjson.lua": "--* subject: pod.badjson\n--* name: badjson\n--* executor: podman\n{not json\n",
    "noimage.lua": container("pod.noimage", "noimage", {"command": ["true"]}),
    "unreachable.lua": container("pod.unreachable", "unreachable", {"image": UNREACHABLE_IMAGE}),
    "sleep.lua": container("pod.sleep", "sleep", {"image": IMAGE, "command": ["sleep", "30"]}, "--* timeout: 1s"),
    "long.lua": container("pod.long", "long", {"image": IMAGE, "command": ["sleep", "60"]}),
    "user.lua": container(
        "pod.user", "user", {"image": IMAGE, "command": ["id"], "user": "nobody", "groups": ["1234"]}
    ),
}


@pytest.fixture(scope="module")
def podman() -> str:
    """The podman executable, with the local busybox image present."""
    found = shutil.which("podman")
    if found is None:
        missing("podman")
    assert found is not None
    exists = subprocess.run([found, "image", "exists", IMAGE], timeout=PODMAN_STEP_TIMEOUT_S, check=False)
    if exists.returncode != 0:
        missing(f"the podman image {IMAGE} (.ci/setup-podman builds it)")
    return found


@pytest.fixture
def scripts(fixture_dirs: tuple[Path, Path], podman: str) -> Path:
    """The daemon's script directory, with the podman scripts of these tests added."""
    directory, _ = fixture_dirs
    for name, text in SCRIPTS.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
async def executor(podman: str) -> AsyncIterator[PodmanExecutor]:
    async with PodmanExecutor(podman, env={}) as opened:
        yield opened


async def podman_out(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "podman", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), PODMAN_STEP_TIMEOUT_S)
    assert process.returncode == 0, args
    return stdout.decode()


async def our_containers() -> set[str]:
    """Names of the containers (in any state) that the executor created."""
    names = await podman_out("ps", "--all", "--format", "{{.Names}}")
    return {name for name in names.split() if name.startswith("msgscript-")}


async def wait_for_new_container(before: set[str], timeout_s: float = 15.0) -> str:
    async with asyncio.timeout(timeout_s):
        while True:
            new = await our_containers() - before
            if new:
                return new.pop()
            await asyncio.sleep(0.1)


async def request(nc: nats.NATS, subject: str, data: bytes, timeout: float = 20) -> Result:
    msg = await nc.request(subject, data, timeout=timeout)
    reply = Reply.from_json(msg.data)
    assert reply.results is not None and len(reply.results) == 1, msg.data
    return reply.results[0]


def run_context(timeout_s: float = 20.0) -> RunContext:
    return RunContext(deadline=time.monotonic() + timeout_s, timeout_s=timeout_s)


def script(config: dict[str, Any]) -> Script:
    return parse_script(json.dumps(config))


# --- through a daemon, over NATS -----------------------------------------------------------------


async def test_example_answers_with_its_stdout_over_nats(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    async with make_daemon():
        msg = await nc.request("funcs.podman", b"John", timeout=20)
    payload = base64.b64encode(b"subject=funcs.podman method= url=\npayload=John").decode()
    assert msg.data == (
        b'{"script_result":[{"http_code":0,"error":"","http_headers":{},"is_html":false,'
        b'"payload":"' + payload.encode() + b'"}],"is_html":false}'
    )


async def test_environment_holds_the_message_and_nothing_of_the_daemon(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    env = {"PATH": os.defpath + ":/usr/sbin:/sbin", "MSGSCRIPT_TEST_SECRET": "s3cret"}
    async with make_daemon(env=env):
        result = await request(nc, "pod.env", b"hello there")
    assert result.error == ""
    assert result.http_code == 0
    assert result.payload is not None
    parts = result.payload.split(b"|")
    head, environment, stdin = parts[:4], b"|".join(parts[4:-1]), parts[-1]
    assert head == [b"pod.env", b"", b"", b"hello there"]
    assert b"SUBJECT=pod.env" in environment
    assert b"s3cret" not in environment
    assert stdin == b"hello there"


async def test_stderr_is_the_error_and_the_exit_code_the_http_code(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    async with make_daemon():
        result = await request(nc, "funcs.podman_fail", b"")
    assert result == Result(http_code=3, error="something broke\n", http_headers={}, payload=b"half done\n")


async def test_configuration_errors_are_result_errors(scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS) -> None:
    async with make_daemon():
        bad = await request(nc, "pod.badjson", b"")
        no_image = await request(nc, "pod.noimage", b"")
    prefix = "failed to execute container: failed to decode container configuration: "
    assert bad.error.startswith(prefix)
    assert no_image.error == prefix + "image must be an image reference"


async def test_a_missing_image_without_registry_is_a_pull_error(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    async with make_daemon():
        result = await request(nc, "pod.unreachable", b"")
    assert result.error.startswith(f"failed to execute container: failed to pull image {UNREACHABLE_IMAGE}: ")
    assert "msgscript.invalid" in result.error.removeprefix("failed to execute container: failed to pull image")


async def test_timeout_kills_and_removes_the_container(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS
) -> None:
    before = await our_containers()
    async with make_daemon():
        started = time.monotonic()
        result = await request(nc, "pod.sleep", b"")
        assert result.error == "script timed out after 1s"
        assert time.monotonic() - started < 10
        assert await our_containers() - before == set()
        # The daemon goes on serving.
        assert (await request(nc, "funcs.podman_fail", b"")).http_code == 3


async def test_shutdown_removes_running_containers(scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS) -> None:
    before = await our_containers()
    async with make_daemon(grace_period_s=0.2):
        pending = asyncio.create_task(nc.request("pod.long", b"", timeout=30))
        await wait_for_new_container(before)
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
        await pending
    assert await our_containers() - before == set()


async def test_mounts_bind_a_host_directory(
    fixture_dirs: tuple[Path, Path], podman: str, make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host")
    out = tmp_path / "out"
    out.mkdir()
    mounts = [
        {"destination": "/in", "type": "bind", "source": str(shared), "options": ["rbind", "ro"]},
        {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind", "rw"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=1777"]},
    ]
    command = "cat /in/in.txt; touch /in/nope 2>/dev/null || printf ' ro'; cat > /out/got.txt; touch /scratch/x"
    (fixture_dirs[0] / "mounts.lua").write_text(container("pod.mounts", "mounts", shell(command, mounts=mounts)))
    async with make_daemon():
        result = await request(nc, "pod.mounts", b"written by the container")
    assert (result.payload, result.error, result.http_code) == (b"from the host ro", "", 0)
    assert (out / "got.txt").read_bytes() == b"written by the container"


async def test_user_and_groups(scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS) -> None:
    async with make_daemon():
        result = await request(nc, "pod.user", b"")
    assert result.payload == b"uid=65534(nobody) gid=65534(nogroup) groups=1234,65534(nogroup)\n"


async def test_a_podman_that_does_not_work_disables_podman_scripts(
    scripts: Path, make_daemon: DaemonFactory, nc: nats.NATS, tmp_path: Path
) -> None:
    env = {"PATH": os.defpath, "CONTAINER_HOST": f"unix://{tmp_path}/no-such.sock"}
    async with make_daemon(env=env):
        assert (await request(nc, "funcs.podman", b"")).error == STUB_ERROR
        assert (await request(nc, "funcs.hello", b"x")).payload == b"Processed subject: funcs.hello with payload: x"


async def test_without_podman_on_path_the_daemon_runs_and_podman_scripts_get_the_stub_error(
    scripts: Path, nats_server: NatsServer, nc: nats.NATS, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    args = ("-natsurl", nats_server.url, "-script", str(scripts), "-port", str(free_port()))
    async with daemon_running(*args, env=command_env(PATH=str(empty))) as daemon:
        assert (await request(nc, "funcs.podman", b"")).error == STUB_ERROR
        assert (await request(nc, "funcs.hello", b"x")).payload == b"Processed subject: funcs.hello with payload: x"
    assert "podman not found on PATH" in daemon.log


# --- through the HTTP gateway --------------------------------------------------------------------


async def test_http_request_runs_the_container(
    scripts: Path, make_daemon: DaemonFactory, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    async with make_daemon(http_port=port):
        async with client.post(f"http://127.0.0.1:{port}/pod.env/some/path?x=1", data=b"body") as resp:
            assert resp.status == 200
            results = json.loads(await resp.read())
        async with client.get(f"http://127.0.0.1:{port}/funcs.podman_fail") as resp:
            failed = json.loads(await resp.read())
    assert len(results) == 1
    payload = base64.b64decode(results[0]["payload"])
    assert payload.startswith(b"pod.env|POST|/some/path?x=1|body|")
    assert payload.endswith(b"|body")
    assert failed == [
        {
            "http_code": 3,
            "error": "something broke\n",
            "http_headers": {},
            "is_html": False,
            "payload": "aGFsZiBkb25lCg==",
        }
    ]


# --- the executor itself -------------------------------------------------------------------------


async def test_stdin_carries_any_payload_and_env_only_what_fits(executor: PodmanExecutor) -> None:
    command = 'printf "%s" "$PAYLOAD" | wc -c; cat'
    for payload, env_bytes in [(b"a\0b\xff", 0), (b"x" * 200_000, 0), ("café".encode(), 5)]:
        result = await executor.run(script(shell(command)), Message("pod.bin", payload), run_context())
        assert result.payload == b"%d\n" % env_bytes + payload


async def test_concurrent_runs_are_bounded(podman: str, tmp_path: Path) -> None:
    # Each container counts the containers running at the same time through a shared directory.
    command = "mkdir /s/run.$HOSTNAME; ls /s | wc -l; sleep 0.5; rmdir /s/run.$HOSTNAME"
    mounts = [{"destination": "/s", "type": "bind", "source": str(tmp_path), "options": ["rbind"]}]
    config = script(shell(command, mounts=mounts))
    async with PodmanExecutor(podman, env={}, max_concurrency=2) as bounded:
        results = await asyncio.gather(*(bounded.run(config, Message("pod.n", b""), run_context()) for _ in range(5)))
    counts = [int((r.payload or b"").strip()) for r in results]
    assert all(r.http_code == 0 for r in results), results
    assert max(counts) <= 2
    assert list(tmp_path.iterdir()) == []


async def test_stdout_beyond_the_cap_fails_the_run(executor: PodmanExecutor) -> None:
    before = await our_containers()
    config = script(shell(f"head -c {MAX_STDOUT_BYTES + 1} /dev/zero; sleep 30"))
    with pytest.raises(ScriptError, match=f"failed to execute container: stdout exceeds {MAX_STDOUT_BYTES} bytes"):
        await executor.run(config, Message("pod.big", b""), run_context())
    async with asyncio.timeout(10):
        while await our_containers() - before:
            await asyncio.sleep(0.1)


async def test_timeout_raises_script_timeout(executor: PodmanExecutor) -> None:
    with pytest.raises(ScriptTimeout, match="script timed out after 500ms"):
        await executor.run(script(shell("sleep 30")), Message("pod.t", b""), run_context(0.5))


async def test_an_image_removed_after_use_is_fetched_again(executor: PodmanExecutor) -> None:
    tag = f"msgscript.invalid/copy-{secrets.token_hex(4)}:latest"
    await podman_out("tag", IMAGE, tag)
    try:
        config = script({"image": tag, "command": ["echo", "ok"]})
        assert (await executor.run(config, Message("pod.tag", b""), run_context())).payload == b"ok\n"
    finally:
        await podman_out("rmi", tag)
    with pytest.raises(ScriptError, match=f"failed to pull image {tag}: "):
        await executor.run(config, Message("pod.tag", b""), run_context())


async def test_a_failing_container_command_is_a_podman_error(executor: PodmanExecutor) -> None:
    config = script({"image": IMAGE, "command": ["no-such-command"]})
    with pytest.raises(ScriptError, match='^failed to execute container: .*"no-such-command".*not found'):
        await executor.run(config, Message("pod.cmd", b""), run_context())


@pytest.fixture
def podman_service(podman: str, tmp_path: Path) -> Iterator[str]:
    """A podman API service on a socket of its own; yields its URL."""
    path = tmp_path / "podman.sock"
    url = f"unix://{path}"
    process = subprocess.Popen(
        [podman, "system", "service", "--time=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                missing("a podman API service")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_runs_through_a_podman_service_socket(podman: str, podman_service: str) -> None:
    async with PodmanExecutor(podman, env={"CONTAINER_HOST": podman_service}) as remote:
        result = await remote.run(script(shell("cat; echo $SUBJECT >&2")), Message("pod.remote", b"hi"), run_context())
    assert (result.payload, result.error) == (b"hi", "pod.remote\n")


# --- configuration and socket choice -------------------------------------------------------------


def test_parse_config_reads_go_field_names_and_skips_header_lines() -> None:
    text = '--* timeout: 5s\n{"Image": "img", "COMMAND": ["a"], "privileged": true, "unknown": 1, "user": null}'
    config = parse_config(text)
    assert (config.image, config.command, config.privileged, config.user) == ("img", ("a",), True, "")
    mount = {"destination": "/d", "source": "/s", "type": "bind", "options": ["ro"]}
    assert parse_config(json.dumps({"image": "i", "mounts": [mount]})).run_options() == ["--volume", "/s:/d:ro", "i"]
    for bad in ('{"image": 1}', '{"image": "i", "mounts": [{}]}', '{"image": "i", "command": "ls"}', "[]", ""):
        with pytest.raises(ValueError):
            parse_config(bad)


def test_podman_url_prefers_the_rootless_socket_for_a_non_root_user(tmp_path: Path) -> None:
    (tmp_path / "podman").mkdir()
    path = tmp_path / "podman" / "podman.sock"
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert podman_url(env, 1000) is None  # no socket yet
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert podman_url(env, 1000) == f"unix://{path}"
        assert podman_url(env, 0) is None
        assert podman_url({**env, "CONTAINER_HOST": "unix:///elsewhere"}, 1000) is None
