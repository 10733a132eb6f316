"""`msgscriptcli dev`: run one script locally through the server's own dispatcher, without NATS."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from msgscript.cli.main import cli

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_dev_prints_the_result_on_stdout() -> None:
    code, out, err = run("dev", "-s", "funcs.hello", "-n", "hello", "-i", "John", str(EXAMPLES / "hello.lua"))
    assert (code, out) == (0, "Result: Processed subject: funcs.hello with payload: John\n")


def test_dev_reads_the_payload_from_a_file_and_headers_for_subject(tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("from a file")
    code, out, _ = run("dev", "-i", str(payload), str(EXAMPLES / "hello.lua"))
    assert (code, out) == (0, "Result: Processed subject: funcs.hello with payload: from a file\n")


def test_dev_script_error_exits_1_with_the_error_on_stderr() -> None:
    code, out, err = run("dev", str(EXAMPLES / "fail.lua"))
    assert code == 1
    assert out == ""
    assert err.startswith("Error while running script: failed to call OnMessage function: ")


def test_dev_nats_publish_is_not_connected(tmp_path: Path) -> None:
    script = tmp_path / "pub.lua"
    script.write_text(
        "--* subject: funcs.pub\n--* name: pub\nlocal nats = require('nats')\n"
        "function OnMessage() local ok, err = nats.publish('x', 'y') return tostring(ok) .. ' ' .. err end\n"
    )
    assert run("dev", str(script))[:2] == (0, "Result: false Not connected to NATS\n")


def test_dev_uses_a_library_directory(tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    (libs / "nested").mkdir(parents=True)
    (libs / "nested" / "greet.lua").write_text("function Greet(n) return 'hi ' .. n end\n")
    script = tmp_path / "lib.lua"
    script.write_text(
        "--* subject: s\n--* name: n\n--* require: nested/greet\nfunction OnMessage(_, p) return Greet(p) end\n"
    )
    assert run("dev", "-l", str(libs), "-i", "Ann", str(script))[:2] == (0, "Result: hi Ann\n")


def test_dev_without_subject_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "anon.lua"
    script.write_text("function OnMessage() return 'x' end\n")
    code, _, err = run("dev", str(script))
    assert (code, err) == (1, "subject is required\n")


def test_dev_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("dev", str(tmp_path / "nope.lua"))
    assert code == 2
    assert "does not exist" in err


def test_dev_timeout_header_stops_a_loop() -> None:
    code, _, err = run("dev", "-i", "loop", str(EXAMPLES / "deadline.lua"))
    assert (code, err) == (1, "Error while running script: script timed out after 1s\n")
