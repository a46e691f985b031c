"""The GUI process's generators for model work done in the session's model process.

Each is a drop-in for its in-process counterpart in a napari thread worker: the worker thread
only copies the inputs into shared files, waits on the pipe and copies small results back.
No Qt here.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from .process import JobKilled

__all__ = ["remote_finetune", "remote_segment"]


def remote_segment(session: Any, volume: np.ndarray, model: tuple, *, device: str, out: Any,
                   batch_size: int | None = None, spacing: Any = None
                   ) -> Generator[tuple[int, int], None, Any]:
    """Segment every slice of ``volume`` in the model process into ``out`` (a
    ``VolumeSegmentation``: labels, done flags, review stats and box rows filled batch by
    batch, as ``iter_segment(out=...)`` does); yields ``(done, total)``. A cancel that had to
    kill the process ends the run as cancelled, keeping the slices done."""
    from ..review import empty_stats

    worker = session.process_worker()
    arrays = worker.arrays
    volume_ref = labels_ref = shared = None
    try:
        volume_ref = arrays.copy_of(volume)
        labels_ref, shared = arrays.zeros(volume.shape, np.uint8)
        if out.stats is None or len(out.stats) != volume.shape[0]:
            out.stats = empty_stats(volume.shape[0])
        rows: list[np.ndarray] = []
        out.boxes = np.zeros((0, 6), np.float32)
        sent = 0
        job = worker.run("segment", volume=volume_ref, labels=labels_ref, model=model,
                         device=device, batch_size=batch_size, spacing=_plain(spacing))
        try:
            for done, total, new_rows, stats in job:
                out.labels[sent:done] = shared[sent:done]
                out.stats[sent:done] = stats
                out.done[sent:done] = True
                if len(new_rows):
                    rows.append(new_rows)
                    out.boxes = np.concatenate(rows)
                sent = done
                yield done, total
        except JobKilled:  # a cancel that had to kill the process: the slices done stay
            pass
        return out
    finally:
        del shared
        arrays.remove(volume_ref, labels_ref)


def remote_finetune(session: Any, image: np.ndarray, labels: np.ndarray, train: Sequence[int],
                    validation: Sequence[int], model: tuple, config: Any, *,
                    negatives: Sequence[int], parent: str | None, spacing: Any = None
                    ) -> Generator[Any, None, Any]:
    """``finetune.finetune_and_gate`` in the model process, in the session's project: yields
    the training records, returns ``(result, gate decision or None, problem)`` with the new
    version loaded from the project as ``result.model``."""
    worker = session.process_worker()
    arrays = worker.arrays
    image_ref = labels_ref = None
    project = session.project
    try:
        image_ref, labels_ref = arrays.copy_of(image), arrays.copy_of(labels)
        result, decision, problem = yield from worker.run(
            "finetune", image=image_ref, labels=labels_ref, train=[int(k) for k in train],
            validation=[int(k) for k in validation], model=model, config=config,
            negatives=[int(k) for k in negatives], project=str(project.folder), parent=parent,
            spacing=_plain(spacing))
    finally:
        arrays.remove(image_ref, labels_ref)
    if result.version:
        result.model = project.load_version(result.version)
    return result, decision, problem


def _plain(spacing: Any) -> list[float] | None:
    """A pixel spacing as plain floats for the message to the model process (None: unknown)."""
    return None if spacing is None else [float(v) for v in spacing]
