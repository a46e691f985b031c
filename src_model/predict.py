"""Inference on numpy slices: a generator (for progress bars and cancellation) and a list wrapper.

No GUI types here: a napari worker simply iterates :func:`iter_predict`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .device import resolve_device
from .preprocess import normalize_slices

__all__ = ["iter_predict", "predict"]


def _as_stack(slices: np.ndarray, normalize: bool) -> np.ndarray:
    arr = np.asarray(slices)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"slices must be one slice (H, W) or a volume (N, H, W); got shape {arr.shape}"
        )
    if normalize:
        # Once over the whole volume: every batch then shares the same intensity scaling.
        arr = normalize_slices(arr)
    elif not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_):
        raise ValueError(
            f"normalize=False expects float slices already in [0, 1], got dtype {arr.dtype}; "
            "leave normalize=True to scale them"
        )
    arr = arr.astype(np.float32, copy=False)
    return arr[None] if arr.ndim == 2 else arr


def _to_numpy(result: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        "boxes": result["boxes"].float().cpu().numpy().reshape(-1, 4),
        "scores": result["scores"].float().cpu().numpy().reshape(-1),
        "mask": result["mask"].to(torch.uint8).cpu().numpy(),
        "probabilities": result["probabilities"].float().cpu().numpy(),
    }


def iter_predict(
    model: nn.Module,
    slices: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    score_threshold: float | None = None,
    top_k: int | None = None,
    normalize: bool = True,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Segment ``slices`` batch by batch, yielding ``(slice_index, result)`` in slice order.

    Parameters
    ----------
    model
        Any model of the forward contract (``build_model`` / ``load_checkpoint``). It is moved to
        ``device`` and put in eval mode for the run (its previous train/eval mode is restored when
        the generator finishes or is closed).
    slices
        ``(H, W)`` or ``(N, H, W)`` numpy array of any real dtype.
    batch_size
        Slices per forward pass.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or a ``torch.device``. On CUDA the
        forward pass runs under float16 autocast.
    score_threshold, top_k
        Test-ROI filters for RPN-FCN (None: the model config's); ignored by the baselines.
    normalize
        Scale with :func:`~src_model.preprocess.normalize_slices` over the whole array (default).
        ``False``: the slices are already float in [0, 1] (e.g. normalised once for a volume that
        is predicted in pieces).

    Yields
    ------
    ``(i, {"boxes": float32[K, 4] (x1, y1, x2, y2), "scores": float32[K],
    "mask": uint8[H, W], "probabilities": float32[H, W]})``
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stack = _as_stack(slices, normalize)
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )
    try:
        for start in range(0, stack.shape[0], batch_size):
            batch = torch.from_numpy(stack[start : start + batch_size]).to(dev)[:, None]
            with torch.inference_mode(), autocast:
                outputs = model(batch, score_threshold=score_threshold, top_k=top_k)
            for offset, result in enumerate(outputs):
                yield start + offset, _to_numpy(result)
    finally:
        model.train(was_training)


def predict(model: nn.Module, slices: np.ndarray, **kwargs: Any) -> list[dict[str, np.ndarray]]:
    """All results of :func:`iter_predict` as a list (one dict per slice, in order)."""
    return [result for _, result in iter_predict(model, slices, **kwargs)]
