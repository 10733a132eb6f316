"""Malformed input for the daemon, generated from a fixed seed, each case with the answers it may get.

`generate_cases(SEED)` returns the same cases on every run and machine: every choice comes from one
`random.Random(seed)`, nothing from the clock, the environment or the order of a set, so a failing case is
found again by its category and index. The NATS cases are in tests/bad_nats.py, the HTTP ones in
tests/bad_http.py; each carries what the documentation lets it be answered with (the expectations' docstrings
say how). A 500 is expected only where a script raises: malformed input is a client error.
"""

from __future__ import annotations

import hashlib
import random

from tests.bad_http import HttpCase, http_cases
from tests.bad_nats import NatsCase, nats_cases

SEED = 20261207

Case = NatsCase | HttpCase


def generate_cases(seed: int = SEED) -> list[Case]:
    """Every case: the NATS ones, then the HTTP ones, each category in turn."""
    rng = random.Random(seed)
    return [*nats_cases(rng), *http_cases(rng)]


def case_digest(cases: list[Case]) -> str:
    """A digest of what the cases send and expect, to compare runs in different processes."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(repr(case).encode())
    return digest.hexdigest()


if __name__ == "__main__":
    print(case_digest(generate_cases()))
