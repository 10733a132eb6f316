"""Which event loop the benchmark processes run on.

They run their main coroutine with the daemon's own `msgscript.cli.server.run_async`, so that baselines and
daemon share one loop choice: uvloop when it is installed, else asyncio's default loop.
"""

from __future__ import annotations


def loop_name() -> str:
    """The event loop `run_async` picks: `uvloop` when installed, else `asyncio`."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
