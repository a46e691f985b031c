"""Whole-volume segmentation as a plain generator: the engine of the widget, the API and the CLI.

No napari or Qt here. The generator yields ``(slices_done, total)`` after each batch, so a napari
worker can drive a progress bar and cancel between batches, and a script can simply call
:func:`segment_array`. Torch is imported only when a model is needed.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BOX_COLUMNS = ("slice", "y1", "x1", "y2", "x2", "score")


def default_checkpoint() -> Path:
    """The shipped default model (fast preset trained on phantom volumes)."""
    import src_model

    return Path(src_model.__file__).parent / "weights" / "fast_default.pt"


def load_model(model: Any = None):
    """Return a model ready for inference.

    ``model`` may be None (the shipped default), a checkpoint path, or an ``nn.Module`` (returned
    as is, e.g. a freshly fine-tuned version).
    """
    from src_model.checkpoint import load_checkpoint

    if model is None:
        path = default_checkpoint()
        if not path.exists():
            raise FileNotFoundError(
                f"the default model {path} is missing from the installation; reinstall "
                "napari-roiseg or pass a checkpoint with --model")
        model = path
    if isinstance(model, (str, Path)):
        net, _ = load_checkpoint(model)
        net.eval()
        return net
    if hasattr(model, "forward"):
        return model
    raise TypeError(f"model must be None, a checkpoint path or a torch module, not {type(model)}")


@dataclass
class VolumeSegmentation:
    """Result of a (possibly partial) volume run.

    ``labels`` (S, H, W) uint8; ``boxes`` float32 (N, 6) rows ``slice, y1, x1, y2, x2, score`` of
    every proposal the model kept; ``done`` boolean (S,) marks the slices that were segmented
    (a cancelled run leaves the rest False and their labels 0).
    """

    labels: np.ndarray
    boxes: np.ndarray
    done: np.ndarray

    @property
    def complete(self) -> bool:
        return bool(self.done.all())


def result_boxes(index: int, result: dict[str, np.ndarray]) -> np.ndarray:
    """One slice's boxes (x1, y1, x2, y2) + scores as rows ``slice, y1, x1, y2, x2, score``."""
    b, s = result["boxes"], result["scores"]
    rows = np.empty((len(b), 6), np.float32)
    rows[:, 0] = index
    rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4] = b[:, 1], b[:, 0], b[:, 3], b[:, 2]
    rows[:, 5] = s
    return rows


def check_volume(volume: np.ndarray) -> np.ndarray:
    """Accept (H, W) or (S, H, W) real-valued arrays; say what would work otherwise."""
    arr = np.asarray(volume)  # a view for memory-mapped input: nothing is read here
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"expected a grayscale volume (slices, height, width) or one 2D slice, got shape "
            f"{arr.shape}; RGB images must be converted to grayscale first")
    if arr.shape[1] < 16 or arr.shape[2] < 16:
        raise ValueError(f"slices of {arr.shape[1]}x{arr.shape[2]} pixels are too small: "
                         "the model needs at least 16x16")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"image data of type {arr.dtype} cannot be segmented; use a real-valued image")
    return arr


def iter_segment(
    volume: np.ndarray,
    model: Any = None,
    *,
    device: str = "auto",
    batch_size: int = 8,
    score_threshold: float | None = None,
    top_k: int | None = None,
    slices: Sequence[int] | None = None,
    out: VolumeSegmentation | None = None,
) -> Generator[tuple[int, int], None, VolumeSegmentation]:
    """Segment ``slices`` (default: all) of ``volume``; yield ``(done, total)`` after each batch.

    The generator's return value (``StopIteration.value``) is the :class:`VolumeSegmentation`;
    pass ``out`` to fill an existing one (what the widget does so that a cancelled run keeps
    its partial result).
    """
    from src_model.predict import iter_predict
    from src_model.preprocess import intensity_range, normalize_slices

    arr = check_volume(volume)
    net = load_model(model)
    index = np.arange(arr.shape[0]) if slices is None else np.asarray(list(slices), dtype=int)
    if out is None:
        out = VolumeSegmentation(np.zeros(arr.shape, np.uint8), np.zeros((0, 6), np.float32),
                                 np.zeros(arr.shape[0], bool))
    # Intensity statistics come from the whole volume once, never from a batch, so that every
    # slice is normalised the same way whether it is run alone or with the others; only the
    # batch being run is converted to float, so memory stays bounded (memory-mapped volumes
    # are read batch by batch).
    value_range = intensity_range(arr)
    rows: list[np.ndarray] = [out.boxes[~np.isin(out.boxes[:, 0], index)]] if len(out.boxes) else []
    total, done = len(index), 0
    for start in range(0, total, batch_size):
        chunk = index[start:start + batch_size]
        images = normalize_slices(np.asarray(arr[chunk]), value_range)
        for j, result in iter_predict(net, images, batch_size=batch_size, device=device,
                                      score_threshold=score_threshold, top_k=top_k,
                                      normalize=False):
            k = int(chunk[j])
            out.labels[k] = result["mask"]
            out.done[k] = True
            rows.append(result_boxes(k, result))
        out.boxes = np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)
        done += len(chunk)
        yield done, total
    return out


def segment_array(volume: np.ndarray, model: Any = None, **kwargs: Any) -> VolumeSegmentation:
    """Synchronous :func:`iter_segment` for scripts and tests."""
    from src_model.generators import drain

    return drain(iter_segment(volume, model, **kwargs))
