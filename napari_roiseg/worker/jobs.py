"""The jobs the model process runs: each is called as ``job(context, **arguments)``.

Arguments and results are plain, picklable data: arrays larger than a slice travel as
:class:`~napari_roiseg.worker.arrays.ArrayRef` (memory-mapped files), models as the
description ``Session.model_spec`` gives (the process loads each version once and keeps it).
A job that can be cancelled checks ``context.stop_requested()`` between its steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import ArrayRef
from .child import JobContext


def segment(context: JobContext, *, volume: ArrayRef, labels: ArrayRef, model: tuple,
            device: str, batch_size: int | None = None, spacing: Any = None) -> Any:
    """Segment every slice of ``volume`` into ``labels`` (written in place). Yields, per
    batch, ``(done, total, box rows, review stats)`` of the slices it finished; returns
    "stopped" or "done"."""
    from ..segment import VolumeSegmentation, iter_segment

    image, out_labels = volume.open(), labels.open(writable=True)
    out = VolumeSegmentation(out_labels, np.zeros((0, 6), np.float32),
                             np.zeros(image.shape[0], bool))
    net = context.model(model)
    sent_rows = sent = 0
    for done, total in iter_segment(image, net, device=device, batch_size=batch_size, out=out,
                                    spacing=spacing):
        rows, sent_rows = out.boxes[sent_rows:], len(out.boxes)
        yield done, total, rows, out.stats[sent:done]
        sent = done
        if context.stop_requested():
            return "stopped"
    return "done"


def finetune(context: JobContext, *, image: ArrayRef, labels: ArrayRef, train: list[int],
             validation: list[int], model: tuple, config: Any, negatives: list[int],
             project: str, parent: str | None, spacing: Any = None) -> Any:
    """``finetune.finetune_and_gate`` in the process; Stop is ``context.stop_requested``.
    The new version is saved in the project by the process; the result's ``model`` is None
    (the GUI process loads the version from the project)."""
    from ..finetune import finetune_and_gate
    from ..project.project import Project

    args = (image.open(), labels.open(), train, validation, context.model(model), config)
    kwargs = {"negatives": negatives, "should_stop": context.stop_requested,
              "project": Project(project), "parent": parent, "spacing": spacing}
    result, decision, problem = yield from finetune_and_gate(args, kwargs)
    result.model = None
    return result, decision, problem


def gate(context: JobContext, *, project: str, candidate: str, tolerance: float,
         override: str | None, device: str) -> Any:
    """``CorrectionHistory.gate`` of ``candidate`` against the current version."""
    from ..project.history import CorrectionHistory

    return CorrectionHistory(project).gate(candidate, tolerance=tolerance, override=override,
                                           device=device)


def compare(context: JobContext, *, project: str, plane: np.ndarray, value_range: Any,
            k: int, versions: list[tuple[str, str]]) -> dict[str, Any]:
    """Each ``(role, version)``'s mask and boxes on one slice (``plane``, normalised with the
    whole volume's ``value_range``)."""
    from src_model.predict import predict
    from src_model.preprocess import normalize_slices

    from ..segment import result_boxes

    images = normalize_slices(plane, value_range)
    out = {}
    for role, version in versions:
        result = predict(context.model(("project", project, version)), images,
                         normalize=False)[0]
        out[role] = (version, result["mask"], result_boxes(k, result))
    return out


def echo(context: JobContext, *, values: list[Any], wait_s: float = 0.0) -> Any:
    """Yield ``values`` one by one (``wait_s`` apart, stopping when asked): the protocol's
    own test job, with no torch work."""
    import time

    for value in values:
        time.sleep(wait_s)
        yield value
        if context.stop_requested():
            return "stopped"
    return "done"


def fail(context: JobContext, *, kind: str, message: str) -> Any:
    """Warn, then raise exception ``kind`` (a builtin, or a class of that name made here);
    ``kind="crash"`` ends the process as a segmentation fault would. For tests."""
    import builtins
    import os
    import signal
    import warnings

    warnings.warn(f"about to fail: {message}", RuntimeWarning)
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    cls = getattr(builtins, kind, None) or type(kind, (Exception,), {})
    raise cls(message)
