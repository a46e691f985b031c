"""The ROI refinement head: exact against a full-grid reference, sparse == dense, zero outside the
ROIs, empty batches, geometry it refuses, and the model it makes trains and predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_model.backbone import VGG16Backbone
from src_model.config import ModelConfig, get_preset
from src_model.losses import seg_loss, soft_dice_loss
from src_model.model import RPNFCN, build_model
from src_model.refine_head import RoiRefineHead, refine_head_reference
from src_model.roi_conv import boxes_to_pixel_mask

from .conftest import gt_box, phantom_slice, tiny_config

DECODER = (8, 8, 4)


def _head_and_inputs(decoder=DECODER, n=2, size=(96, 80), seed=0):
    torch.manual_seed(seed)
    backbone = VGG16Backbone(width_divisor=16)
    head = RoiRefineHead(backbone.out_channels, backbone.geometry, backbone.skip_geometry(),
                         decoder, fc6_kernel=3, fc6_padding=1, fc6_channels=16,
                         fc7_channels=16, dropout=0.0)
    for p in head.parameters():  # the score starts at zero: give every layer a signal
        torch.nn.init.normal_(p, std=0.2)
    images = torch.rand(n, 1, *size)
    features, skips = backbone.forward_with_skips(images, head.skip_strides)
    return head, features, skips, size


ROIS = [
    [torch.tensor([[20.0, 30.0, 44.0, 41.0]]), torch.tensor([[50.0, 10.0, 70.0, 25.0]])],
    [torch.tensor([[3.0, 60.0, 15.0, 90.0], [40.0, 5.0, 52.0, 12.0]]), torch.zeros((0, 4))],
    [torch.tensor([[0.0, 0.0, 80.0, 96.0]]), torch.tensor([[60.0, 70.0, 80.0, 96.0]])],
]


@pytest.mark.parametrize("rois", ROIS)
@pytest.mark.parametrize("impl", ["dense", "sparse"])
@pytest.mark.parametrize("decoder", [DECODER, (8, 8, 8, 4)])  # ends at stride 2 (bilinear) / 1
def test_window_path_equals_the_full_grid_reference_with_gradients(rois, impl, decoder):
    head, features, skips, size = _head_and_inputs(decoder=decoder)
    head.roi_impl = impl  # the window path computes its bounds whatever the setting
    feats = features.detach().requires_grad_(True)
    skip_leaves = {s: t.detach().requires_grad_(True) for s, t in skips.items()}
    got = head(feats, size, rois, skip_leaves)
    want = refine_head_reference(head, feats, size, rois, skip_leaves)
    region = boxes_to_pixel_mask(rois, size)[:, None]
    # Inside the ROIs (where predictions and losses are read) the numbers are the reference's.
    torch.testing.assert_close(got * region, want * region, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(got) * region
    grads = torch.autograd.grad((got * g).sum(), [feats, *skip_leaves.values(),
                                                  *head.parameters()])
    ref = torch.autograd.grad((want * g).sum(), [feats, *skip_leaves.values(),
                                                 *head.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("rois", ROIS)
@pytest.mark.parametrize("decoder", [DECODER, (8, 8, 8, 4)])
def test_inference_path_equals_the_reference(rois, decoder):
    """Without gradients the stride-8 level runs as one GEMM instead of oneDNN's convolution:
    same numbers as the full grid inside the ROIs, and the same as the training path."""
    head, features, skips, size = _head_and_inputs(decoder=decoder)
    region = boxes_to_pixel_mask(rois, size)[:, None]
    with torch.no_grad():
        got = head(features, size, rois, skips)
        want = refine_head_reference(head, features, size, rois, skips)
    with torch.enable_grad():
        trained = head(features, size, rois, skips).detach()
    torch.testing.assert_close(got * region, want * region, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, trained, atol=1e-5, rtol=1e-4)


def test_window_path_equals_the_reference_on_a_padded_batch_with_boxes_on_the_image_edge():
    """Images of 90x75 padded to 96x80 (as the model pads a batch to the stride): boxes that
    reach the image's bottom/right edge and a corner, inside the image; same logits and
    gradients as the full grid where the ROIs are."""
    head, features, skips, _ = _head_and_inputs(size=(96, 80))
    size = (90, 75)
    rois = [torch.tensor([[60.0, 70.0, 75.0, 90.0]]),
            torch.tensor([[0.0, 80.0, 20.0, 90.0], [70.0, 0.0, 75.0, 30.0]])]
    feats = features.detach().requires_grad_(True)
    skip_leaves = {s: t.detach().requires_grad_(True) for s, t in skips.items()}
    got = head(feats, size, rois, skip_leaves)
    want = refine_head_reference(head, feats, size, rois, skip_leaves)
    assert got.shape[-2:] == want.shape[-2:] == size
    region = boxes_to_pixel_mask(rois, size)[:, None]
    torch.testing.assert_close(got * region, want * region, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(got) * region
    grads = torch.autograd.grad((got * g).sum(), [feats, *skip_leaves.values(),
                                                  *head.parameters()])
    ref = torch.autograd.grad((want * g).sum(), [feats, *skip_leaves.values(),
                                                 *head.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("rois", ROIS)
def test_window_path_same_numbers_when_the_cells_come_from_the_mask(rois, monkeypatch):
    """Windows bounded from the boxes' cell rectangles (a few CPU boxes) and from a scanned mask
    (many boxes, a GPU) give identical logits."""
    import src_model.roi_conv as rc

    head, features, skips, size = _head_and_inputs()
    with torch.no_grad():
        fast = head(features, size, rois, skips)
        monkeypatch.setattr(rc, "FEW_BOXES", 0)
        slow = head(features, size, rois, skips)
    assert torch.equal(fast, slow)


def test_logits_are_exactly_zero_outside_the_roi_cells_and_without_rois():
    head, features, skips, size = _head_and_inputs(decoder=(8, 8, 8, 4))  # ends at stride 1
    rois = [torch.tensor([[20.0, 30.0, 44.0, 41.0]]), torch.zeros((0, 4))]
    out = head(features, size, rois, skips)
    region = boxes_to_pixel_mask(rois, size)
    assert out.shape == (2, 2, *size)
    assert (out[:, :, ~region[0]][0] == 0).all() and (out[1] == 0).all()
    assert out[0][:, region[0]].abs().sum() > 0
    empty = head(features, size, [torch.zeros((0, 4))] * 2, skips)
    assert (empty == 0).all() and empty.requires_grad  # backward still works on an empty batch
    empty.sum().backward()


def test_the_paper_geometry_is_refused_with_what_would_work():
    backbone = VGG16Backbone(width_divisor=16, conv1_padding=50, ceil_mode=True)
    with pytest.raises(ValueError, match="conv1_padding=1"):
        RoiRefineHead(backbone.out_channels, backbone.geometry, backbone.skip_geometry(),
                      DECODER, fc6_kernel=7, fc6_padding=0)
    with pytest.raises(ValueError, match="decoder_channels"):
        get_preset("paper", arch="unet", decoder_channels=(8,))


def test_model_with_refine_head_trains_predicts_and_round_trips_its_config():
    torch.manual_seed(0)
    cfg = tiny_config(decoder_channels=DECODER, seg_loss="dice_ce")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg).train()
    assert isinstance(model, RPNFCN) and isinstance(model.head, RoiRefineHead)
    image, mask = phantom_slice(96, 80)
    targets = [{"boxes": gt_box(mask), "masks": torch.from_numpy(mask)},
               {"boxes": gt_box(np.zeros_like(mask)), "masks": torch.zeros_like(
                   torch.from_numpy(mask))}]
    losses = model(torch.from_numpy(np.stack([image] * 2))[:, None], targets)
    assert losses["loss_seg"] > 0
    sum(losses.values()).backward()
    # The classifier starts at zero (FCN's habit), so the first gradient lands on it alone.
    assert model.head.score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 67, 45), score_threshold=0.0, top_k=3)
    assert out[0]["probabilities"].shape == (67, 45) and out[0]["mask"].dtype == torch.uint8


def test_soft_dice_counts_the_region_only_and_is_zero_when_empty():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)  # foreground probability 0.5 everywhere
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[0, :2] = True  # 8 pixels, 4 of them foreground
    # 1 - (2 * 0.5 * 4 + 1) / (0.5 * 8 + 4 + 1) = 1 - 5 / 9
    assert soft_dice_loss(logits, masks, region).item() == pytest.approx(4 / 9)
    empty = soft_dice_loss(logits, masks, torch.zeros_like(region))
    assert empty.item() == 0.0
    empty.backward()
    both = seg_loss(logits, masks, region, "dice_ce")
    assert both.item() == pytest.approx(4 / 9 + np.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="seg_loss"):
        seg_loss(logits, masks, region, "focal")
