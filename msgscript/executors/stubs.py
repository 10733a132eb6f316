"""Stand-ins for executors whose runtime is not installed: every run is a clear result error."""

from __future__ import annotations

from msgscript.executors.base import RunContext
from msgscript.message import Message, Result
from msgscript.script import Script


class UnavailableExecutor:
    """An executor that answers every script with `msgscript wasn't built with <what> support`."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self._error = f"msgscript wasn't built with {what} support"

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        """Refuse the script."""
        return Result.failure(self._error)
