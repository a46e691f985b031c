"""Slices go into the model at the pixel size it was trained at, and results come back at theirs.

A model records its reference in its config (saved in every checkpoint):

* ``pixel_spacing_mm``: the in-plane pixel size of its training slices, when that was known;
* ``frame_height_px``: the height of its training frames, when their pixel size was unknown.

:func:`model_size` says what size a stack of ``H x W`` slices becomes before the model:

* pixel size known (``spacing`` ``(y, x)`` mm) and the model's known: each axis scaled by
  ``spacing / pixel_spacing_mm`` (so a structure spans as many pixels as in training, and
  anisotropic pixels become square);
* otherwise, when the model knows its frame height: scaled so the height becomes it (the same
  field of view is assumed: the fall-back on image size);
* otherwise unchanged. A change of less than :data:`TOLERANCE` on both axes is not made (no blur
  for nothing).

Inference (``napari_roiseg.segment``) and fine-tuning (``napari_roiseg.finetune``) apply the same
rule, so a fine-tuned model sees what inference will give it. Resampling is bilinear with
antialiasing for images; labels are resampled as fractions and thresholded at one half; masks and
probabilities come back the same way and boxes are scaled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TOLERANCE", "describe", "has_reference", "model_size", "reference_of",
           "resample_pair", "resize_images", "resize_masks", "results_to_input",
           "check_spacing", "training_reference"]

TOLERANCE = 0.05


def check_spacing(spacing: Any) -> tuple[float, float] | None:
    """``spacing`` as ``(y, x)`` mm: None, a number (square pixels) or a pair / the last two of a
    ``(z, y, x)`` triple. Raises ValueError for non-positive or non-finite sizes."""
    if spacing is None:
        return None
    values = np.atleast_1d(np.asarray(spacing, dtype=float)).ravel()
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size < 2:
        raise ValueError(f"spacing must be a number or (y, x) in mm, got {spacing!r}")
    y, x = (float(v) for v in values[-2:])
    if not (np.isfinite(y) and np.isfinite(x) and y > 0 and x > 0):
        raise ValueError(f"pixel spacing must be positive and finite (mm), got {spacing!r}")
    return y, x


def model_size(config: Any, shape: Sequence[int], spacing: Any = None) -> tuple[int, int]:
    """The ``(height, width)`` slices of ``shape`` (``(..., H, W)``) and pixel ``spacing`` (mm,
    None = unknown) are resampled to before ``config``'s model (see the module text)."""
    height, width = int(shape[-2]), int(shape[-1])
    yx = check_spacing(spacing)
    ref_mm = getattr(config, "pixel_spacing_mm", None)
    ref_h = getattr(config, "frame_height_px", None)
    if yx is not None and ref_mm:
        fy, fx = yx[0] / ref_mm, yx[1] / ref_mm
    elif ref_h:
        fy = fx = ref_h / height
    else:
        return height, width
    if abs(fy - 1.0) < TOLERANCE and abs(fx - 1.0) < TOLERANCE:
        return height, width
    return max(16, round(height * fy)), max(16, round(width * fx))


def describe(config: Any, shape: Sequence[int], spacing: Any = None) -> str:
    """One line for a status bar: what :func:`model_size` does to slices of ``shape``, e.g.
    "resampled 734x384 -> 367x192 (0.075 mm pixels to the model's 0.15 mm)"; "" when nothing."""
    size = model_size(config, shape, spacing)
    height, width = int(shape[-2]), int(shape[-1])
    if size == (height, width):
        return ""
    yx = check_spacing(spacing)
    ref_mm = getattr(config, "pixel_spacing_mm", None)
    why = (f"{yx[1]:.3g} mm pixels to the model's {ref_mm:.3g} mm" if yx is not None and ref_mm
           else f"pixel size unknown: frames brought to the model's {size[0]} rows")
    return f"resampled {height}x{width} -> {size[0]}x{size[1]} ({why})"


def has_reference(config: Any) -> bool:
    """Whether ``config`` records a pixel size or a frame height to resample to."""
    return bool(getattr(config, "pixel_spacing_mm", None)
                or getattr(config, "frame_height_px", None))


def training_reference(config: Any, shape: Sequence[int], spacing: Any
                       ) -> tuple[Any, dict[str, Any]]:
    """For training ``config``'s model on slices of ``shape`` and ``spacing``: the config whose
    :func:`model_size` the slices are resampled by (the model's own; for a model without a
    reference, the data's, so these slices stay as they are) and the reference fields the
    trained model records (:func:`reference_of`)."""
    reference = reference_of(config, shape, spacing)
    return (config if has_reference(config) else config.replace(**reference)), reference


def reference_of(config: Any, shape: Sequence[int], spacing: Any) -> dict[str, Any]:
    """The reference fields a model trained on slices of ``shape`` resampled by
    :func:`model_size` gets: the parent's when it had one, else the data's."""
    if has_reference(config):
        ref_mm = getattr(config, "pixel_spacing_mm", None)
        if ref_mm and check_spacing(spacing) is None:
            # the data's pixel size is unknown, so the model's no longer describes what it saw
            return {"pixel_spacing_mm": None,
                    "frame_height_px": model_size(config, shape, spacing)[0]}
        return {"pixel_spacing_mm": ref_mm,
                "frame_height_px": getattr(config, "frame_height_px", None)}
    yx = check_spacing(spacing)
    if yx is not None and abs(yx[0] - yx[1]) <= TOLERANCE * yx[1]:
        return {"pixel_spacing_mm": yx[1], "frame_height_px": None}
    return {"pixel_spacing_mm": None, "frame_height_px": int(shape[-2])}


def _interpolate(stack: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                          antialias=antialias)
    return out[:, 0].numpy()


def resize_images(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(N, H, W)`` float slices -> ``(N, h, w)`` float32 (bilinear, antialiased)."""
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return np.asarray(images, np.float32)
    return _interpolate(images, size, antialias=True)


def resize_masks(masks: np.ndarray, size: Sequence[int], min_fraction: float = 0.5) -> np.ndarray:
    """``(N, H, W)`` 0/1 masks -> ``(N, h, w)`` uint8: resampled as fractions (bilinear,
    antialiased), foreground where at least ``min_fraction`` of a pixel is (0.5: half a pixel;
    a small value keeps lines thinner than the new pixels)."""
    size = (int(size[0]), int(size[1]))
    if tuple(masks.shape[-2:]) == size:
        return (np.asarray(masks) != 0).astype(np.uint8)
    fractions = _interpolate(np.asarray(masks) != 0, size, antialias=True)
    return (fractions >= min_fraction).astype(np.uint8)


def results_to_input(results: list[dict[str, np.ndarray]], shape: Sequence[int]
                     ) -> list[dict[str, np.ndarray]]:
    """Per-slice predictions made at the model's size, mapped back to slices of ``shape``
    (``(H, W)``): masks as :func:`resize_masks`, probabilities bilinear, boxes scaled and clipped
    to the slice."""
    height, width = int(shape[-2]), int(shape[-1])
    out = []
    for r in results:
        h, w = r["mask"].shape[-2:]
        if (h, w) == (height, width):
            out.append(r)
            continue
        sx, sy = width / w, height / h
        boxes = np.array(r["boxes"], np.float32, copy=True).reshape(-1, 4)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] * sx, 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] * sy, 0, height)
        back = {**r, "boxes": boxes, "mask": resize_masks(r["mask"][None], (height, width))[0]}
        if "probabilities" in r:
            back["probabilities"] = np.clip(
                _interpolate(r["probabilities"][None], (height, width), antialias=True)[0], 0, 1)
        out.append(back)
    return out


def resample_pair(volume: np.ndarray, labels: np.ndarray, size: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A training pair ``(S, H, W)`` at the model's ``size``: the volume as uint8 (normalised
    over the whole volume first, as inference does, unless it is uint8 already) and the labels
    as 0/1 uint8 (:func:`resize_masks`). Unchanged when the size already matches."""
    from .preprocess import normalize_slices

    size = (int(size[0]), int(size[1]))
    if tuple(np.shape(volume)[-2:]) == size:
        return volume, labels
    images = normalize_slices(np.asarray(volume))
    images = images[None] if images.ndim == 2 else images
    resized = resize_images(images, size)
    out = np.round(np.clip(resized, 0.0, 1.0) * 255).astype(np.uint8)
    lab = np.asarray(labels)
    return out, resize_masks(lab[None] if lab.ndim == 2 else lab, size)
