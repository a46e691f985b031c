"""Functions for scripts and the napari console: what the dock widgets do, without a GUI.

Importing this module is cheap: torch and the model load only when a function needs them.
Each function raises on bad input (with a message saying what would work); the widgets turn
those errors into napari notifications.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .finetune import DEFAULT_STEPS, evaluate
from .finetune import finetune as _finetune
from .layers import (DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K, add_result_layers, image_array,
                     resolve_spacing)
from .segment import segment_array

__all__ = ["correction_history", "evaluate", "export_review_report", "finetune", "gate_version",
           "get_session", "prepare_torch_import", "review_scores", "segment_volume",
           "segment_volumes"]


def get_session(viewer: Any = None) -> Any:
    """The session the docks of ``viewer`` share (``session.Session``): its image, mask and
    boxes layers, project, model and device. Without a viewer, a new session for a script.
    Every function below takes ``session=`` and then works on it: the arguments left out are
    the session's, and a model version made or accepted here is the docks' next model too.

    Examples
    --------
    In napari's console::

        from napari_roiseg.api import get_session, segment_volume
        s = get_session(viewer)
        labels, boxes = segment_volume(session=s)   # the image and model chosen in the dock
    """
    from .session import Session
    from .session import get_session as of_viewer

    return of_viewer(viewer) if viewer is not None else Session()


def prepare_torch_import() -> None:
    """Call before the first torchvision import in a process that may show napari.

    torchvision imports ``torch._dynamo``, which imports triton when it is installed (CUDA builds
    of torch ship it). Triton carries its own LLVM; loaded into a process where Mesa's software
    OpenGL (llvmpipe: Xvfb, remote desktops, VMs) has already mapped the system libLLVM, both
    register the same LLVM options and the process dies with a segmentation fault -- napari and
    any unsaved work with it. Triton only serves ``torch.compile`` GPU kernels, which this plugin
    does not use, so when libLLVM is already mapped and triton is not yet imported, it is hidden
    from torch (``import triton`` then raises ImportError, which torch handles).
    """
    if "triton" in sys.modules or "torchvision" in sys.modules:
        return
    try:
        with open("/proc/self/maps") as maps:
            llvm_mapped = "libLLVM" in maps.read()
    except OSError:  # not Linux: no Mesa llvmpipe clash known there
        return
    if llvm_mapped:
        sys.modules["triton"] = None  # type: ignore[assignment]


def segment_volume(
    image: Any = None,
    model: Any = None,
    device: str | None = None,
    viewer: Any = None,
    *,
    score_threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int | None = None,
    session: Any = None,
    spacing: Any = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Segment every slice of a volume; optionally show the result in a napari viewer.

    Parameters
    ----------
    image : array or napari.layers.Image
        Grayscale ``(slices, height, width)`` volume or one ``(height, width)`` slice, any real
        dtype (intensities are normalised over the whole volume). RGB layers are refused.
    model : None, path or torch.nn.Module
        None: the shipped default model; a checkpoint path (``src_model.checkpoint`` format);
        or a model object (e.g. a freshly fine-tuned one).
    device : {"auto", "cpu", "cuda"}, optional
        "auto" (the default without a session) picks CUDA when available.
    viewer : napari.Viewer, optional
        When given, adds a Labels layer (the mask) and a Shapes layer (the boxes, one rectangle
        per box on its slice) placed on the image layer's scale and translation.
    score_threshold, top_k : optional
        Passed to the model: only proposals with at least this RPN score, and at most the
        ``top_k`` best per slice, are used as ROIs (None: the model's defaults, i.e. all
        post-NMS proposals). The Shapes layer shows boxes with these limits, or with score
        >= 0.5 and the 3 best per slice when they are None.
    batch_size : int, optional
        Slices per forward pass; None: ``segment.default_batch_size`` (2 on the CPU, 16 on a
        GPU), as everywhere else.
    session : session.Session, optional
        Take the image, model, device and viewer left out from it (see :func:`get_session`);
        the new layers become its mask and boxes layers.
    spacing : "auto", None, float or (y, x)
        Pixel size in mm: slices are resampled to the model's training resolution and the
        results mapped back (``src_model.resolution``). "auto": the image layer's scale when its
        unit is known (mm, micron...), else unknown (None).

    Raises
    ------
    napari_roiseg.busy.BusyError
        While a fine-tune or another segmentation runs in this process (widgets included).

    Returns
    -------
    labels : uint8 array
        0/1 mask with the image's shape (2D for a 2D image).
    boxes : float32 array (N, 6)
        Every box the model kept, rows ``slice, y1, x1, y2, x2, score`` (slice 0 for 2D).

    Examples
    --------
    In napari's console (``viewer`` is predefined), with a volume open as the selected layer::

        from napari_roiseg.api import segment_volume
        labels, boxes = segment_volume(viewer.layers.selection.active, viewer=viewer)
        boxes[boxes[:, 5] > 0.9]          # confident boxes: slice, y1, x1, y2, x2, score
        labels.sum(axis=(1, 2))           # mask area per slice
    """
    from .busy import exclusive

    if session is not None:
        image = session.image_layer if image is None else image
        viewer = session.viewer if viewer is None else viewer
        device = session.device if device is None else device
    if image is None:
        raise ValueError("no image: pass one, or a session whose image layer is chosen")
    data, layer = image_array(image)
    prepare_torch_import()
    lock = session.exclusive if session is not None else exclusive
    with lock("segmenting"):  # BusyError while a fine-tune or segmentation runs
        if model is None and session is not None:
            model = session.model()
        result = segment_array(data, model, device=device or "auto", batch_size=batch_size,
                               score_threshold=score_threshold, top_k=top_k,
                               spacing=resolve_spacing(layer, spacing))
    labels = result.labels if data.ndim == 3 else result.labels[0]
    if viewer is not None:
        mask, boxes = add_result_layers(
            viewer, layer, labels, result.boxes,
            score_threshold=DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold,
            top_k=DEFAULT_TOP_K if top_k is None else top_k, stats=result.stats)
        if session is not None:
            session.mask_layer, session.boxes_layer = mask, boxes
    return labels, result.boxes


def finetune(image: Any = None, labels: Any = None, slices: Any = None, model: Any = None,
             steps: int = DEFAULT_STEPS, *, session: Any = None, **options: Any) -> Any:
    """Fine-tune a model on corrected slices (``finetune.finetune``, whose docstring says
    everything else) and return the new model.

    With ``session`` (see :func:`get_session`), the image, the corrected labels (its mask
    layer), the project and the starting model left out are the session's: with a project,
    its current version as it is on disk now, recorded as the parent; the new version, when
    it is made current, is the docks' next model at once.
    """
    if session is None:
        return _finetune(image, labels, slices, model, steps, **options)
    image = session.image_layer if image is None else image
    labels = session.mask_layer if labels is None else labels
    if image is None or labels is None:
        missing = "image" if image is None else "mask (the corrected labels)"
        raise ValueError(f"the session has no {missing} layer: choose it in the dock, or pass "
                         f"finetune(image=..., labels=...)")
    options.setdefault("project", session.project)
    options.setdefault("device", session.device)
    if model is None and options["project"] is None:
        model = session.model()
    net = _finetune(image, labels, slices, model, steps, **options)
    summary = getattr(net, "finetune_summary", {})
    if summary.get("version") and session.project is not None:
        current = summary.get("current_version") == summary["version"]
        session.version_added(summary["version"], net, current)
    return net



def segment_volumes(paths: Any, out: Any, *, model: Any = None, device: str = "auto",
                    resume: bool = False, progress: bool = True, **options: Any) -> Any:
    """Segment many volumes on disk, as ``roiseg segment IN [IN ...] --out OUT`` does.

    ``paths``: one or a list of volume files, folders (of frames, or of volumes) and globs.
    Each volume goes to ``out/<name>/`` (``labels.tif``, ``boxes.csv``, ``done.json``) and
    ``out/summary.csv`` gets one row per volume; a file that fails is an ``error`` row and the
    others go on. ``resume`` skips volumes an earlier run finished. ``options``: ``batch_size``,
    ``score_threshold``, ``top_k``. Returns a ``batch.BatchResult`` (``rows``, ``failed``,
    ``summary``). Raises ``busy.BusyError`` while a fine-tune or segmentation runs here.

    Examples
    --------
    ::

        result = segment_volumes("~/study/*.tif", "~/study-seg", resume=True)
        result.failed, [r["error"] for r in result.rows if r["status"] == "error"]
    """
    import os

    from .batch import segment_volumes as run_batch
    from .busy import exclusive

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.path.expanduser(str(p)) for p in paths]
    prepare_torch_import()
    with exclusive("segmenting volumes"):
        return run_batch(paths, os.path.expanduser(str(out)), model=model, device=device,
                         resume=resume, progress=progress, **options)


# --------------------------------------------------------------------------- review and history


def review_scores(labels: Any = None, boxes: Any = None, *, stats: Any = None,
                  session: Any = None) -> Any:
    """Score every slice by how much it likely needs a look (``review.ReviewScores``).

    Parameters
    ----------
    labels : array or napari.layers.Labels
        The model's mask ``(S, H, W)``. A Labels layer made by :func:`segment_volume` carries the
        model's per-slice rows (``metadata["roiseg_stats"]``, entropy included) and these are used.
    boxes : array (N, 6) or napari.layers.Shapes, optional
        Box rows ``slice, y1, x1, y2, x2, score`` when no per-slice rows are available.
    stats : array, optional
        Per-slice rows (``VolumeSegmentation.stats``); override everything else.
    session : session.Session, optional
        ``labels`` and ``boxes`` left out are its mask and boxes layers.

    Returns
    -------
    ReviewScores
        ``score`` (S,), ``order`` (the queue, look first at ``order[0]``), ``z`` (components),
        ``rank(k)`` and ``reason(k)``.

    Examples
    --------
    ::

        scores = review_scores(viewer.layers["hip mask"])
        scores.order[:10]                     # the ten slices to look at first
    """
    from .layers import STATS_KEY
    from .review import score_slices, stats_from_layers

    if session is not None:
        labels = session.mask_layer if labels is None else labels
        boxes = session.boxes_layer if boxes is None else boxes
    if stats is None and labels is None:
        raise ValueError("no labels: pass the mask (array or Labels layer), or a session "
                         "whose mask layer is chosen")
    if stats is None:
        stats = getattr(labels, "metadata", {}).get(STATS_KEY)
    if stats is None:
        data = np.asarray(getattr(labels, "data", labels))
        if boxes is not None and hasattr(boxes, "features"):
            from .review import shapes_to_rows

            boxes = shapes_to_rows(boxes)
        stats = stats_from_layers(data, boxes)
    return score_slices(np.asarray(stats))


def correction_history(project: Any) -> Any:
    """The correction history of a project folder (``history.CorrectionHistory``): records
    (``.records``, ``.load_record(id)``), review marks, the locked set (``.lock``, ``.locked``),
    locked-set scores per version (``.version_metrics(name)``) and the gate log (``.decisions``)."""
    from .project.history import CorrectionHistory

    return CorrectionHistory(project)


def gate_version(project: Any = None, candidate: str | None = None, *,
                 tolerance: float = 0.02, override: str | None = None, who: str | None = None,
                 device: str = "auto", session: Any = None) -> Any:
    """Make ``candidate`` the current version only if its dice on the locked set is at most
    ``tolerance`` below the current version's; ``override`` (a reason) accepts it anyway and is
    logged with ``who`` and the time. Returns the ``history.GateDecision``.

    With ``session``, ``project`` left out is its project, and an accepted candidate is the
    docks' next model at once. Raises ``busy.BusyError`` while a segmentation or fine-tune
    runs in this process.

    Examples
    --------
    ::

        gate_version("~/hip.roiseg", "v003")                       # the rule decides
        gate_version("~/hip.roiseg", "v003", override="v002 misses the lateral edge")
    """
    from .busy import exclusive

    if session is not None and project is None:
        project = session.project
    if project is None or not candidate:
        raise ValueError("gate_version needs a project (or a session with one open) and the "
                         "name of the candidate version, e.g. gate_version(p, 'v003')")
    prepare_torch_import()
    lock = session.exclusive if session is not None else exclusive
    with lock(f"gating {candidate}"):  # BusyError while a segmentation or fine-tune runs
        decision = correction_history(project).gate(candidate, tolerance=tolerance,
                                                    override=override, who=who, device=device)
    if session is not None and session.project is not None and decision.accepted:
        from .session import PROJECT

        session.choose_model(PROJECT)
    return decision


def export_review_report(out_dir: Any, project: Any = None, labels: Any = None,
                         boxes: Any = None, *, name: str = "volume") -> dict[str, Any]:
    """Write ``review.html`` (self-contained) and CSV tables of a volume's review to ``out_dir``:
    the queue (when ``labels`` is given, see :func:`review_scores`), review marks, corrections
    and their dice, model versions with locked-set metrics and gate decisions. Returns the paths.
    """
    from .project.report import export_report

    scores = review_scores(labels, boxes) if labels is not None else None
    history = correction_history(project) if project is not None else None
    return export_report(out_dir, scores=scores, history=history, name=name)
