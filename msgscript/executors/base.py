"""The Executor protocol and what the dispatcher hands an executor for one run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from msgscript.durations import format_duration
from msgscript.errors import ScriptTimeout
from msgscript.message import Message, Result
from msgscript.script import Script


@dataclass(slots=True)
class RunContext:
    """Per-run facts decided by the dispatcher; made for every run, so not frozen (see msgscript.message)."""

    deadline: float
    """time.monotonic() value after which the run must stop."""
    timeout_s: float
    libraries: tuple[str, ...] = ()
    """Source of each required library, in `--* require:` order (Lua only)."""

    def timed_out(self) -> ScriptTimeout:
        """The error of a run that went past the deadline: `script timed out after <timeout>`."""
        return ScriptTimeout(f"script timed out after {format_duration(self.timeout_s)}")


class Executor(Protocol):
    """Runs one script for one message."""

    @property
    def name(self) -> str:
        """The executor's name, as a script's `executor` header gives it (and as span names and metrics use it)."""
        ...

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Run the script and return its result.

        Raises:
            ScriptError: the user's script failed; its text becomes the result error.
            ScriptTimeout: the run went past ctx.deadline.
        """
        ...


@runtime_checkable
class RunsInline(Protocol):
    """An executor that can finish some runs on the event loop, without a task or a wait (the Lua executor)."""

    def run_now(self, script: Script, message: Message, ctx: RunContext) -> Result | None:
        """The run's result if it could run to the end now; None when it has to go through `run`, with nothing of
        it having taken effect. Raises what `run` raises."""
        ...
