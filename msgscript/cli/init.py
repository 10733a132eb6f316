"""`msgscriptcli init DIR`: a new project from the scaffold shipped in the package (msgscript/scaffold).

The scaffold is copied byte for byte: a hello script, a web application on libraries/web.lua, their tests,
a README and deployment starting points. Nothing is written when any of its files already exists.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import click

from msgscript.cli.options import CommandFailed

SCAFFOLD_PACKAGE = "msgscript"
SCAFFOLD_DIR = "scaffold"


def scaffold_files() -> dict[PurePosixPath, bytes]:
    """The scaffold's files by path relative to the project, with their content."""
    root = resources.files(SCAFFOLD_PACKAGE) / SCAFFOLD_DIR
    found = dict(_walk(root, PurePosixPath()))
    return {path: found[path].read_bytes() for path in sorted(found)}


def _walk(node: Traversable, at: PurePosixPath) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for child in node.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _walk(child, at / child.name)
        else:
            yield at / child.name, child


def conflicts(root: Path, relatives: list[PurePosixPath]) -> list[str]:
    """What stands in the way of writing `relatives` under `root`: existing files, or non-directories where a
    directory must go; as paths under `root`, sorted."""
    found: set[str] = set()
    for relative in relatives:
        target = root.joinpath(*relative.parts)
        if target.exists() or target.is_symlink():
            found.add(str(target))
        for depth in range(len(relative.parts)):
            parent = root.joinpath(*relative.parts[:depth])
            if parent.exists() and not parent.is_dir():
                found.add(str(parent))
    return sorted(found)


def write_project(root: Path, files: dict[PurePosixPath, bytes]) -> None:
    """Write `files` under `root`, creating directories as needed; on failure, remove what was written.

    Raises:
        OSError: a file or directory could not be created.
    """
    created: list[Path] = []
    try:
        for relative, content in files.items():
            target = root.joinpath(*relative.parts)
            for directory in reversed([parent for parent in target.parents if not parent.exists()]):
                directory.mkdir()
                created.append(directory)
            # "x": never replace a file that appeared since the check.
            with target.open("xb") as f:
                created.append(target)
                f.write(content)
    except OSError:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        raise


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
def init(directory: Path) -> None:
    """Create a project in DIRECTORY: scripts, the web library, tests, a README and deployment files.

    Refuses to overwrite any existing file.
    """
    try:
        files = scaffold_files()
    except OSError as exc:
        raise CommandFailed(f"the project template of this installation cannot be read: {exc}") from exc
    taken = conflicts(directory, list(files))
    if taken:
        raise CommandFailed(
            f"refusing to overwrite existing files in {directory} (nothing was written): " + ", ".join(taken)
        )
    try:
        write_project(directory, files)
    except OSError as exc:
        reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        raise CommandFailed(f"failed to create the project in {directory} (nothing was kept): {reason}") from exc
    where = shlex.quote(str(directory))
    click.echo(f"Created {directory}:")
    for relative in files:
        click.echo(f"  {relative}")
    click.echo(f"Run it:   msgscript -script {where}/scripts -library {where}/libraries")
    click.echo(f"Test it:  msgscriptcli test {where}/tests")
