"""The C heap under the runtime: buffers freed while a model loads go back to the OS.

Loading a model frees buffers as large as its weights (the parsed file, the weights ORT
reads before pre-packing them, its layout reorders). glibc serves a request of at least its
*mmap threshold* (128 KiB) with its own mapping, returned to the OS when freed, and keeps
smaller ones in the heap. But the threshold is dynamic: each time a mapped chunk is freed,
glibc raises the threshold to that chunk's size, so the next buffers of up to that size are
served from the heap, and a freed heap buffer stays resident. Which of ORT's load-time
buffers land where then depends on the order of its frees, and the peak of the same load
varies from one process to the next: canonical VGG-16 with its classifier fused, 1 thread,
186-224 MB over three identical loads, 178 MB every time with the threshold pinned
(``benchmarks/model_suite.py --heap-ab --rounds 3``, ``benchmarks/results/heap_ab.json``).

:func:`pin_mmap_threshold` pins the threshold at glibc's default (``mallopt``), which turns
the dynamic raise off for the process; :func:`release_freed_memory` hands freed heap memory
back (``malloc_trim``). Both are no-ops off glibc Linux.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform

__all__ = ["MMAP_THRESHOLD_BYTES", "pin_mmap_threshold", "release_freed_memory"]

#: glibc's default mmap threshold (``M_MMAP_THRESHOLD``), the value it is pinned at.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is not glibc on Linux."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    with contextlib.suppress(OSError):
        return ctypes.CDLL(name)
    return None


@functools.cache
def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (once per process).

    Process-wide: from then on every buffer of 128 KiB or more is its own mapping, returned
    to the OS when freed, whoever allocates it. Returns whether the threshold is pinned
    (False off glibc Linux).
    """
    libc = _libc()
    if libc is None:
        return False
    with contextlib.suppress(AttributeError):
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return False


def release_freed_memory() -> None:
    """Hand memory freed by the C heap back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). Parsing the file and ORT's graph transforms (pre-packing, NCHWc reorders)
    free buffers as large as the weights; glibc keeps freed heap memory resident, so the next
    allocations (ORT's, the first call's activations) would stack on top of it."""
    libc = _libc()
    if libc is None:
        return
    with contextlib.suppress(AttributeError):
        libc.malloc_trim(0)
