"""Segmentation losses (module-level functions that cope with empty targets).

The RPN losses (``loss_objectness``, ``loss_rpn_box_reg``) come from torchvision's
``RegionProposalNetwork``; the total is ``L = L_cls + L_reg + L_seg`` as in the paper.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["seg_loss_all_pixels", "seg_loss_in_region"]


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
