"""What a batch segments: the ``roiseg segment IN [IN ...]`` arguments as a list of volumes.

No torch and no pixel data here: only file names and TIFF headers, so every torchrun rank expands
the same arguments to the same list (and the same output names) before any work starts.

The rule (also in the README):

- a volume file (TIFF stack, NIfTI, DICOM) is one volume;
- a folder of 2D frames (PNG files, or TIFF files of one page each) is one volume;
- any other folder is a folder of volumes: each volume file and each sub-folder of frames in it;
- an argument that is not an existing path but holds ``*``, ``?`` or ``[`` is a glob, and each
  match is handled as above.

A single argument that is a volume file or a folder of frames keeps the one-volume layout
(``OUT/labels.tif``, ``OUT/boxes.csv``); everything else writes ``OUT/<name>/`` per volume and
``OUT/summary.csv``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .io.formats import FRAME_SUFFIXES
from .io.volumes import _stem, natural_key

__all__ = ["BatchItem", "expand_inputs", "is_frame_folder", "shard"]

VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".dicom")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class BatchItem:
    """One volume of a batch: where it is read from and the name of its output folder."""

    source: str
    name: str


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[BatchItem], bool]:
    """Expand ``roiseg segment`` arguments into volumes; return ``(items, one_volume_layout)``.

    Names are the file stem (``scan.nii.gz`` -> ``scan``) or the folder name, made unique in
    input order (``scan``, ``scan-2``...). A path that does not exist is kept as an item, so
    that it becomes an error row with its reason instead of stopping the batch.

    Raises
    ------
    ValueError
        If no argument is given, or a glob or a folder of volumes matches nothing.
    """
    if not inputs:
        raise ValueError("no input given: name volume files, folders or globs to segment")
    sources: list[Path] = []
    for arg in inputs:
        path = Path(arg)
        if not path.exists() and any(c in str(arg) for c in _GLOB_CHARS):
            matches = sorted(glob.glob(str(arg)), key=natural_key)
            if not matches:
                raise ValueError(f"the pattern {str(arg)!r} matches no file: check the path, and "
                                 "quote the pattern so that the shell does not expand it")
            for match in matches:
                sources.extend(_volumes_at(Path(match)))
        else:
            sources.extend(_volumes_at(path))
    single = (len(inputs) == 1 and not any(c in str(inputs[0]) for c in _GLOB_CHARS)
              and len(sources) == 1 and sources[0] == Path(inputs[0]))
    return _named(sources), single


def _volumes_at(path: Path) -> list[Path]:
    if not path.is_dir() or is_frame_folder(path):
        return [path]
    entries = sorted(path.iterdir(), key=natural_key)
    found = [p for p in entries if not p.name.startswith(".") and (
        (p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES + FRAME_SUFFIXES))
        or (p.is_dir() and is_frame_folder(p)))]
    if not found:
        raise ValueError(f"folder '{path}' holds no volume files (TIFF, NIfTI, DICOM) and no "
                         "folders of PNG/TIFF frames")
    return found


def is_frame_folder(folder: Path) -> bool:
    """True if ``folder`` holds only 2D frames: PNG files, or TIFF files of a single page.

    Files whose header cannot be read do not decide (they become errors when read); a folder
    with no readable frame, or with a NIfTI/DICOM file, is not a folder of frames.
    """
    import tifffile

    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files or any(p.name.lower().endswith(VOLUME_SUFFIXES[2:]) for p in files):
        return False
    readable = 0
    for p in files:
        if p.suffix.lower() == ".png":
            readable += 1
        elif p.suffix.lower() in (".tif", ".tiff"):
            try:
                with tifffile.TiffFile(p) as tif:
                    if len(tif.pages) != 1:
                        return False
                readable += 1
            except Exception:  # noqa: BLE001 -- a corrupt frame is reported when it is read
                continue
    return readable > 0


def _named(sources: list[Path]) -> list[BatchItem]:
    items, seen = [], set()
    for src in sources:
        base = (src.name if src.is_dir() else _stem(src)) or "volume"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}-{k}"
        seen.add(name)
        items.append(BatchItem(str(src), name))
    return items


def shard(items: Sequence[BatchItem], rank: int, world_size: int) -> list[BatchItem]:
    """The items rank ``rank`` of ``world_size`` segments: every ``world_size``-th, from ``rank``.

    Deterministic and a partition: every item goes to exactly one rank, whatever the sizes.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])
