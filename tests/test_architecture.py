"""The package's shape: the core imports no I/O library, a daemon imports heavy runtimes only when it uses them,
plugins use the public module API only, and docs/architecture.md maps every module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "msgscript"
IO_LIBRARIES = ("lupa", "wasmtime", "aiohttp", "nats", "aetcd", "grpc", "opentelemetry", "prometheus_client")
CORE = ("script", "message", "dispatch", "subjects", "durations", "catalog", "locks", "store.base", "executors.base")
LOADED_WHEN_USED = ("grpc", "aetcd", "wasmtime", "nkeys", "markdown_it")
"""Loaded on the first etcd request, wasm script, NKey seed or README page: a worker on the file backend that
serves none of these does without them."""


def _loaded_libraries(code: str, libraries: tuple[str, ...]) -> list[str]:
    """Which of libraries a fresh interpreter has imported after running code."""
    code += f"\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(libraries)!r}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    loaded: list[str] = ast.literal_eval(run.stdout.strip())
    return loaded


def test_the_core_imports_no_io_library() -> None:
    code = "".join(f"import msgscript.{module}\n" for module in CORE)
    assert _loaded_libraries(code, IO_LIBRARIES) == []


def test_a_daemon_on_the_file_backend_loads_no_runtime_before_it_is_used() -> None:
    code = (
        "import msgscript.app, msgscript.compose, msgscript.services\n"
        "from msgscript.lua.modules import builtin_modules\n"
        "builtin_modules()\n"
    )
    assert _loaded_libraries(code, LOADED_WHEN_USED) == []


def _msgscript_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "msgscript":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "msgscript")
    return found


def test_plugins_use_the_public_module_api_only() -> None:
    used = {str(path.relative_to(ROOT)): _msgscript_imports(path) for path in sorted((ROOT / "plugins").rglob("*.py"))}
    assert used, "no plugin found"
    beyond = {
        path: modules - {"msgscript.lua.api"} for path, modules in used.items() if modules - {"msgscript.lua.api"}
    }
    assert beyond == {}


def test_the_architecture_page_maps_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    mapped = {name.removeprefix("msgscript/") for name in re.findall(r"`([\w/]+\.py)`", page)}
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "modules" not in path.parts
    }
    assert sorted(modules - mapped) == []
    assert sorted(mapped - modules - {"lua/modules/*.py"}) == []
