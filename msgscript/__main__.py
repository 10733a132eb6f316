"""`python -m msgscript` runs the daemon."""

from __future__ import annotations

from msgscript.cli.server import main

main()
