"""Atomic writers: ImageJ TIFF for volumes and labels, CSV for detector boxes.

Public through :mod:`napari_roiseg.io.volumes`. Every writer writes a temporary file in the
target folder and renames it over the target (``os.replace``), so an interrupted save never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import numpy.typing as npt
import tifffile

PathLike = Union[str, "os.PathLike[str]"]

BOXES_HEADER = ("slice", "y1", "x1", "y2", "x2", "score")


def plain_write_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` gives a new file: 0o666 less the umask.

    Temporary files made by :func:`tempfile.mkstemp` are 0o600; renamed into place they would
    keep that, and a colleague on a shared machine could not read what this user wrote.
    """
    mask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The file gets :func:`plain_write_mode` permissions whatever made the temporary file, so an
    atomic write leaves the same permissions as a plain one.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.chmod(tmp, plain_write_mode())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_volume_tiff(
    path: PathLike,
    volume: npt.ArrayLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str | None = None,
) -> Path:
    """Write a ``(slices, H, W)`` (or ``(H, W)``) volume as an ImageJ hyperstack TIFF.

    Parameters
    ----------
    path : path-like
        Target file (``.tif``).
    volume : array-like
        Intensities. ImageJ stores only uint8, uint16 and float32: bool becomes uint8, other
        integers that fit become uint16, everything else float32.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)``, stored as ImageJ ``spacing`` and resolution tags, which
        :func:`~napari_roiseg.io.volumes.read_volume` reads back.
    unit : str, optional
        Spacing unit, e.g. ``"mm"``.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    data = _as_stack(volume)
    return _write_imagej(path, _imagej_dtype(data), spacing, unit)


def write_labels_tiff(
    path: PathLike,
    labels: npt.ArrayLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str | None = None,
) -> Path:
    """Write integer labels ``(slices, H, W)`` (or ``(H, W)``) as an ImageJ TIFF.

    Labels are stored as uint8 when they fit (0 background, 1 acetabulum in this project),
    else uint16.

    Raises
    ------
    ValueError
        If labels are negative, above 65535, or not integers: ImageJ cannot store them.
    """
    data = _as_stack(labels)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind not in "iu":
        raise ValueError(f"Labels must be integers, got {data.dtype}: round or cast them first.")
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(
            f"Labels span {low}..{high}: an ImageJ TIFF holds labels 0..65535 only. "
            "Relabel them (e.g. skimage.segmentation.relabel_sequential) first."
        )
    target = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return _write_imagej(path, data.astype(target, copy=False), spacing, unit)


def _as_stack(array: npt.ArrayLike) -> np.ndarray:
    data = np.asarray(array)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise ValueError(
            f"Got an array of shape {data.shape}: expected (slices, height, width) or "
            "(height, width)."
        )
    return data


def _imagej_dtype(data: np.ndarray) -> np.ndarray:
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and data.size and data.min() >= 0 and data.max() <= 65535:
        return data.astype(np.uint16)
    return data.astype(np.float32)


def _write_imagej(
    path: PathLike, data: np.ndarray, spacing: Sequence[float], unit: str | None
) -> Path:
    z, y, x = (float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in (z, y, x)):
        raise ValueError(f"Spacing {tuple(spacing)} must be three positive numbers (z, y, x).")
    metadata: dict[str, object] = {"axes": "ZYX", "spacing": z}
    if unit:
        metadata["unit"] = unit
    with atomic_path(path) as tmp:
        # ImageJ stores x/y pixel size as resolution = pixels per unit.
        tifffile.imwrite(tmp, data, imagej=True, resolution=(1.0 / x, 1.0 / y), metadata=metadata)
    return Path(path)


@contextlib.contextmanager
def labels_tiff_memmap(
    path: PathLike,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str | None = None,
) -> Iterator[np.memmap]:
    """Write uint8 labels ``(slices, H, W)`` straight into an ImageJ TIFF on disk, slice by slice.

    Yields a zero-filled, writable ``numpy.memmap`` of ``shape`` backed by a temporary file beside
    ``path`` (the same ImageJ layout and spacing tags as :func:`write_labels_tiff`); when the block
    ends without an error the map is flushed and the file renamed to ``path``, otherwise it is
    removed. Nothing of the volume has to be held in memory (the ``roiseg segment`` command
    streams large volumes this way). Drop every reference to the map when the block ends.
    """
    z, y, x = (float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in (z, y, x)):
        raise ValueError(f"Spacing {tuple(spacing)} must be three positive numbers (z, y, x).")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"Got shape {shape}: expected (slices, height, width).")
    metadata: dict[str, object] = {"axes": "ZYX", "spacing": z}
    if unit:
        metadata["unit"] = unit
    with atomic_path(path) as tmp:
        labels = tifffile.memmap(tmp, shape=shape, dtype=np.uint8, imagej=True,
                                 resolution=(1.0 / x, 1.0 / y), metadata=metadata)
        try:
            yield labels
            labels.flush()
        finally:
            del labels


def write_boxes_csv(path: PathLike, boxes: npt.ArrayLike) -> Path:
    """Write boxes as CSV rows ``slice,y1,x1,y2,x2,score`` with that header line.

    Parameters
    ----------
    path : path-like
        Target ``.csv`` file.
    boxes : array-like of shape (N, 6) or (N, 5)
        ``(slice, y1, x1, y2, x2[, score])`` in pixel coordinates of the slice; a missing or
        NaN score is written as ``nan``.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    rows = np.asarray(boxes, dtype=np.float64)
    if rows.size == 0:
        rows = rows.reshape(0, 6)
    if rows.ndim != 2 or rows.shape[1] not in (5, 6):
        raise ValueError(
            f"Boxes have shape {rows.shape}: expected (N, 6) rows of (slice, y1, x1, y2, x2, "
            "score) or (N, 5) without score."
        )
    if rows.shape[1] == 5:
        rows = np.column_stack([rows, np.full(len(rows), np.nan)])
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(BOXES_HEADER)
        for row in rows:
            # repr(float) round-trips exactly; the slice index is an integer.
            writer.writerow([int(row[0]), *(repr(float(v)) for v in row[1:])])
    return Path(path)


def read_boxes_csv(path: PathLike) -> np.ndarray:
    """Read a CSV written by :func:`write_boxes_csv`.

    Returns
    -------
    numpy.ndarray
        float64 ``(N, 6)``: ``slice, y1, x1, y2, x2, score`` (score NaN where unknown).

    Raises
    ------
    ValueError
        If the header or a row is not in that format; the message names the line.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    header = tuple(cell.strip().lower() for cell in lines[0]) if lines else ()
    if header != BOXES_HEADER:
        raise ValueError(
            f"'{Path(path).name}' starts with {list(header)}: expected the header line "
            f"{','.join(BOXES_HEADER)}."
        )
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if not cells:
            continue
        try:
            if len(cells) != len(BOXES_HEADER):
                raise ValueError(f"{len(cells)} values")
            rows.append([float(cell) for cell in cells])
        except ValueError as exc:
            raise ValueError(
                f"'{Path(path).name}' line {number} {cells}: expected 6 numbers "
                f"({','.join(BOXES_HEADER)}) ({exc})."
            ) from exc
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(BOXES_HEADER))
