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
from .rpn import RoiSegRPN, prefilter_scores

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


def _to_numpy(
    outputs: list[dict[str, torch.Tensor]], probabilities: bool, gather: bool | None = None
) -> list[dict[str, np.ndarray]]:
    """A batch's eval dicts as numpy dicts (``probabilities`` left out when False).

    On the CPU the arrays share memory with the output tensors (no copy). On a GPU (``gather``
    None: whenever the outputs are not on the CPU) each field is copied to the host once for the
    whole batch: one copy per slice and field would synchronise with the device four times per
    slice.
    """
    if not outputs:
        return []
    fields = ("boxes", "scores", "mask") + (("probabilities",) if probabilities else ())
    if gather is None:
        gather = outputs[0]["mask"].device.type != "cpu"
    if gather:
        counts = [int(o["boxes"].shape[0]) for o in outputs]
        host = {
            "boxes": list(torch.cat([o["boxes"] for o in outputs]).float().cpu().split(counts)),
            "scores": list(torch.cat([o["scores"] for o in outputs]).float().cpu().split(counts)),
            "mask": list(torch.stack([o["mask"] for o in outputs]).to(torch.uint8).cpu()),
        }
        if probabilities:
            host["probabilities"] = list(
                torch.stack([o["probabilities"] for o in outputs]).float().cpu())
        outputs = [{k: host[k][i] for k in fields} for i in range(len(outputs))]
    return [
        {
            "boxes": o["boxes"].float().numpy().reshape(-1, 4),
            "scores": o["scores"].float().numpy().reshape(-1),
            "mask": o["mask"].to(torch.uint8).numpy(),
            **({"probabilities": o["probabilities"].float().numpy()} if probabilities else {}),
        }
        for o in outputs
    ]


def _all_on(model: nn.Module, dev: torch.device) -> bool:
    """Whether every parameter and buffer of ``model`` already lives on ``dev``."""
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    tensors = list(model.parameters()) + list(model.buffers())
    return all(t.device == dev for t in tensors)


def _roi_prefilter(model: nn.Module, score_threshold: float | None):
    """:func:`~src_model.rpn.prefilter_scores` for RPN-FCN models; nothing for the others."""
    rpn = getattr(model, "rpn", None)
    if not isinstance(rpn, RoiSegRPN):
        return contextlib.nullcontext()
    if score_threshold is None:
        score_threshold = getattr(getattr(model, "config", None), "test_score_threshold", None)
    return prefilter_scores(rpn, score_threshold)


def iter_predict(
    model: nn.Module,
    slices: np.ndarray,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    score_threshold: float | None = None,
    top_k: int | None = None,
    normalize: bool = True,
    probabilities: bool = True,
    burned_in: np.ndarray | None = None,
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
    probabilities
        Include the ``probabilities`` maps (default). ``False`` leaves them out, which saves a
        float copy of every slice from the GPU when only masks and boxes are wanted.
    burned_in
        ``uint8 (H, W)`` overlay map of the stack (:func:`~src_model.preprocess.burned_in`):
        proposals whose salient pixels are largely burned-in overlay are dropped
        (:func:`~src_model.rpn.drop_burned_in`). RPN-FCN only
        (the baselines have no ROIs and ignore it).

    Yields
    ------
    ``(i, {"boxes": float32[K, 4] (x1, y1, x2, y2), "scores": float32[K],
    "mask": uint8[H, W], "probabilities": float32[H, W]})``.

    Speed: RPN-FCN with a score threshold (the argument or the config's) drops proposals below
    it before NMS rather than after (:func:`~src_model.rpn.prefilter_scores`); same ROIs, less
    NMS work. Batches run under ``torch.inference_mode``; the thread count is torch's (set it
    with ``torch.set_num_threads``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stack = _as_stack(slices, normalize)
    dev = resolve_device(device)
    was_training = model.training
    # Both walk every module: skipped when there is nothing to do (the volume engine calls this
    # once per batch of 2 slices; ~1 ms a call, 2-3% of the fast preset's time).
    if not _all_on(model, dev):
        model.to(dev)
    changed_mode = any(m.training for m in model.modules())
    if changed_mode:
        model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )
    extra = {}
    if burned_in is not None and isinstance(getattr(model, "rpn", None), RoiSegRPN):
        if burned_in.shape != stack.shape[1:]:
            raise ValueError(f"burned_in has shape {burned_in.shape}, the slices "
                             f"{stack.shape[1:]}")
        extra["burned_in"] = torch.from_numpy(np.asarray(burned_in, dtype=np.uint8)).to(dev)
    try:
        for start in range(0, stack.shape[0], batch_size):
            batch = torch.from_numpy(stack[start : start + batch_size]).to(dev)[:, None]
            with torch.inference_mode(), autocast, _roi_prefilter(model, score_threshold):
                outputs = model(batch, score_threshold=score_threshold, top_k=top_k, **extra)
            for offset, result in enumerate(_to_numpy(outputs, probabilities)):
                yield start + offset, result
    finally:
        if changed_mode:
            model.train(was_training)


def predict(model: nn.Module, slices: np.ndarray, **kwargs: Any) -> list[dict[str, np.ndarray]]:
    """All results of :func:`iter_predict` as a list (one dict per slice, in order)."""
    return [result for _, result in iter_predict(model, slices, **kwargs)]
