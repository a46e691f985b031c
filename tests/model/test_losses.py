"""Segmentation losses: the ROI-union cross-entropy counts each pixel once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src_model.losses import seg_loss_all_pixels, seg_loss_in_region
from src_model.roi_conv import boxes_to_pixel_mask


def test_region_loss_counts_overlapping_rois_once():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 6, requires_grad=True)
    masks = torch.randint(0, 2, (2, 8, 6))
    rois = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]]), torch.zeros((0, 4))]
    region = boxes_to_pixel_mask(rois, (8, 6))
    assert region[0].sum() == 16 + 16 - 4 and region[1].sum() == 0
    loss = seg_loss_in_region(logits, masks, region)
    per_pixel = F.cross_entropy(logits, masks, reduction="none")
    torch.testing.assert_close(loss, per_pixel[region].mean())
    loss.backward()
    assert torch.count_nonzero(logits.grad.abs().sum(1)[~region]) == 0


def test_empty_region_gives_zero_with_a_graph():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = seg_loss_in_region(
        logits, torch.zeros(1, 4, 4, dtype=torch.int64), torch.zeros(1, 4, 4, dtype=torch.bool)
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_all_pixels_and_shape_errors():
    logits = torch.randn(2, 2, 4, 4)
    masks = torch.randint(0, 2, (2, 4, 4))
    torch.testing.assert_close(seg_loss_all_pixels(logits, masks), F.cross_entropy(logits, masks))
    with pytest.raises(ValueError, match=r"Tensor\[N, H, W\]"):
        seg_loss_all_pixels(logits, masks[0])
    with pytest.raises(ValueError, match="region must be"):
        seg_loss_in_region(logits, masks, torch.ones(2, 4, 3, dtype=torch.bool))
