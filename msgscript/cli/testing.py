"""`msgscriptcli test [PATH…]`: run Lua test files (`*_test.lua`) against the scripts, in-process.

Where things are, unless given: the test files are the `tests/` directory beside the scripts (`tests/` inside
`--script DIR`, else next to it; without `--script`, `./tests`). The scripts are `--script DIR`, else the
`scripts/` directory in (or next to) the directory of the first PATH; the libraries are `--library DIR`, else
the `libraries/` directory next to the scripts when there is one.

The default output names each failure as `file:line: test: message` and ends with one line of counts;
`--tap` prints TAP version 13 instead. Exit status: 0 when every test passed, 1 when one failed (or the
run could not start), 2 on a usage error (no test file found included).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from msgscript.cli.options import CommandFailed, DurationType
from msgscript.config import Settings
from msgscript.errors import ConfigError
from msgscript.testbed import Case, Failure, Suite

TEST_FILE_PATTERN = "*_test.lua"
DEFAULT_TEST_TIMEOUT = "30s"
"""How long one test function (with the file's top level) may run, as a Go duration."""


@dataclass(frozen=True, slots=True)
class Layout:
    """What a test run reads: the test files, the script directory and the library directory (None for none)."""

    files: tuple[Path, ...]
    script_dir: Path
    library_dir: Path | None


def _first_directory(candidates: Sequence[Path]) -> Path | None:
    return next((path for path in candidates if path.is_dir()), None)


def _looked_for(candidates: Sequence[Path]) -> str:
    return " or ".join(str(path) for path in dict.fromkeys(candidates))


def find_test_files(paths: Sequence[Path]) -> tuple[Path, ...]:
    """The files named, and the `*_test.lua` files below the directories named, each once, in that order.

    Raises:
        click.UsageError: a path does not exist, or no test file was found.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob(TEST_FILE_PATTERN)):
                if file.is_file() and not file.name.startswith("."):
                    found[file] = None
        elif path.is_file():
            found[path] = None
        else:
            raise click.UsageError(f"{path}: no such file or directory")
    if not found:
        raise click.UsageError(f"no test files ({TEST_FILE_PATTERN}) in {', '.join(str(p) for p in paths)}")
    return tuple(found)


def find_layout(paths: Sequence[Path], script_dir: str, library_dir: str) -> Layout:
    """Where the tests, scripts and libraries of a run are, by the rules of this module's documentation.

    Raises:
        click.UsageError: something is missing or not a directory.
    """
    if not paths:
        if script_dir:
            candidates = [Path(script_dir) / "tests", Path(script_dir).resolve().parent / "tests"]
        else:
            candidates = [Path("tests")]
        tests = _first_directory(candidates)
        if tests is None:
            raise click.UsageError(f"no tests directory ({_looked_for(candidates)}); give test files or directories")
        paths = [tests]
    files = find_test_files(paths)
    if script_dir:
        scripts = Path(script_dir)
        if not scripts.is_dir():
            raise click.UsageError(f"--script {script_dir}: not a directory")
    else:
        base = paths[0] if paths[0].is_dir() else paths[0].parent
        candidates = [base / "scripts", base.resolve().parent / "scripts"]
        found = _first_directory(candidates)
        if found is None:
            raise click.UsageError(f"no scripts directory ({_looked_for(candidates)}); give --script DIR")
        scripts = found
    libraries: Path | None = None
    if library_dir:
        libraries = Path(library_dir)
        if not libraries.is_dir():
            raise click.UsageError(f"--library {library_dir}: not a directory")
    else:
        libraries = _first_directory([scripts.resolve().parent / "libraries"])
    return Layout(files, scripts, libraries)


def _indented(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


class SummaryReport:
    """The default output: one entry per failure (`file:line: test: message`), then a line of counts."""

    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def plan(self, count: int) -> None:
        """Nothing to say before the tests run."""

    def result(self, suite: Suite, case: Case | None, failure: Failure | None) -> None:
        """Count a test (a whole file when `case` is None) and print it if it failed."""
        if failure is None:
            self.passed += 1
            return
        self.failed += 1
        where = f"{suite.shown}:{failure.line}" if failure.line else suite.shown
        what = f"{case.name}: " if case is not None else ""
        first, _, more = failure.message.partition("\n")
        click.echo(f"{where}: {what}{first}")
        if more:
            click.echo(_indented(more, "    "))

    def finish(self, files: int, elapsed_s: float) -> None:
        """The line of counts."""
        total = self.passed + self.failed
        counted = f"{files} file{'s' if files != 1 else ''}, {elapsed_s:.2f}s"
        if self.failed:
            click.echo(f"FAILED: {self.failed} of {total} tests ({counted})")
        else:
            click.echo(f"ok: {total} test{'s' if total != 1 else ''} passed ({counted})")


class TapReport(SummaryReport):
    """`--tap`: TAP version 13, with a YAML block (message, at, stack) under each failure."""

    def __init__(self) -> None:
        super().__init__()
        self._number = 0

    def plan(self, count: int) -> None:
        """The version and the plan."""
        click.echo("TAP version 13")
        click.echo(f"1..{count}")

    def result(self, suite: Suite, case: Case | None, failure: Failure | None) -> None:
        """One `ok`/`not ok` line, and the diagnostics of a failure."""
        self._number += 1
        title = f"{suite.shown}:{case.name}" if case is not None else suite.shown
        title = title.replace("\\", "\\\\").replace("#", "\\#")
        if failure is None:
            self.passed += 1
            click.echo(f"ok {self._number} - {title}")
            return
        self.failed += 1
        click.echo(f"not ok {self._number} - {title}")
        lines = ["  ---", "  message: |-", _indented(failure.message, "    ")]
        if failure.line:
            lines.append(f"  at: {suite.shown}:{failure.line}")
        if failure.stack:
            lines += ["  stack: |-", _indented(failure.stack, "    ")]
        lines.append("  ...")
        click.echo("\n".join(lines))

    def finish(self, files: int, elapsed_s: float) -> None:
        """A closing comment with the counts."""
        click.echo(f"# {self.passed} passed, {self.failed} failed ({elapsed_s:.2f}s)")


async def run_suites(
    settings: Settings, suites: Sequence[Suite], report: SummaryReport, *, nats: bool, timeout_s: float
) -> None:
    """List every file's tests, then run them, telling `report` each result."""
    from msgscript.testbed import open_testbed

    async with open_testbed(settings, nats=nats, timeout_s=timeout_s) as bed:
        listed = [(suite, await bed.discover(suite)) for suite in suites]
        report.plan(sum(1 if isinstance(cases, Failure) else len(cases) for _, cases in listed))
        for suite, cases in listed:
            if isinstance(cases, Failure):
                report.result(suite, None, cases)
                continue
            for case in cases:
                report.result(suite, case, await bed.run_case(case))


@click.command("test")
@click.argument("paths", nargs=-1, metavar="[PATH]...", type=click.Path(path_type=Path))
@click.option(
    "-p",
    "--pluginDir",
    "plugin_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Plugin directory for the scripts.",
)
@click.option("--nats", "with_nats", is_flag=True, help="Run an embedded NATS server for the scripts' nats module.")
@click.option("--tap", is_flag=True, help="Print TAP (version 13) instead of the summary.")
@click.option(
    "--timeout",
    "timeout_s",
    type=DurationType(),
    default=DEFAULT_TEST_TIMEOUT,
    show_default=True,
    help="Deadline of each test (Go duration).",
)
@click.pass_context
def script_tests(
    ctx: click.Context, paths: tuple[Path, ...], plugin_dir: str | None, with_nats: bool, tap: bool, timeout_s: float
) -> None:
    """Run the Lua test files (*_test.lua) in PATH… against the scripts, in-process.

    PATH is a test file or a directory searched for *_test.lua (default: tests/ beside the scripts). The
    scripts are --script DIR (a global flag, before `test`), else scripts/ beside the tests; the libraries
    --library DIR, else libraries/ beside the scripts. Exit status: 0 when every test passed, 1 when one
    failed, 2 on a usage error.
    """
    from msgscript.cli.server import run_async

    obj = ctx.obj or {}
    layout = find_layout(paths, obj.get("script_dir") or "", obj.get("library_dir") or "")
    suites = []
    for file in layout.files:
        try:
            suites.append(Suite.read(file))
        except OSError as exc:
            raise click.UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    settings = Settings(
        backend="file",
        script_dir=str(layout.script_dir),
        library_dir=str(layout.library_dir or ""),
        plugin_dir=plugin_dir or "",
        env=dict(os.environ),
        watch=False,  # one run over the files as they are
    )
    report = TapReport() if tap else SummaryReport()
    started = time.monotonic()
    try:
        run_async(run_suites(settings, suites, report, nats=with_nats, timeout_s=timeout_s))
    except ConfigError as exc:
        raise CommandFailed(f"cannot run the tests: {exc}") from None
    report.finish(len(suites), time.monotonic() - started)
    if report.failed:
        ctx.exit(1)
