"""What a batch leaves on disk besides the labels: per-volume done-records and ``summary.csv``.

A volume counts as done only through its done-record ``OUT/<name>/done.json``, written
atomically after ``labels.tif`` and ``boxes.csv`` (themselves written atomically). It holds the
source's fingerprint and the sizes and shape of the outputs, so ``--resume`` redoes a volume
whose record is missing, whose source changed since, or whose outputs do not match it; a run
killed at any point therefore never leaves a half-written volume counted as done.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .io.writers import atomic_path

__all__ = ["SUMMARY_COLUMNS", "DONE_RECORD", "done_row", "forget_done", "write_done",
           "write_summary"]

SUMMARY_COLUMNS = ("source", "output", "slices", "slices_with_mask", "boxes", "mean_box_score",
                   "seconds", "status", "error")
DONE_RECORD = "done.json"
OUTPUTS = ("labels.tif", "boxes.csv")


def source_fingerprint(source: str | os.PathLike[str]) -> list[int]:
    """``[bytes, newest mtime_ns]`` of a file, or summed over the files of a folder of frames."""
    path = Path(source)
    if path.is_dir():
        files = [p.stat() for p in path.iterdir() if p.is_file()]
        newest = max([path.stat().st_mtime_ns, *(s.st_mtime_ns for s in files)])
        return [sum(s.st_size for s in files), newest]
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def write_done(out_dir: Path, source: str, shape: tuple[int, ...], row: Mapping[str, Any],
               rank: int = 0) -> Path:
    """Record that ``out_dir`` holds the complete outputs of ``source`` (call after writing them);
    ``rank`` is the torchrun rank that made them."""
    record = {"source": str(Path(source).resolve()), "fingerprint": source_fingerprint(source),
              "rank": rank,
              "shape": [int(n) for n in shape],
              "bytes": {name: (out_dir / name).stat().st_size for name in OUTPUTS},
              "row": dict(row)}
    target = out_dir / DONE_RECORD
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return target


def forget_done(out_dir: Path) -> None:
    """Drop the done-record before the outputs are rewritten (so a kill then leaves no record),
    and the temporary files of writes a killed run left (``.labels.tif.<hex>.tmp``, which can
    be as large as the labels). Only one process writes a volume's folder, so none is in use."""
    (out_dir / DONE_RECORD).unlink(missing_ok=True)
    for name in (*OUTPUTS, DONE_RECORD):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def done_row(out_dir: Path, source: str) -> dict[str, Any] | None:
    """The summary row of a finished volume, or None if it must be (re)done.

    None when the record is missing or unreadable, names another source, the source's size or
    modification time changed, or an output is missing or differs in size or shape from the record.
    """
    import tifffile

    try:
        record = json.loads((out_dir / DONE_RECORD).read_text())
        if (record["source"] != str(Path(source).resolve())
                or record["fingerprint"] != source_fingerprint(source)):
            return None
        for name in OUTPUTS:
            if (out_dir / name).stat().st_size != record["bytes"][name]:
                return None
        with tifffile.TiffFile(out_dir / "labels.tif") as tif:
            if list(tif.series[0].shape) != record["shape"]:
                return None
        return dict(record["row"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_summary(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by :data:`SUMMARY_COLUMNS`) as CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k, "")) for k in SUMMARY_COLUMNS})
    return path


def _cell(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value
