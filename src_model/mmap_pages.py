"""Stream memory-mapped volumes without letting them fill the process's resident memory.

Reading (or writing) every slice of a memory-mapped file maps each of its pages into the process:
the resident set (RSS) then grows to the whole file even though only one batch is in use at a
time. :func:`release_slices` tells the kernel that the pages of slices already processed are no
longer needed (``madvise(MADV_DONTNEED)``). On a shared file mapping that only unmaps them: their
content stays in the page cache (written slices are written back to the file as usual) and is read
again from there if touched. numpy and the standard library only; a no-op for arrays that are not
a shared memory map, and on systems without ``madvise``.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["release_slices"]

_SHARED_MODES = ("r", "r+", "w+", "readonly", "readwrite", "write")


try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy import byte_bounds as _byte_bounds


def _shared_mmap(arr: np.ndarray) -> mmap.mmap | None:
    """The ``mmap.mmap`` under ``arr`` (through views and ``np.memmap``) if it is a shared
    mapping; None otherwise (copy-on-write ``mode="c"`` pages hold the only copy of changes)."""
    base, mode = arr, None
    while base is not None and not isinstance(base, mmap.mmap):
        if isinstance(base, np.memmap) and mode is None:
            mode = base.mode
        base = getattr(base, "base", None)
    if base is None or mode not in _SHARED_MODES:
        return None
    return base


def release_slices(arr: np.ndarray, start: int, stop: int) -> bool:
    """Drop slices ``arr[start:stop]`` of a memory-mapped ``arr`` from the resident set.

    Their data is unchanged (read again from the file or page cache if accessed). Pages shared
    with neighbouring slices are dropped too; they simply fault back in. Returns True if pages
    were released, False if ``arr`` is not a shared memory map (nothing to do) or the platform
    has no ``madvise``.
    """
    if not hasattr(mmap, "MADV_DONTNEED") or stop <= start:
        return False
    mm = _shared_mmap(arr)
    if mm is None or mm.closed:
        return False
    part = arr[start:stop]
    if part.size == 0:
        return False
    low, high = _byte_bounds(part)
    origin = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
    first = (low - origin) // mmap.PAGESIZE * mmap.PAGESIZE
    length = high - origin - first
    if first < 0 or length <= 0:
        return False
    try:
        mm.madvise(mmap.MADV_DONTNEED, first, min(length, len(mm) - first))
    except (OSError, ValueError):  # e.g. a mapping that refuses it: only memory is at stake
        return False
    return True
