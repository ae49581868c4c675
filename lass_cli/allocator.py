"""How the C allocator hands memory back, set once per process (glibc only).

glibc serves every block above a threshold (128 KiB to start) with its own ``mmap`` and unmaps it
when freed, and trims the heap's free top back to the system; the next block of that size is
faulted in again, page by page. A separation allocates and frees blocks of megabytes thousands of
times (the VQ-VAE decoder's activations, the likelihood's pair grid), so on a 30 s input 1.4
million page faults cost about 3 s of system time. Kept in the heap instead (blocks up to 32 MiB,
up to 1 GiB of free top kept), they were 0.25 million and 1.1 s, peak memory unchanged
(``docs/benchmarks.md``). Settings a user made with glibc's ``MALLOC_*`` variables are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse; False where that does not apply or was refused."""
    if not sys.platform.startswith("linux") or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_freed_memory"]
