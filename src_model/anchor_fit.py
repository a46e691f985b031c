"""Anchor sizes and aspect ratios fitted to the user's labelled boxes.

The shipped anchors (``fast``: 16/32/64 px x ratios 0.5/1/2) fit the phantom's 10-60 px
acetabulum; a real ilium + roof band of about 150 x 55 px is matched by none of them at the RPN's
0.7 IoU. Before fine-tuning on a user's labels, fit new values to the boxes of those labels and
keep their *numbers*: the RPN head has one objectness and four box-delta outputs per anchor
(``len(sizes) * len(ratios)`` per location), so with the same counts every RPN weight keeps its
shape and is reused; only what each output's anchor means changes.

Conventions (torchvision's ``AnchorGenerator``, which :class:`src_model.rpn.GridAnchorGenerator`
extends): an anchor of size ``s`` and ratio ``r`` is ``w = s / sqrt(r)``, ``h = s * sqrt(r)``,
so ``s = sqrt(w * h)`` and ``r = h / w``.

The rule
    Sizes are the quantiles of ``sqrt(w * h)`` at ``(i + 0.5) / n_sizes`` (the middles of
    ``n_sizes`` equally populated bins), ratios the same quantiles of ``h / w``, both taken in log
    space. Where the boxes are too alike to give distinct values (few boxes, or one shape
    repeated), consecutive values are pushed apart to at least a factor ``MIN_STEP`` while their
    geometric mean stays that of the quantiles, so the anchors stay distinct and centred on the
    data. Sizes are then rounded to whole pixels of at least ``MIN_SIZE`` (and made strictly
    increasing), ratios to three significant digits.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig
from .data import gt_box_from_mask

__all__ = ["MIN_SIZE", "MIN_STEP", "REFIT_BELOW_IOU", "adapt_config_anchors",
           "adapt_model_anchors", "anchor_shape_iou", "boxes_from_labels", "fit_anchors",
           "fit_config_anchors"]

# px: torchvision rounds base anchors' half-sides to whole pixels, so smaller anchors at ratios
# far from 1 collapse to zero width or height.
MIN_SIZE = 4
MIN_STEP = 1.25  # smallest factor between consecutive fitted sizes (and ratios)
# Refit when the median labelled box matches its best anchor shape below this IoU. The RPN calls
# an anchor positive at 0.7 IoU; a box whose best *shape* match (centres aligned, an upper bound
# of what the 16-px grid gives) is under 0.6 gets few or no positive anchors. The phantom's boxes
# match the fast preset's anchors at a median of ~0.8, so fine-tuning on it keeps them.
REFIT_BELOW_IOU = 0.6


def boxes_from_labels(labels: np.ndarray) -> np.ndarray:
    """One tight box per labelled slice of ``labels`` ``(S, H, W)`` (or one ``(H, W)`` slice).

    Returns ``float32 [K, 4]`` ``x1, y1, x2, y2`` (x2, y2 exclusive, as
    :func:`src_model.data.gt_box_from_mask`), K = the number of slices with foreground, in slice
    order; ``[0, 4]`` when nothing is labelled.
    """
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    if lab.ndim != 3:
        raise ValueError(
            f"boxes_from_labels expects labels (S, H, W) or (H, W), got shape {lab.shape}")
    boxes = [gt_box_from_mask(sl) for sl in lab]
    return np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 4), np.float32)


def fit_anchors(
    boxes: np.ndarray, n_sizes: int, n_ratios: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Anchor ``sizes`` (px, strictly increasing, >= ``MIN_SIZE``) and ``aspect_ratios``
    (height / width, strictly increasing) fitted to ``boxes`` ``[K, 4]`` ``x1, y1, x2, y2``.

    ``n_sizes`` / ``n_ratios`` are the counts to return: pass the current config's
    (``len(config.anchor_sizes)``, ``len(config.aspect_ratios)``) to keep every RPN weight, or
    use :func:`fit_config_anchors`. See the module docstring for the rule.
    """
    if n_sizes < 1 or n_ratios < 1:
        raise ValueError(f"n_sizes and n_ratios must be >= 1, got {n_sizes} and {n_ratios}")
    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [K, 4] (x1, y1, x2, y2), got shape {b.shape}")
    if b.shape[0] == 0:
        raise ValueError("no boxes to fit anchors to: label the structure on at least one slice "
                         "(boxes_from_labels gives one box per labelled slice)")
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    bad = np.flatnonzero(~np.isfinite(b).all(axis=1) | ~(w > 0) | ~(h > 0))
    if bad.size:
        raise ValueError(
            f"{bad.size} of {len(b)} boxes are degenerate (non-finite, or x2 <= x1 or y2 <= y1), "
            f"e.g. rows {bad[:5].tolist()}; boxes must be x1, y1, x2, y2 with x2 > x1 and y2 > y1"
        )
    sizes = np.exp(_spread_quantiles(0.5 * np.log(w * h), n_sizes))
    ratios = np.exp(_spread_quantiles(np.log(h / w), n_ratios))
    return _whole_pixels(sizes), _three_digits(ratios)


def fit_config_anchors(config: ModelConfig, boxes: np.ndarray) -> ModelConfig:
    """``config`` with anchors fitted to ``boxes``, as many sizes and ratios as it has (so a model
    of the result loads the state_dict of a model of ``config``)."""
    sizes, ratios = fit_anchors(boxes, len(config.anchor_sizes), len(config.aspect_ratios))
    return config.replace(anchor_sizes=sizes, aspect_ratios=ratios)


def anchor_shape_iou(config: ModelConfig, boxes: np.ndarray) -> np.ndarray:
    """For each box ``[K, 4]`` the IoU of its best anchor *shape* in ``config`` (box and anchor
    centred on each other): ``float64 [K]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
    s = np.asarray(config.anchor_sizes, np.float64)[:, None]
    r = np.sqrt(np.asarray(config.aspect_ratios, np.float64))[None, :]
    aw, ah = (s / r).ravel()[None, :], (s * r).ravel()[None, :]
    inter = np.minimum(w, aw) * np.minimum(h, ah)
    iou = inter / (w * h + aw * ah - inter)
    return iou.max(axis=1) if len(b) else np.zeros(0)


def adapt_config_anchors(config: ModelConfig, boxes: np.ndarray,
                         always: bool = False) -> tuple[ModelConfig, dict]:
    """``config`` with anchors fitted to ``boxes`` when its own match them poorly (median best
    shape IoU under :data:`REFIT_BELOW_IOU`; ``always``: whatever they match) and the fitted
    ones match better; otherwise ``config`` unchanged.

    Returns ``(config, info)``; ``info`` holds ``refit`` (bool), the median IoU ``before`` and
    ``after``, and the anchors used, for reports and the fine-tuning summary.
    """
    before = float(np.median(anchor_shape_iou(config, boxes))) if len(boxes) else 1.0
    info = {"refit": False, "median_iou_before": before, "median_iou_after": before,
            "anchor_sizes": list(config.anchor_sizes),
            "aspect_ratios": list(config.aspect_ratios)}
    if not len(boxes) or (before >= REFIT_BELOW_IOU and not always):
        return config, info
    fitted = fit_config_anchors(config, boxes)
    after = float(np.median(anchor_shape_iou(fitted, boxes)))
    if after <= before:
        return config, info
    info.update(refit=True, median_iou_after=after, anchor_sizes=list(fitted.anchor_sizes),
                aspect_ratios=list(fitted.aspect_ratios))
    return fitted, info


def adapt_model_anchors(net, labels, mode: str = "auto"):
    """``net`` (RPN-FCN) with its RPN anchors fitted to the boxes of ``labels`` ((S, H, W), or a
    list of such volumes) when ``mode`` is "fit", or "auto" and its own anchors match those
    boxes poorly (:func:`adapt_config_anchors`); "keep" never. The same number of sizes and
    ratios, so every weight is reused (the model is rebuilt and loads them). Returns
    ``(model, info)``; info None for models without an RPN or without labelled boxes. Fine-tuning
    and ``roiseg train`` share this rule."""
    if mode not in ("auto", "fit", "keep"):
        raise ValueError(f"anchors must be 'auto', 'fit' or 'keep', got {mode!r}")
    config = getattr(net, "config", None)
    if mode == "keep" or config is None or config.arch != "rpn_fcn":
        return net, None
    volumes = labels if isinstance(labels, (list, tuple)) else [labels]
    boxes = np.concatenate([boxes_from_labels(v) for v in volumes])
    if not len(boxes):
        return net, None
    new, info = adapt_config_anchors(config, boxes, always=mode == "fit")
    if not info["refit"]:
        return net, info
    from .model import build_model

    rebuilt = build_model(new)
    rebuilt.load_state_dict(net.state_dict())
    return rebuilt.to(next(net.parameters()).device), info


def _spread_quantiles(values: np.ndarray, n: int) -> np.ndarray:
    """The n bin-middle quantiles of ``values`` (log space), at least log(MIN_STEP) apart, with
    the mean of the quantiles kept."""
    q = np.quantile(values, (np.arange(n) + 0.5) / n)
    step = math.log(MIN_STEP)
    out = q.copy()
    for i in range(1, n):
        out[i] = max(out[i], out[i - 1] + step)
    return out + (q.mean() - out.mean())


def _whole_pixels(sizes: np.ndarray) -> tuple[int, ...]:
    out: list[int] = []
    for s in sizes:
        v = max(int(round(float(s))), MIN_SIZE)
        out.append(v if not out else max(v, out[-1] + 1))
    return tuple(out)


def _three_digits(ratios: np.ndarray) -> tuple[float, ...]:
    """Ratios to three significant digits (readable in a config); they differ by at least
    MIN_STEP, so rounding cannot merge two, but keep them strictly increasing regardless."""
    out = [float(f"{r:.3g}") for r in ratios]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = float(f"{out[i - 1] * MIN_STEP:.3g}")
    return tuple(out)
