"""Keeping freed CPU memory inside the process, so training does not page-fault it back in.

glibc's ``malloc`` gives large blocks back to the kernel: blocks above its mmap threshold (at
most 32 MB) are unmapped on ``free``, and the top of the heap is trimmed once more than the trim
threshold is free. A training step allocates and frees the same few hundred large tensors every
time, so with the defaults the kernel unmaps them and then page-faults and zero-fills them again
on the next step (about 100k faults per batch-16 NTU step on 2 cores, ``benchmarks/allocator.py``;
millions at batch 64, where CTR-GCN's activations are 52 MB each).

:func:`keep_freed_memory` turns both off: blocks of every size come from the heap, which is never
trimmed, so the process keeps the memory of its largest step for reuse instead of returning it
in between.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): by default, blocks
# above it are always mapped afresh and unmapped on free.
MMAP_THRESHOLD_MAX = 32 * 2**20
# "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"; "setting [M_MMAP_MAX] to 0
# disables the use of mmap(2) for servicing large allocation requests" (mallopt(3)). (A thread
# whose own arena cannot grow still falls back to mmap.)
NEVER_TRIM = -1
NO_MMAP = 0


def glibc_malloc() -> bool:
    """Whether this process allocates through glibc's ``malloc`` (Linux with glibc)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Serve blocks of every size from a heap that is never trimmed.

    Process-wide; returns True when applied, False where it does not apply (not Linux with
    glibc). Fork-started DataLoader workers inherit it. Resident memory then stays at the
    largest step's, as with PyTorch's CUDA caching allocator on a GPU.
    """
    if not glibc_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, NO_MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
