"""The few C library calls the daemon makes (glibc and Linux; elsewhere they do nothing)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024
"""Allocations at least this big get pages of their own, returned to the system when freed."""


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load()


def trim_heap() -> None:
    """Return free heap memory to the system (glibc keeps it otherwise, in every thread's arena)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def fix_mmap_threshold() -> None:
    """Stop glibc from raising its mmap threshold after a big block is freed.

    By default, freeing a big block (a script's 200 MiB string, say) raises the threshold to that block's
    size, up to 32 MiB; later blocks below it come from the heap, where they stay in the RSS once freed.
    """
    if _LIBC is not None and not _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel kill this process (SIGKILL) when its parent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
