"""Segmentation losses (module-level functions that cope with empty targets).

The RPN losses (``loss_objectness``, ``loss_rpn_box_reg``) come from torchvision's
``RegionProposalNetwork``; the total is ``L = L_cls + L_reg + L_seg`` as in the paper.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["seg_loss", "seg_loss_all_pixels", "seg_loss_in_region", "soft_dice_loss"]


def _check(logits: Tensor, masks: Tensor) -> None:
    if logits.ndim != 4 or masks.shape != (logits.shape[0], *logits.shape[-2:]):
        raise ValueError(
            f"expected logits Tensor[N, C, H, W] and masks Tensor[N, H, W]; got "
            f"{list(logits.shape)} and {list(masks.shape)}"
        )


def seg_loss_in_region(logits: Tensor, masks: Tensor, region: Tensor) -> Tensor:
    """Pixel cross-entropy over the pixels inside ``region``, averaged over those pixels.

    The paper's L_seg: the region is the pixel-level union of the training ROIs on the full image,
    so a pixel covered by several ROIs counts once (unlike Mask R-CNN's per-ROI loss).

    Parameters
    ----------
    logits
        ``Tensor[N, C, H, W]`` class scores.
    masks
        ``Tensor[N, H, W]`` integer labels in ``[0, C)``.
    region
        ``Tensor[N, H, W] bool``.

    Returns
    -------
    Scalar tensor; exactly 0 (still attached to ``logits``' graph, so ``backward`` works and
    yields zero gradients) when the region is empty, e.g. a batch of slices without the object.
    """
    _check(logits, masks)
    if region.shape != masks.shape:
        raise ValueError(f"region must be Tensor{list(masks.shape)} bool, got {list(region.shape)}")
    per_pixel = F.cross_entropy(logits, masks.long(), reduction="none")  # [N, H, W]
    total = per_pixel.masked_fill(~region, 0.0).sum()
    count = region.sum().to(total.dtype)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # DDP averages gradients over processes. Dividing by the mean count over processes (not
        # this process's own) makes that average equal to one process dividing by the count of
        # the whole global batch, so N processes train exactly like one.
        count = count.detach().clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    # clamp: 0 / 1 instead of 0 / 0 when the region is empty.
    return total / count.clamp(min=1)


def seg_loss_all_pixels(logits: Tensor, masks: Tensor) -> Tensor:
    """Mean pixel cross-entropy over every pixel (FCN-32s, FCN-noPool5, U-Net).

    ``logits Tensor[N, C, H, W]``, ``masks Tensor[N, H, W]`` integer labels -> scalar tensor.
    """
    _check(logits, masks)
    return F.cross_entropy(logits, masks.long())


def soft_dice_loss(logits: Tensor, masks: Tensor, region: Tensor | None = None,
                   smooth: float = 1.0) -> Tensor:
    """1 - soft Dice of the foreground class, pooled over every pixel of ``region`` in the batch.

    Pooling over the batch (not a mean of per-slice Dice) keeps slices whose region holds no
    foreground from dominating: they add only their predicted foreground to the denominator.
    ``smooth`` makes an empty region (no ROIs, no object) cost exactly 0. Under DDP the three
    sums are reduced over the processes, so N processes train exactly like one.

    ``logits Tensor[N, 2, H, W]``, ``masks Tensor[N, H, W]`` 0/1, ``region Tensor[N, H, W] bool``
    or None (all pixels) -> scalar tensor attached to ``logits``' graph.
    """
    _check(logits, masks)
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    truth = masks.to(prob.dtype)
    if region is not None:
        inside = region.to(prob.dtype)
        prob, truth = prob * inside, truth * inside
    sums = torch.stack([(prob * truth).sum(), prob.sum(), truth.sum()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Every process computes the Dice of the global batch. The differentiable all_reduce's
        # backward sums dL/dS over the W processes (W equal copies), and DDP's gradient average
        # divides by W again: exactly one process's gradient on the whole batch.
        from torch.distributed.nn.functional import all_reduce

        sums = all_reduce(sums)
    inter, predicted, true = sums.unbind()
    return 1.0 - (2.0 * inter + smooth) / (predicted + true + smooth)


def seg_loss(logits: Tensor, masks: Tensor, region: Tensor | None, kind: str = "ce") -> Tensor:
    """The configured segmentation loss (``ModelConfig.seg_loss``): "ce" is the paper's
    cross-entropy (over ``region``, or all pixels when it is None); "dice_ce" adds
    :func:`soft_dice_loss` over the same pixels."""
    ce = seg_loss_all_pixels(logits, masks) if region is None else seg_loss_in_region(
        logits, masks, region)
    if kind == "ce":
        return ce
    if kind == "dice_ce":
        return ce + soft_dice_loss(logits, masks, region)
    raise ValueError(f"unknown seg_loss {kind!r}: use 'ce' or 'dice_ce'")
