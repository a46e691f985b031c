"""The forward contract shared by every architecture (see docs/architecture.md).

``model.train(); losses = model(images, targets)`` -> dict of scalar losses;
``model.eval(); outputs = model(images)`` -> one dict per image with ``boxes Tensor[K, 4]``,
``scores Tensor[K]``, ``probabilities Tensor[H, W]`` (foreground probability) and
``mask Tensor[H, W] uint8`` (``probabilities > 0.5``).

Here: validating inputs and targets (with messages that say what would work), padding to a
multiple of the network stride, and building the eval dicts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_images", "check_targets", "pad_to_multiple", "eval_outputs"]


def check_images(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is a float ``Tensor[N, 1, H, W]`` (or ``N, 3, H, W``:
    three neighbouring slices z-1, z, z+1 as VGG's three channels, the 2.5D input)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a float Tensor[N, 1, H, W] of grayscale slices in [0, 1]; got {shape}"
            " (add the channel axis with images[:, None])"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")


def check_targets(images: Tensor, targets: list[dict[str, Tensor]] | None) -> None:
    """Raise ValueError unless there is one target per image with ``boxes Tensor[K, 4]`` of
    positive width and height and ``masks Tensor[H, W]``."""
    if targets is None:
        raise ValueError(
            "training mode needs targets: model(images, targets); call model.eval() to predict"
        )
    if len(targets) != images.shape[0]:
        raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
    h, w = images.shape[-2:]
    for i, t in enumerate(targets):
        boxes, masks = t.get("boxes"), t.get("masks")
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                f"targets[{i}]['boxes'] must be Tensor[K, 4] (x1, y1, x2, y2), "
                f"K = 0 for a slice without object"
            )
        if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise ValueError(
                f"targets[{i}]['boxes'] has a box of zero width or height: {boxes.tolist()}; the "
                "tight box of a mask is (min_col, min_row, max_col + 1, max_row + 1)"
            )
        if not isinstance(masks, Tensor) or tuple(masks.shape) != (h, w):
            got = list(masks.shape) if isinstance(masks, Tensor) else masks
            raise ValueError(f"targets[{i}]['masks'] must be Tensor[{h}, {w}] of 0/1, got {got}")


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``Tensor[N, C, H, W]`` at the bottom/right to multiples of ``multiple``, so that
    every pixel of the slice is covered by whole feature cells (top-left alignment, which the
    geometry relies on, is unchanged)."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def eval_outputs(
    logits: Tensor,
    boxes: list[Tensor] | None = None,
    scores: list[Tensor] | None = None,
    region: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """Per-image eval dicts from ``logits Tensor[N, 2, H, W]``.

    ``region`` (``Tensor[N, H, W] bool``, the pixel union of the ROIs) zeroes the probability
    outside the ROIs; ``boxes``/``scores`` default to empty (baselines).
    """
    n = logits.shape[0]
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    if region is not None:
        prob = prob.masked_fill(~region, 0.0)
    outputs = []
    for i in range(n):
        b = boxes[i] if boxes is not None else logits.new_zeros((0, 4), dtype=torch.float32)
        s = scores[i] if scores is not None else logits.new_zeros((0,), dtype=torch.float32)
        outputs.append(
            {
                "boxes": b.float(),
                "scores": s.float(),
                "probabilities": prob[i],
                "mask": (prob[i] > 0.5).to(torch.uint8),
            }
        )
    return outputs
