"""Precision, recall and dice of binary masks, per slice and pooled over pixels (numpy only).

Definitions (the paper's, Zhang et al. ISBI 2018): precision = TP / (TP + FP), recall =
TP / (TP + FN), dice = 2 TP / (2 TP + FP + FN), foreground = ``label != 0``.

- Per slice, then averaged over slices (``per_slice_mean``: the paper's "mean over all test
  slices"). A slice where truth and prediction are both empty scores 1.0 for all three (a correct
  rejection); on any other slice an undefined ratio (0/0, e.g. precision with an empty
  prediction) scores 0.
- ``per_slice_mean_nonempty``: the same mean over the slices where truth or prediction is
  non-empty only, so that many correctly empty slices cannot inflate the score (1.0 when there
  is no such slice: everything was correctly empty).
- ``pooled``: TP/FP/FN summed over all pixels of all slices first (micro average, what the
  authors' code computed). An undefined pooled ratio is 0, unless both masks are entirely
  empty (then 1.0).

No torch import: the napari side and the CLI use this without paying for torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["confusion_per_slice", "scores_from_counts", "evaluate_masks", "SegmentationEvaluator"]

_NAMES = ("precision", "recall", "dice")


def _as_slices(mask: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(mask)
    numeric = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    if a.dtype != bool and not numeric:
        raise ValueError(f"{name} must be a numeric or bool label array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(
            f"{name} must be a mask (H, W) or a stack of masks (S, H, W), got shape {a.shape}")
    return a != 0


def confusion_per_slice(
    pred: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN counts (int64 arrays of length S) of ``pred`` against ``truth``.

    Both are ``(H, W)`` or ``(S, H, W)`` label arrays of the same shape; foreground is ``!= 0``.
    """
    p, t = _as_slices(pred, "pred"), _as_slices(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(
            f"pred {np.shape(pred)} and truth {np.shape(truth)} differ in shape: give one "
            "prediction per truth slice, both (H, W) or both (S, H, W)"
        )
    tp = np.count_nonzero(p & t, axis=(1, 2)).astype(np.int64)
    fp = np.count_nonzero(p & ~t, axis=(1, 2)).astype(np.int64)
    fn = np.count_nonzero(~p & t, axis=(1, 2)).astype(np.int64)
    return tp, fp, fn


def scores_from_counts(tp, fp, fn) -> dict[str, np.ndarray]:
    """Precision, recall, dice (float64 arrays, or 0-d for scalars) from counts, with the rule:
    all three are 1.0 where ``tp + fp + fn == 0`` (both empty), and an undefined ratio is 0."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return np.where(both_empty, 1.0, out)

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
    }


def _summary(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
    per = scores_from_counts(tp, fp, fn)
    truth_any, pred_any = (tp + fn) > 0, (tp + fp) > 0
    nonempty = truth_any | pred_any
    pooled = scores_from_counts(tp.sum(), fp.sum(), fn.sum())
    n = len(tp)
    if n == 0:
        raise ValueError("no slices to evaluate: give masks (H, W) or (S, H, W) with S >= 1")
    return {
        "per_slice_mean": {k: float(per[k].mean()) for k in _NAMES},
        "per_slice_mean_nonempty": {
            k: float(per[k][nonempty].mean()) if nonempty.any() else 1.0 for k in _NAMES
        },
        "pooled": {k: float(pooled[k]) for k in _NAMES},
        "n_slices": int(n),
        "n_slices_truth_nonempty": int(truth_any.sum()),
        "n_slices_pred_nonempty": int(pred_any.sum()),
        "per_slice": {
            **{k: per[k].tolist() for k in _NAMES},
            "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(),
        },
    }


def evaluate_masks(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Score a predicted mask (stack) against the truth; everything in the result is JSON-able.

    Returns
    -------
    dict with ``per_slice_mean``, ``per_slice_mean_nonempty`` and ``pooled`` (each
    ``{precision, recall, dice}`` floats), ``n_slices``, ``n_slices_truth_nonempty``,
    ``n_slices_pred_nonempty`` and ``per_slice`` (lists ``precision``, ``recall``, ``dice``,
    ``tp``, ``fp``, ``fn``, one entry per slice). When no slice has anything in truth or
    prediction, ``per_slice_mean_nonempty`` is 1.0 like ``pooled`` (everything correctly empty).
    """
    tp, fp, fn = confusion_per_slice(pred, truth)
    return _summary(tp, fp, fn)


class SegmentationEvaluator:
    """Streaming :func:`evaluate_masks` over many volumes (detectron2's evaluator protocol).

    >>> ev = SegmentationEvaluator()
    >>> ev.reset()
    >>> for pred, truth in pairs:          # each (H, W) or (S, H, W)
    ...     ev.process(pred, truth)
    >>> ev.evaluate()                      # same dict as evaluate_masks on all slices stacked

    Only per-slice counts are kept, never the masks, so volumes of different sizes can be mixed.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._counts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, pred: np.ndarray, truth: np.ndarray) -> None:
        self._counts.append(confusion_per_slice(pred, truth))

    def evaluate(self) -> dict[str, Any]:
        if not self._counts:
            raise ValueError("nothing to evaluate: call process(pred, truth) first")
        tp, fp, fn = (np.concatenate(c) for c in zip(*self._counts))
        return _summary(tp, fp, fn)
