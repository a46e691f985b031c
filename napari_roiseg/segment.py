"""Whole-volume segmentation as a plain generator: the engine of the widget, the API and the CLI.

No napari or Qt here. The generator yields ``(slices_done, total)`` after each batch, so a napari
worker can drive a progress bar and cancel between batches, and a script can simply call
:func:`segment_array`. Torch is imported only when a model is needed.
"""

from __future__ import annotations

import warnings
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
    (a cancelled run leaves the rest False and their labels 0). ``stats`` float32 (S, F): per
    slice, the summary ``review.slice_stats`` takes for the review queue (``review.STAT_FIELDS``;
    NaN rows for slices not segmented); filled by :func:`iter_segment`.
    """

    labels: np.ndarray
    boxes: np.ndarray
    done: np.ndarray
    stats: np.ndarray | None = None

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


CPU_BATCH_SIZE = 2
GPU_BATCH_SIZE = 16


def default_batch_size(device: Any = "auto") -> int:
    """Slices per forward pass when none is given: 2 on the CPU, 16 on a GPU.

    On the CPU small batches are faster: the fast preset's full-resolution activations of two
    367x192 slices (~9 MB per tensor) stay in a 32 MB L3 cache, eight do not (measured on 2
    cores: ~18 ms/slice at batch 2, ~22 at batch 8). A GPU wants large batches.
    """
    from src_model.device import resolve_device

    return GPU_BATCH_SIZE if resolve_device(device).type == "cuda" else CPU_BATCH_SIZE


def iter_segment(
    volume: np.ndarray,
    model: Any = None,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    score_threshold: float | None = None,
    top_k: int | None = None,
    slices: Sequence[int] | None = None,
    out: VolumeSegmentation | None = None,
    spacing: Any = None,
    skip_overlays: bool = True,
) -> Generator[tuple[int, int], None, VolumeSegmentation]:
    """Segment ``slices`` (default: all) of ``volume``; yield ``(done, total)`` after each batch.

    ``skip_overlays``: with 3 or more frames, a proposal whose salient pixels are largely
    burned-in overlay -- pixels that stay the same in every frame while the tissue changes:
    text, depth rulers, bars, logos (:func:`~src_model.preprocess.burned_in`, read from the
    whole volume once, like the intensity range; :func:`~src_model.rpn.drop_burned_in`) -- is
    dropped before the test filter, so it neither paints a mask nor takes the place of the
    structure's box.

    ``spacing``: the in-plane pixel size in mm (a number, ``(y, x)`` or ``(z, y, x)``; None =
    unknown). Slices are resampled to the model's reference pixel size (or frame height) before
    the model and its masks, probabilities and boxes mapped back
    (:mod:`src_model.resolution`); results always have the volume's own size.

    The generator's return value (``StopIteration.value``) is the :class:`VolumeSegmentation`;
    pass ``out`` to fill an existing one (what the widget does so that a cancelled run keeps
    its partial result; its ``labels`` may be a writable memory map, whose pages are released
    batch by batch like those of a memory-mapped ``volume``). ``batch_size`` None:
    :func:`default_batch_size` for the device.
    """
    from src_model.mmap_pages import release_slices
    from src_model.preprocess import burned_in, intensity_range, normalize_slices
    from src_model.resolution import model_size, resize_images, resize_masks, results_to_input

    from .review import empty_stats, slice_stats

    arr = check_volume(volume)
    index = np.arange(arr.shape[0]) if slices is None else np.asarray(list(slices), dtype=int)
    if len(index) and (index.min() < 0 or index.max() >= arr.shape[0]):
        bad = index[(index < 0) | (index >= arr.shape[0])]
        raise IndexError(f"slice indices {bad.tolist()[:5]} are outside the volume's "
                         f"{arr.shape[0]} slices (0..{arr.shape[0] - 1})")
    net = load_model(model)
    if batch_size is None:
        batch_size = default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = model_size(getattr(net, "config", None), arr.shape, spacing)
    if out is None:
        out = VolumeSegmentation(np.zeros(arr.shape, np.uint8), np.zeros((0, 6), np.float32),
                                 np.zeros(arr.shape[0], bool))
    # Intensity statistics come from the whole volume once, never from a batch, so that every
    # slice is normalised the same way whether it is run alone or with the others; only the
    # batch being run is converted to float, so memory stays bounded (memory-mapped volumes
    # are read batch by batch).
    if out.stats is None or len(out.stats) != arr.shape[0]:
        out.stats = empty_stats(arr.shape[0])
    value_range = intensity_range(arr)
    options = {"score_threshold": score_threshold, "top_k": top_k, "normalize": False}
    bright = burned_in(arr) if skip_overlays else None
    if bright is not None:
        if size != arr.shape[1:]:  # thin ruler lines and glyphs must survive a shrink
            bright = (resize_masks(bright[None] >= 1, size, min_fraction=0.1)[0]
                      + resize_masks(bright[None] >= 2, size, min_fraction=0.1)[0])
        options["burned_in"] = bright
    rows: list[np.ndarray] = [out.boxes[~np.isin(out.boxes[:, 0], index)]] if len(out.boxes) else []
    total, done = len(index), 0
    while done < total:
        chunk = index[done:done + batch_size]
        # A run of consecutive slices is read as one slice of the array (a view: no gather copy).
        span = _as_span(chunk)
        batch = arr[span] if span is not None else arr[chunk]
        images = normalize_slices(np.asarray(batch), value_range)
        if size != arr.shape[1:]:
            images = resize_images(images, size)
        results, batch_size = _predict_chunk(net, images, batch_size, device, options)
        if size != arr.shape[1:]:
            results = results_to_input(results, arr.shape[1:])
        for j, result in enumerate(results):
            k = int(chunk[j])
            out.labels[k] = result["mask"]
            out.done[k] = True
            out.stats[k] = slice_stats(result)
            rows.append(result_boxes(k, result))
        if span is not None:
            # Memory-mapped input or output (the CLI streams both): keep only the batch in use
            # resident, not every slice read or written so far. No-op for ordinary arrays.
            release_slices(arr, span.start, span.stop)
            release_slices(out.labels, span.start, span.stop)
        out.boxes = np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)
        done += len(chunk)
        yield done, total
    return out


def _predict_chunk(net: Any, images: np.ndarray, batch_size: int, device: Any,
                   options: dict[str, Any]) -> tuple[list[dict[str, np.ndarray]], int]:
    """``iter_predict`` over one chunk of slices: ``(results, batch_size)``.

    Running out of memory (GPU or CPU) halves the batch and runs the chunk again, with a
    warning; the smaller batch is returned so that the rest of the volume keeps it. With one
    slice per batch already, a MemoryError says what to try.
    """
    from src_model.device import resolve_device
    from src_model.predict import iter_predict
    from src_model.train import free_memory, is_out_of_memory

    while True:
        try:
            results = [r for _, r in iter_predict(net, images, batch_size=batch_size,
                                                  device=device, **options)]
            return results, batch_size
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            dev = resolve_device(device)
            free_memory(dev)
            if batch_size == 1:
                raise MemoryError(
                    f"out of memory segmenting a single slice on {dev}: close other programs "
                    "using the memory, or run on the CPU (device 'cpu')") from exc
            warnings.warn(f"out of memory with {batch_size} slices per batch on {dev}: "
                          f"continuing with {batch_size // 2}", RuntimeWarning, stacklevel=3)
            batch_size //= 2


def _as_span(chunk: np.ndarray) -> slice | None:
    """``chunk`` (slice indices) as a ``slice`` if they are consecutive and increasing."""
    if len(chunk) and chunk[0] >= 0 and np.array_equal(
            chunk, np.arange(chunk[0], chunk[0] + len(chunk))):
        return slice(int(chunk[0]), int(chunk[0]) + len(chunk))
    return None


def segment_array(volume: np.ndarray, model: Any = None, **kwargs: Any) -> VolumeSegmentation:
    """Synchronous :func:`iter_segment` for scripts and tests."""
    from src_model.generators import drain

    return drain(iter_segment(volume, model, **kwargs))
