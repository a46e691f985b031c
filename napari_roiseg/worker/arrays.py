"""Volumes and masks shared with the model process through memory-mapped files.

A whole volume never goes through a pipe: the GUI process writes it once into a file in a
folder of its own (on ``/dev/shm`` where there is one, so the pages stay in memory), the model
process maps the same file, and the mask it writes there is read back batch by batch. Files are
removed by the GUI process when the run ends; a killed model process leaves nothing behind
that the GUI process does not remove.

No torch, napari or Qt here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ArrayRef", "SharedArrays"]


@dataclass(frozen=True)
class ArrayRef:
    """What the model process needs to map an array: picklable and a few bytes long."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    def open(self, writable: bool = False) -> np.ndarray:
        return np.memmap(self.path, dtype=np.dtype(self.dtype), shape=self.shape,
                         mode="r+" if writable else "r")


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SharedArrays:
    """A folder of memory-mapped arrays that lives as long as a session's model process."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="roiseg-worker-", dir=_scratch_root()))

    def _new(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[ArrayRef, np.ndarray]:
        path = self.folder / f"{uuid.uuid4().hex}.raw"
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) == 0:
            raise ValueError(f"cannot share an empty array of shape {shape}")
        array = np.memmap(path, dtype=dtype, shape=shape, mode="w+")
        return ArrayRef(str(path), shape, np.dtype(dtype).str), array

    def copy_of(self, data: np.ndarray) -> ArrayRef:
        """Write ``data`` into a new shared file (batch by batch: a memory-mapped or lazy
        volume is never read whole into memory) and return its reference."""
        ref, array = self._new(data.shape, np.asarray(data[:0]).dtype)
        step = max(1, (64 << 20) // max(1, int(np.prod(data.shape[1:])) * array.itemsize))
        for start in range(0, data.shape[0], step):
            array[start:start + step] = np.asarray(data[start:start + step])
        array.flush()
        del array
        return ref

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype | type) -> tuple[ArrayRef, np.ndarray]:
        """A new shared array of zeros: its reference and the GUI side's view of it."""
        return self._new(shape, np.dtype(dtype))

    @staticmethod
    def remove(*refs: ArrayRef | None) -> None:
        for ref in refs:
            if ref is not None:
                try:
                    os.unlink(ref.path)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
