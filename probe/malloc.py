"""Keeping freed host memory for reuse: glibc allocator settings for long decoding runs.

On CPU the encoder and decoder allocate and free blocks of a few to tens of MiB for every layer.
glibc hands freed memory back to the system as soon as more than a threshold (adjusted on the
fly, at most 64 MiB) sits free at the top of the heap, so the next block is fresh pages that fault
in one by one.  A trace keeps records alive between those allocations, which moves the heap's top
and makes this happen far more often than in plain decoding: on the base model, tracing 8 clips
took 200k–400k more minor page faults and 0.5–1 s more system time than decoding them plainly.

:func:`keep_freed_memory` fixes the mmap threshold at its 32 MiB maximum and raises the trim
threshold, so freed blocks are reused instead of returned.  It is process-wide: ``probe run`` and
the benchmark call it once at start (the benchmark before any arm, so plain decoding gets it too);
library users may call it themselves.  Settings the user gave glibc (``GLIBC_TUNABLES``,
``MALLOC_*`` variables) or a preloaded allocator (jemalloc, tcmalloc) are left alone, and off glibc
(macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 * 2**30

_applied: dict | None = None


def keep_freed_memory() -> dict:
    """Apply the settings once per process; returns what was done (for reports)."""
    global _applied
    if _applied is not None:
        return _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _applied = {"applied": False, "why": "not glibc"}
    elif "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(key.startswith("MALLOC_") for key in os.environ):
        _applied = {"applied": False, "why": "the environment sets glibc malloc options"}
    elif "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc: the user chose an allocator
        _applied = {"applied": False, "why": "another allocator is preloaded"}
    else:
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            ok = False
        _applied = ({"applied": True, "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD} if ok
                    else {"applied": False, "why": "mallopt failed"})
    return _applied
