"""Process memory settings for long merges (glibc only; a no-op elsewhere).

glibc raises its mmap threshold up to 32 MiB after large blocks are freed, after which every
tensor below that size comes from heap arenas that are rarely returned to the system: with
worker threads the resident set creeps up by hundreds of MB. A fixed threshold of 16 MiB keeps
every tensor-sized block (16 MiB and up) in its own mapping, returned to the system when the tensor dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 16 << 20


def release_freed_tensors() -> bool:
    """Fix glibc's mmap threshold for this process; True where it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
