"""Segment many volumes in one process (or one per torchrun rank): the engine of
``roiseg segment IN [IN ...]`` and :func:`napari_roiseg.api.segment_volumes`.

One model load and one torch import for the whole batch; volumes are read one after the other
(reading the next one in a thread during the current one's segmentation was measured slower on
2 shared cores, see ``scripts/bench_batch.py`` and the README). Each volume goes to ``OUT/<name>/``
(``labels.tif``, ``boxes.csv``, then its done-record, see :mod:`.batch_record`), and
``OUT/summary.csv`` is rewritten atomically after every volume. A volume that fails is an
``error`` row with its one-line reason and the batch goes on. Under torchrun the volume list is
sharded across ranks (:func:`.batch_inputs.shard`), and rank 0 writes the merged summary.
No napari or Qt here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batch_inputs import BatchItem, expand_inputs, shard
from .batch_record import done_row, forget_done, write_done, write_summary

__all__ = ["BatchResult", "segment_to_folder", "segment_volumes", "run_items"]


@dataclass
class BatchResult:
    """Rows of ``summary.csv`` in input order (on rank 0: of every rank) and where it is."""

    rows: list[dict[str, Any]]
    summary: Path

    @property
    def failed(self) -> int:
        return sum(row["status"] == "error" for row in self.rows)


def segment_to_folder(volume: Any, net: Any, out: Path, *, device: Any = "auto",
                      batch_size: int | None = None, score_threshold: float | None = None,
                      top_k: int | None = None,
                      on_progress: Callable[[tuple[int, int]], None] | None = None,
                      ) -> dict[str, Any]:
    """Segment ``volume`` (a :class:`~.volume_io.Volume`) into ``out/labels.tif`` + ``boxes.csv``.

    Streaming: a large uncompressed input is memory-mapped by ``read_volume``, the labels go
    straight into a memory-mapped TIFF, and ``iter_segment`` releases both batch by batch, so
    memory stays bounded by a batch, not the volume. Both files are written atomically.
    Returns the volume's numbers for the summary: ``slices``, ``slices_with_mask``, ``boxes``,
    ``mean_box_score`` (empty when there is no box).
    """
    from src_model.generators import drain
    from src_model.mmap_pages import release_slices

    from .io.writers import labels_tiff_memmap
    from .segment import VolumeSegmentation, iter_segment
    from .io.volumes import write_boxes_csv

    out.mkdir(parents=True, exist_ok=True)
    shape = volume.data.shape
    with labels_tiff_memmap(out / "labels.tif", shape, spacing=volume.spacing) as labels:
        result = VolumeSegmentation(labels, np.zeros((0, 6), np.float32), np.zeros(shape[0], bool))
        drain(iter_segment(volume.data, net, device=device, batch_size=batch_size,
                           score_threshold=score_threshold, top_k=top_k, out=result,
                           spacing=volume.spacing_mm), on_progress)
        masked = 0
        for start in range(0, shape[0], 64):
            masked += int(labels[start:start + 64].any(axis=(1, 2)).sum())
            release_slices(labels, start, start + 64)
        boxes = result.boxes
        del result
    del labels
    write_boxes_csv(out / "boxes.csv", boxes)
    return {"slices": shape[0], "slices_with_mask": masked, "boxes": len(boxes),
            "mean_box_score": float(boxes[:, 5].mean()) if len(boxes) else ""}


def segment_volumes(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    model: Any = None, device: str = "auto", resume: bool = False,
                    progress: bool = True, **options: Any) -> BatchResult:
    """Segment every volume ``inputs`` names (files, folders, globs: see :mod:`.batch_inputs`)
    into ``out/<name>/`` and write ``out/summary.csv``; ``resume`` skips finished volumes.

    ``options``: ``batch_size``, ``score_threshold``, ``top_k`` of :func:`~.segment.iter_segment`.
    Under torchrun (``RANK``/``WORLD_SIZE`` set) each rank segments its shard on its own device.
    """
    items, _ = expand_inputs(inputs)
    return run_items(items, Path(out), model=model, device=device, resume=resume,
                     progress=progress, **options)


def run_items(items: Sequence[BatchItem], out: Path, *, model: Any = None, device: str = "auto",
              resume: bool = False, progress: bool = True, **options: Any) -> BatchResult:
    """:func:`segment_volumes` on already expanded items (the CLI expands them itself)."""
    from .segment import load_model

    rank, world, rank_device = _join_ranks()
    if world > 1 and device in ("auto", "cuda"):
        device = rank_device  # each rank on its own GPU (cuda:LOCAL_RANK), or the CPU
    net = load_model(model)  # a bad checkpoint fails before any output is made
    out.mkdir(parents=True, exist_ok=True)
    order = {str(out / item.name): i for i, item in enumerate(items)}
    mine = shard(items, rank, world)
    part = out / ("summary.csv" if world == 1 else f".summary.rank{rank}.csv")
    rows: list[dict[str, Any]] = []
    bars = _Bars(len(mine), enabled=progress and rank == 0)
    try:
        for item in mine:
            row = _one(item, out / item.name, net, device, resume, bars, rank, options)
            rows.append(row)
            write_summary(part, rows)
            bars.volume_done(item.name, row)
    finally:
        bars.close()
    if world > 1:
        rows = _gather_rows(rows)
    rows.sort(key=lambda r: order[r["output"]])
    summary = out / "summary.csv"
    if rank == 0 and world > 1:
        write_summary(summary, rows)
        for r in range(world):
            (out / f".summary.rank{r}.csv").unlink(missing_ok=True)
    if world > 1:
        _finish_ranks()
    return BatchResult(rows, summary)


def _one(item: BatchItem, folder: Path, net: Any, device: Any,
         resume: bool, bars: _Bars, rank: int, options: dict[str, Any]) -> dict[str, Any]:
    """Segment one item; its summary row (status ``ok``, ``reused`` or ``error``)."""
    from .io.volumes import read_volume

    row: dict[str, Any] = {"source": item.source, "output": str(folder)}
    if resume and (earlier := done_row(folder, item.source)) is not None:
        # The numbers of the run that made it; where it is as this run names it.
        return {**earlier, **row, "status": "reused", "error": ""}
    start = time.perf_counter()
    try:
        forget_done(folder)
        volume = read_volume(item.source)
        bars.start_slices(volume.data.shape[0])
        row.update(segment_to_folder(volume, net, folder, device=device,
                                     on_progress=bars.slice_done, **options))
        row.update(seconds=round(time.perf_counter() - start, 3), status="ok", error="")
        write_done(folder, item.source, volume.data.shape, row, rank)
        return row
    except Exception as exc:  # noqa: BLE001 -- one bad file is a row, not the end of the batch
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return {**row, "seconds": round(time.perf_counter() - start, 3), "status": "error",
                "error": reason}


def _join_ranks() -> tuple[int, int, Any]:
    """``(rank, world_size, device)`` under torchrun, ``(0, 1, "auto")`` otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, "auto"
    from datetime import timedelta

    from src_model import distributed

    # Ranks meet only at the end; a shard may take hours longer than another one.
    return distributed.setup(timeout=timedelta(days=7))


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import torch.distributed as dist

    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, rows)
    return [row for part in every for row in part]


def _finish_ranks() -> None:
    import torch.distributed as dist

    from src_model import distributed

    dist.barrier()  # rank 0 has written summary.csv before any rank leaves
    distributed.teardown()


class _Bars:
    """tqdm bars over volumes (with the ETA) and over the slices of the current volume."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.volumes = tqdm(total=total, desc="volumes", unit="vol", disable=not enabled)
        self.slices: Any = None
        self.enabled = enabled

    def start_slices(self, total: int) -> None:
        self._close_slices()
        self.slices = self._tqdm(total=total, desc="  slices", unit="slice", leave=False,
                                 position=1, disable=not self.enabled)

    def slice_done(self, done_total: tuple[int, int]) -> None:
        if self.slices is not None:
            self.slices.update(done_total[0] - self.slices.n)

    def volume_done(self, name: str, row: dict[str, Any]) -> None:
        self._close_slices()
        if row["status"] == "error" and self.enabled:
            self.volumes.write(f"{name}: error: {row['error']}")
        self.volumes.update(1)

    def _close_slices(self) -> None:
        if self.slices is not None:
            self.slices.close()
            self.slices = None

    def close(self) -> None:
        self._close_slices()
        self.volumes.close()
