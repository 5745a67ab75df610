"""Keeping freed CPU memory inside the process, so training does not page-fault it back in.

glibc's ``malloc`` gives large blocks back to the kernel: blocks above its mmap threshold are
unmapped on ``free``, and the top of the heap is trimmed once more than the trim threshold is free.
A training step allocates and frees the same few hundred large tensors every time, so with the
defaults the kernel unmaps them and then page-faults and zero-fills them again on the next step
(about 100k faults per batch-16 NTU step on 2 cores, ``benchmarks/allocator.py``).

:func:`keep_freed_memory` raises the mmap threshold to glibc's maximum and turns trimming off:
blocks up to 32 MB then come from the heap and stay there for reuse, so the process keeps the
memory of its largest step instead of returning it in between. Larger blocks are still mapped
afresh, which is why the model avoids them where it can (``mmcl.models.ctrgcn``).
"""

from __future__ import annotations

import ctypes
import platform
import sys

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX); blocks above it
# are always mapped afresh and unmapped on free.
MMAP_THRESHOLD_MAX = 32 * 2**20
# "Setting M_TRIM_THRESHOLD to -1 disables trimming completely" (mallopt(3)).
NEVER_TRIM = -1


def glibc_malloc() -> bool:
    """Whether this process allocates through glibc's ``malloc`` (Linux with glibc)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Serve blocks up to :data:`MMAP_THRESHOLD_MAX` from a heap that is never trimmed.

    Process-wide; returns True when applied, False where it does not apply (not Linux with
    glibc). Fork-started DataLoader workers inherit it. Resident memory then stays at the
    largest step's, as with PyTorch's CUDA caching allocator on a GPU.
    """
    if not glibc_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
