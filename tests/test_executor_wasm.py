"""The wasm executor with real wasmtime modules (from WAT and from C), through a daemon over NATS and HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import nats.errors
import pytest
import wasmtime

from msgscript.executors.wasm import STDERR_LIMIT_BYTES, STDOUT_LIMIT_BYTES, describe_error, module_path
from msgscript.message import Message, Reply, Result
from tests.conftest import DaemonFactory
from tests.processes import command_env, daemon_running
from tests.servers import NatsServer, free_port, missing

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples" / "wasm"
MEMORY_LIMIT_BYTES = 32 * 1024 * 1024  # make_daemon's max_memory_bytes

# --- modules -------------------------------------------------------------------------------------------

_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"""


def _wat_string(data: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in data)


def writer_wat(stdout: bytes = b"", stderr: bytes = b"", exit_code: int | None = None) -> str:
    """A module that writes `stdout` to fd 1, then `stderr` to fd 2, then exits with `exit_code` if given."""
    data, body, offset = [], [], 64
    for fd, text in ((1, stdout), (2, stderr)):
        if text:
            data.append(f'(data (i32.const {offset}) "{_wat_string(text)}")')
            body.append(
                f"(i32.store (i32.const 0) (i32.const {offset})) (i32.store (i32.const 4) (i32.const {len(text)}))"
                f"(drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"
            )
            offset += len(text)
    if exit_code is not None:
        body.append(f"(call $proc_exit (i32.const {exit_code}))")
    return f"""(module {_IMPORTS}
  (memory (export "memory") {offset // 65536 + 1})
  {" ".join(data)}
  (func (export "_start") {" ".join(body)}))"""


def flood_wat(fd: int, chunks: int) -> str:
    """A module that writes `chunks` MiB of zero bytes to `fd`."""
    return f"""(module {_IMPORTS}
  (memory (export "memory") 17)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 1048576) (i32.const 0))
    (i32.store (i32.const 1048580) (i32.const 1048576))
    (loop $again
      (drop (call $fd_write (i32.const {fd}) (i32.const 1048576) (i32.const 1) (i32.const 1048584)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {chunks}))))))"""


LOOP_WAT = '(module (func (export "_start") (loop $forever (br $forever))))'
TRAP_WAT = '(module (func (export "_start") unreachable))'
NO_START_WAT = '(module (memory (export "memory") 1) (func (export "main")))'
UNKNOWN_IMPORT_WAT = '(module (import "env" "missing" (func)) (func (export "_start")))'
HUGE_INITIAL_MEMORY_WAT = '(module (memory (export "memory") 1000) (func (export "_start")))'
# Grows its memory 1 MiB at a time until it is refused, then gives up the way C's abort() does.
MEMORY_BOMB_WAT = """(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))"""

# C programs of the tests (the examples are built by their Makefile).
PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    (void)argv;
    for (char **e = environ; *e; e++) printf("env %s\n", *e);
    printf("argc %d\n", argc);
    char buf[16];
    printf("stdin %ld\n", (long)read(0, buf, sizeof buf));
    FILE *f = fopen("/etc/hostname", "r");
    printf("open %s\n", f ? "ok" : "refused");
    f = fopen("msgscript-wasm-probe.txt", "w");
    printf("create %s\n", f ? "ok" : "refused");
    return 0;
}
"""
FAIL_C = r"""
#include <stdio.h>
int main(void) { fputs("bad input\n", stderr); return 3; }
"""
BOMB_C = r"""
#include <stdlib.h>
#include <string.h>
void *volatile kept;
int main(void) {
    for (;;) {
        void **block = malloc(1 << 20);
        if (block == NULL) abort();
        memset(block, 1, 1 << 20);
        *block = kept;  /* a chain of every block, so that none can be optimised away */
        kept = block;
    }
}
"""


def build_wat(directory: Path, name: str, wat: str) -> Path:
    """Compile WAT into `<directory>/<name>.wasm`."""
    path = directory / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _have_wasi_toolchain() -> bool:
    return shutil.which("clang") is not None and Path("/usr/lib/wasm32-wasi/libc.a").exists()


@pytest.fixture(scope="session")
def c_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C examples (built by their Makefile) and the tests' C programs, compiled for wasm32-wasi."""
    if not _have_wasi_toolchain():
        missing("clang with wasi-libc for wasm32-wasi")
    out = tmp_path_factory.mktemp("wasm-c")
    subprocess.run(["make", "-s", "-C", str(EXAMPLES), f"OUT={out}"], check=True, capture_output=True)
    modules = {"hello": out / "hello.wasm", "page": out / "page.wasm"}
    for name, source in (("probe", PROBE_C), ("fail", FAIL_C), ("bomb", BOMB_C)):
        (out / f"{name}.c").write_text(source)
        modules[name] = out / f"{name}.wasm"
        subprocess.run(
            [
                "clang",
                "--target=wasm32-wasi",
                "--sysroot=/usr",
                "-O2",
                "-o",
                str(modules[name]),
                str(out / f"{name}.c"),
            ],
            check=True,
            capture_output=True,
        )
    return modules


@pytest.fixture
def scripts_dir(fixture_dirs: tuple[Path, Path]) -> Path:
    return fixture_dirs[0]


@pytest.fixture
def modules_dir(tmp_path: Path) -> Path:
    path = tmp_path / "modules"
    path.mkdir()
    return path


def add_script(scripts: Path, subject: str, module: Path | str, *headers: str) -> None:
    """Write a wasm script for `subject` that runs `module`."""
    lines = [f"--* subject: {subject}", f"--* name: {subject.rsplit('.', 1)[-1]}", "--* executor: wasm", *headers]
    (scripts / f"{subject}.lua").write_text("\n".join(lines) + f"\n{module}\n")


async def call(nc: nats.NATS, subject: str, data: bytes = b"", timeout: float = 10) -> Result:
    reply = Reply.from_json((await nc.request(subject, data, timeout=timeout)).data)
    assert reply.error == ""
    (result,) = reply.results or ()
    return result


# --- unit: what the executor reads from a script, how it words wasmtime's errors -----------------------


def test_module_path_skips_headers_comments_and_blanks() -> None:
    assert module_path("/srv/a.wasm") == "/srv/a.wasm"
    assert module_path("-- what it does\n--* timeout: 1s\n\n  mods/a.wasm  \n") == "mods/a.wasm"


def test_describe_error_drops_the_backtrace() -> None:
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, wasmtime.wat2wasm(TRAP_WAT))
    start = wasmtime.Instance(store, module, []).exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    with pytest.raises(wasmtime.Trap) as trap:
        start(store)
    assert describe_error(trap.value) == "wasm trap: wasm `unreachable` instruction executed"
    with pytest.raises(wasmtime.WasmtimeError) as error:
        wasmtime.Module(store.engine, b"\0asm\x02\0\0\0")
    assert describe_error(error.value).startswith("failed to parse WebAssembly module: unknown binary version")


# --- end to end over NATS ---------------------------------------------------------------------------


async def test_raw_stdout_is_the_payload(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    add_script(scripts_dir, "wasm.raw", build_wat(modules_dir, "raw", writer_wat(stdout=b"hello\x00\xff world")))
    add_script(scripts_dir, "wasm.silent", build_wat(modules_dir, "silent", writer_wat()))
    async with make_daemon():
        assert await call(nc, "wasm.raw") == Result(payload=b"hello\x00\xff world")
        # No output at all is an empty payload, not a missing one (as Go reads the output file).
        assert (await call(nc, "wasm.silent")).to_json() == (
            '{"http_code":0,"error":"","http_headers":null,"is_html":false,"payload":""}'
        )


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (
            b'{"http_code":201,"error":"soft","http_headers":{"X-B":"2","X-A":"1"},"is_html":true,"payload":"aGk="}\n',
            Result(http_code=201, error="soft", http_headers={"X-A": "1", "X-B": "2"}, is_html=True, payload=b"hi"),
        ),
        (b'{"payload":"aGk="}', Result(payload=b"hi")),
        (b"null", Result()),
        (b'{"payload":"not base64!"}', Result(payload=b'{"payload":"not base64!"}')),
        (b'{"http_code":"200"}', Result(payload=b'{"http_code":"200"}')),
        (b"[1, 2]", Result(payload=b"[1, 2]")),
        (b'{"payload":"aGk="} trailing', Result(payload=b'{"payload":"aGk="} trailing')),
        (b"[" * 100_000, Result(payload=b"[" * 100_000)),
        (b"{" * 100_000, Result(payload=b"{" * 100_000)),
    ],
)
async def test_stdout_that_decodes_as_a_script_result_is_the_result(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, stdout: bytes, expected: Result
) -> None:
    """The example echo module prints its payload (sent in an envelope, as JSON payloads would read as one)."""
    add_script(scripts_dir, "wasm.echo", EXAMPLES / "wat" / "echo.wat")
    async with make_daemon():
        assert await call(nc, "wasm.echo", Message(subject="wasm.echo", payload=stdout).to_json()) == expected


async def test_stderr_is_the_error_and_wins_over_the_json_error(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    stdout = b'{"error":"from json","payload":"aGk="}'
    add_script(scripts_dir, "wasm.both", build_wat(modules_dir, "both", writer_wat(stdout, b"from stderr\n")))
    add_script(scripts_dir, "wasm.cut", build_wat(modules_dir, "cut", flood_wat(fd=2, chunks=1)))
    async with make_daemon():
        assert await call(nc, "wasm.both") == Result(error="from stderr\n", payload=b"hi")
        cut = await call(nc, "wasm.cut")
        assert cut.error == "\0" * STDERR_LIMIT_BYTES
        assert cut.payload == b""


async def test_too_much_stdout_is_an_error(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    chunks = STDOUT_LIMIT_BYTES // (1024 * 1024) + 1
    add_script(scripts_dir, "wasm.flood", build_wat(modules_dir, "flood", flood_wat(fd=1, chunks=chunks)))
    async with make_daemon():
        result = await call(nc, "wasm.flood")
        assert result == Result(error=f"wasm module wrote more than {STDOUT_LIMIT_BYTES} bytes to stdout")


async def test_exit_status(make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path) -> None:
    add_script(scripts_dir, "wasm.exit0", build_wat(modules_dir, "exit0", writer_wat(b"done", exit_code=0)))
    add_script(scripts_dir, "wasm.exit3", build_wat(modules_dir, "exit3", writer_wat(b"partial", exit_code=3)))
    async with make_daemon():
        assert await call(nc, "wasm.exit0") == Result(payload=b"done")
        assert await call(nc, "wasm.exit3") == Result(
            error="failed to call wasm module function: Exited with i32 exit status 3"
        )


async def test_trap_is_an_error_and_the_daemon_keeps_serving(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    add_script(scripts_dir, "wasm.trap", build_wat(modules_dir, "trap", TRAP_WAT))
    add_script(scripts_dir, "wasm.ok", build_wat(modules_dir, "ok", writer_wat(b"still here")))
    async with make_daemon():
        for _ in range(2):
            assert await call(nc, "wasm.trap") == Result(
                error="failed to call wasm module function: wasm trap: wasm `unreachable` instruction executed"
            )
            assert await call(nc, "wasm.ok") == Result(payload=b"still here")


async def test_module_without_start_export(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    add_script(scripts_dir, "wasm.nostart", build_wat(modules_dir, "nostart", NO_START_WAT))
    async with make_daemon():
        assert await call(nc, "wasm.nostart") == Result(error="GET function not found")


async def test_unreadable_module_paths(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, tmp_path: Path
) -> None:
    add_script(scripts_dir, "wasm.absent", tmp_path / "absent.wasm")
    add_script(scripts_dir, "wasm.relative", "no/such/module.wasm")
    add_script(scripts_dir, "wasm.dir", tmp_path)
    add_script(scripts_dir, "wasm.empty", "-- the path is missing")
    async with make_daemon():
        assert await call(nc, "wasm.absent") == Result(
            error=f"failed to read wasm module file {tmp_path / 'absent.wasm'}: no such file or directory"
        )
        assert await call(nc, "wasm.relative") == Result(
            error="failed to read wasm module file no/such/module.wasm: no such file or directory"
        )
        assert await call(nc, "wasm.dir") == Result(error=f"failed to read wasm module file {tmp_path}: is a directory")
        assert await call(nc, "wasm.empty") == Result(
            error="failed to read wasm module file : the script names no module path"
        )


async def test_invalid_modules(make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path) -> None:
    (modules_dir / "text.wasm").write_text("this is not a module")
    (modules_dir / "version.wasm").write_bytes(b"\0asm\x02\0\0\0")
    (modules_dir / "broken.wat").write_text("(module (func")
    add_script(scripts_dir, "wasm.text", modules_dir / "text.wasm")
    add_script(scripts_dir, "wasm.version", modules_dir / "version.wasm")
    add_script(scripts_dir, "wasm.broken", modules_dir / "broken.wat")
    add_script(scripts_dir, "wasm.imports", build_wat(modules_dir, "imports", UNKNOWN_IMPORT_WAT))
    async with make_daemon():
        assert await call(nc, "wasm.text") == Result(
            error="failed to create module: not a WebAssembly binary (no \\0asm header)"
        )
        version = await call(nc, "wasm.version")
        assert version.error.startswith("failed to create module: failed to parse WebAssembly module: ")
        assert (await call(nc, "wasm.broken")).error.startswith("failed to create module: ")
        assert await call(nc, "wasm.imports") == Result(
            error="failed to instantiate: unknown import: `env::missing` has not been defined"
        )


async def test_timeout_interrupts_a_looping_module(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    loop = build_wat(modules_dir, "loop", LOOP_WAT)
    add_script(scripts_dir, "wasm.loop", loop, "--* timeout: 300ms")
    add_script(scripts_dir, "wasm.loop_default", loop)
    add_script(scripts_dir, "wasm.ok", build_wat(modules_dir, "ok", writer_wat(b"ok")))
    async with make_daemon(script_timeout_s=0.4):
        looping = [call(nc, "wasm.loop") for _ in range(3)] + [call(nc, "wasm.loop_default")]
        results = await asyncio.gather(*looping)
        assert results == [Result(error="script timed out after 300ms")] * 3 + [
            Result(error="script timed out after 400ms")
        ]
        assert await call(nc, "wasm.ok") == Result(payload=b"ok")
        # The interrupted runs gave their threads back: looping again times out the same way.
        assert await call(nc, "wasm.loop") == Result(error="script timed out after 300ms")


async def test_shutdown_interrupts_running_modules(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    add_script(scripts_dir, "wasm.loop", build_wat(modules_dir, "loop", LOOP_WAT))
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(make_daemon(script_timeout_s=600, grace_period_s=0.5))
    pending = asyncio.create_task(nc.request("wasm.loop", b"", timeout=60))
    try:
        await asyncio.sleep(0.5)
        # The daemon stops without waiting for the module's ten minutes: closing interrupts it.
        await asyncio.wait_for(stack.aclose(), 30)
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
            await pending


async def test_memory_limit(make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path) -> None:
    add_script(scripts_dir, "wasm.bomb", build_wat(modules_dir, "bomb", MEMORY_BOMB_WAT))
    add_script(scripts_dir, "wasm.huge", build_wat(modules_dir, "huge", HUGE_INITIAL_MEMORY_WAT))
    add_script(scripts_dir, "wasm.ok", build_wat(modules_dir, "ok", writer_wat(b"ok")))
    async with make_daemon():
        assert await call(nc, "wasm.bomb") == Result(
            error="failed to call wasm module function: wasm trap: wasm `unreachable` instruction executed"
            f" (its linear memory used {MEMORY_LIMIT_BYTES - 15 * 65536} of the {MEMORY_LIMIT_BYTES} bytes allowed)"
        )
        assert await call(nc, "wasm.huge") == Result(
            error="failed to instantiate: memory minimum size of 1000 pages exceeds memory limits"
        )
        assert await call(nc, "wasm.ok") == Result(payload=b"ok")


async def test_compiled_modules_are_cached_until_the_file_changes(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, modules_dir: Path
) -> None:
    path = build_wat(modules_dir, "cached", writer_wat(b"first"))
    second = wasmtime.wat2wasm(writer_wat(b"other"))
    assert len(second) == path.stat().st_size
    add_script(scripts_dir, "wasm.cached", path)
    async with make_daemon():
        assert await call(nc, "wasm.cached") == Result(payload=b"first")
        # Same size, same inode, same modification time: the compiled module is reused.
        before = path.stat()
        with path.open("r+b") as file:
            file.write(second)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert await call(nc, "wasm.cached") == Result(payload=b"first")
        # A new modification time invalidates it.
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        assert await call(nc, "wasm.cached") == Result(payload=b"other")
        # So does a replaced file.
        path.unlink()
        build_wat(modules_dir, "cached", writer_wat(b"third, longer"))
        assert await call(nc, "wasm.cached") == Result(payload=b"third, longer")
        path.unlink()
        assert (await call(nc, "wasm.cached")).error.startswith("failed to read wasm module file ")


async def test_concurrent_runs_keep_their_own_output(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path
) -> None:
    add_script(scripts_dir, "wasm.echo", EXAMPLES / "wat" / "echo.wat")
    async with make_daemon():
        payloads = [f"message {i} ".encode() * (i + 1) for i in range(40)]
        results = await asyncio.gather(*(call(nc, "wasm.echo", p) for p in payloads))
        assert [r.payload for r in results] == payloads


async def test_environment_is_exactly_the_message(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, c_modules: dict[str, Path]
) -> None:
    add_script(scripts_dir, "wasm.probe", c_modules["probe"])
    async with make_daemon():
        envelope = Message(subject="wasm.probe", payload=b"John", method="POST", url="/x?y=1")
        probe = await call(nc, "wasm.probe", envelope.to_json())
        assert probe.error == ""
        assert (probe.payload or b"").decode().splitlines() == [
            "env SUBJECT=wasm.probe",
            "env PAYLOAD=John",
            "env METHOD=POST",
            "env URL=/x?y=1",
            "argc 0",
            "stdin 0",
            "open refused",
            "create refused",
        ]
        # A raw NATS message: no method, no URL; bytes that are not UTF-8 arrive replaced.
        raw = await call(nc, "wasm.probe", b"caf\xe9")
        assert (raw.payload or b"").decode().splitlines()[:4] == [
            "env SUBJECT=wasm.probe",
            "env PAYLOAD=caf\ufffd",
            "env METHOD=",
            "env URL=",
        ]


async def test_c_programs(
    make_daemon: DaemonFactory, nc: nats.NATS, scripts_dir: Path, c_modules: dict[str, Path]
) -> None:
    add_script(scripts_dir, "wasm.hello", c_modules["hello"])
    add_script(scripts_dir, "wasm.fail", c_modules["fail"])
    add_script(scripts_dir, "wasm.bomb", c_modules["bomb"])
    async with make_daemon(script_timeout_s=10):
        assert await call(nc, "wasm.hello", b"Ada") == Result(payload=b"Hello from C, Ada! (subject wasm.hello)")
        assert await call(nc, "wasm.hello") == Result(error="send a name as the payload\n", payload=b"")
        assert await call(nc, "wasm.fail") == Result(
            error="failed to call wasm module function: Exited with i32 exit status 3: bad input"
        )
        bomb = await call(nc, "wasm.bomb")
        assert bomb.error.startswith("failed to call wasm module function: wasm trap: ")
        assert bomb.error.endswith(f" of the {MEMORY_LIMIT_BYTES} bytes allowed)")


# --- through the HTTP gateway ----------------------------------------------------------------------------


@pytest.fixture
async def gateway(
    make_daemon: DaemonFactory, scripts_dir: Path, modules_dir: Path, c_modules: dict[str, Path]
) -> AsyncIterator[str]:
    add_script(scripts_dir, "wasm.hello", c_modules["hello"])
    add_script(scripts_dir, "wasm.page", c_modules["page"])
    # `html: true` is ignored: HTML mode comes only from the module's output.
    add_script(
        scripts_dir, "wasm.plain", build_wat(modules_dir, "plain", writer_wat(b"<p>not a page</p>")), "--* html: true"
    )
    port = free_port()
    async with make_daemon(http_host="127.0.0.1", http_port=port):
        yield f"http://127.0.0.1:{port}"


async def test_gateway_json_mode(gateway: str, client: aiohttp.ClientSession) -> None:
    async with client.post(f"{gateway}/wasm.hello", data=b"Ada") as response:
        assert response.status == 200
        results = json.loads(await response.read())
    assert results == [
        {
            "http_code": 0,
            "error": "",
            "http_headers": None,
            "is_html": False,
            "payload": base64.b64encode(b"Hello from C, Ada! (subject wasm.hello)").decode(),
        }
    ]
    async with client.get(f"{gateway}/wasm.plain") as response:
        assert response.status == 200
        assert json.loads(await response.read())[0]["is_html"] is False


async def test_gateway_serves_the_page_a_module_writes(gateway: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{gateway}/wasm.page/docs/<b>?q=1&r=2") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        page = await response.text()
    assert "<h1>Hello from Wasm!</h1>" in page
    assert "<code>/docs/%3Cb%3E?q=1&amp;r=2</code>" in page  # the URL, HTML-escaped by the module
    async with client.delete(f"{gateway}/wasm.page") as response:
        assert response.status == 405
        assert "not <code>DELETE</code>" in await response.text()


# --- the examples, as shipped -------------------------------------------------------------------------


async def test_examples_run_from_the_repository_root(
    make_daemon: DaemonFactory, nc: nats.NATS, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`msgscript -script examples/wasm` from the repository root, after `make -C examples/wasm`."""
    if not _have_wasi_toolchain():
        missing("clang with wasi-libc for wasm32-wasi")
    subprocess.run(["make", "-s", "-C", str(EXAMPLES)], check=True, capture_output=True)
    monkeypatch.chdir(ROOT)
    port = free_port()
    async with make_daemon(script_dir="examples/wasm", http_host="127.0.0.1", http_port=port):
        assert await call(nc, "funcs.wasm", b"Grace") == Result(payload=b"Hello from C, Grace! (subject funcs.wasm)")
        assert await call(nc, "funcs.wasm_echo", b"ping") == Result(payload=b"ping")
        async with client.get(f"http://127.0.0.1:{port}/http.wasm/hello") as response:
            assert response.status == 200
            assert "<code>/hello</code>" in await response.text()


def test_every_wasm_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.lua")} == {"hello.lua", "page.lua", "echo.lua"}
    for path in EXAMPLES.glob("*.lua"):
        assert path.read_text().startswith("-- "), f"{path.name} does not say what it shows"


# --- without wasmtime ---------------------------------------------------------------------------------


async def test_without_wasmtime_wasm_scripts_get_an_error_and_the_rest_runs(
    nats_server: NatsServer, nc: nats.NATS, scripts_dir: Path, modules_dir: Path, tmp_path: Path
) -> None:
    """A real daemon process in which `import wasmtime` fails."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "wasmtime.py").write_text("raise ImportError(\"No module named 'wasmtime'\")\n")
    add_script(scripts_dir, "wasm.ok", build_wat(modules_dir, "ok", writer_wat(b"ok")))
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    args = ("-natsurl", nats_server.url, "-script", str(scripts_dir), "-port", str(free_port()))
    async with daemon_running(*args, env=command_env(PYTHONPATH=path)) as daemon:
        assert await call(nc, "wasm.ok") == Result(error="msgscript wasn't built with wasm support")
        assert await call(nc, "funcs.hello", b"John") == Result(
            payload=b"Processed subject: funcs.hello with payload: John"
        )
    assert "wasm scripts are disabled: wasmtime cannot be imported" in daemon.log
