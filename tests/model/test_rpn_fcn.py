"""RPN-FCN: forward contract, empty targets, ROI selection, masking, anchors, and an overfit run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from src_model.model import RPNFCN, build_model, grow_boxes
from src_model.roi_conv import boxes_to_pixel_mask
from src_model.rpn import select_test_rois, select_training_rois

from .conftest import gt_box, phantom_slice, tiny_config


def _targets(masks: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": gt_box(m), "masks": torch.from_numpy(m)} for m in masks]


def _two_slices(h: int = 96, w: int = 64):
    mask = np.zeros((h, w), dtype=np.int64)
    mask[40:52, 20:38] = 1
    return torch.rand(2, 1, h, w), _targets([mask, np.zeros_like(mask)])


def test_train_returns_the_three_losses_and_backprops():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    assert isinstance(model, RPNFCN) and model.config.arch == "rpn_fcn"
    images, targets = _two_slices()
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_seg"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_seg"] > 0
    sum(losses.values()).backward()
    assert (
        model.head.fc6.weight.grad is not None
        and model.backbone.features[0].weight.grad.abs().sum() > 0
    )


def test_train_without_any_object_has_zero_seg_loss_and_a_valid_graph():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    images = torch.rand(2, 1, 96, 64)
    empty = np.zeros((96, 64), dtype=np.int64)
    losses = model(images, _targets([empty, empty]))
    assert losses["loss_seg"].item() == 0.0 and losses["loss_seg"].requires_grad
    sum(losses.values()).backward()
    assert model.head.fc6.weight.grad.abs().sum() == 0  # no ROI: nothing reaches the ROI conv
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0  # negatives still train the RPN


@pytest.mark.parametrize("size", [(96, 64), (67, 45)])
def test_eval_contract(size):
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 1, *size))
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"boxes", "scores", "probabilities", "mask"}
        k = out["boxes"].shape[0]
        assert out["boxes"].shape == (k, 4) and out["scores"].shape == (k,)
        assert 0 < k <= model.config.rpn_post_nms_top_n_test
        assert out["probabilities"].shape == size and out["probabilities"].dtype == torch.float32
        assert out["mask"].shape == size and out["mask"].dtype == torch.uint8
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()  # best first
        outside = ~boxes_to_pixel_mask([out["boxes"]], size)[0]
        assert torch.count_nonzero(out["probabilities"][outside]) == 0


def test_eval_overrides_and_no_rois_give_an_empty_mask():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x = torch.rand(1, 1, 96, 64)
    with torch.no_grad():
        assert model(x, top_k=3)[0]["boxes"].shape == (3, 4)
        out = model(x, score_threshold=1.01)[0]  # nothing passes
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["mask"].sum() == 0 and out["probabilities"].abs().sum() == 0
    cfg_model = build_model(tiny_config(test_top_k=2)).eval()
    with torch.no_grad():
        assert cfg_model(x)[0]["boxes"].shape == (2, 4)
        assert cfg_model(x, top_k=5)[0]["boxes"].shape == (5, 4)


def test_test_roi_margin_grows_the_mask_region_but_not_the_boxes_shown():
    torch.manual_seed(0)
    model = build_model(tiny_config(test_top_k=2, dropout=0.0)).eval()
    with torch.no_grad():
        model.head.score.bias.copy_(torch.tensor([0.0, 1.0]))  # foreground wherever computed
    x = torch.rand(1, 1, 96, 64)
    with torch.no_grad():
        plain = model(x)[0]
        model.config = model.config.replace(test_roi_margin=6)
        grown = model(x)[0]
    torch.testing.assert_close(grown["boxes"], plain["boxes"])  # the RPN's boxes, unchanged
    assert grown["mask"].sum() > plain["mask"].sum()
    region = boxes_to_pixel_mask(grow_boxes([plain["boxes"]], 6, (96, 64)), (96, 64))[0]
    assert torch.equal(grown["mask"].bool(), region)  # exactly the grown boxes, clipped


def test_grow_boxes_clips_to_the_image_and_keeps_zero_margin_identical():
    boxes = [torch.tensor([[2.0, 3.0, 60.0, 90.0]])]
    assert grow_boxes(boxes, 0, (96, 64)) is boxes
    torch.testing.assert_close(grow_boxes(boxes, 5, (96, 64))[0],
                               torch.tensor([[0.0, 0.0, 64.0, 95.0]]))
    with pytest.raises(ValueError, match="test_roi_margin"):
        tiny_config(test_roi_margin=-1)


def test_scores_are_exactly_zero_outside_roi_cells_and_aligned_inside():
    """With the score bias forced to favour foreground, every pixel inside the ROI gets a positive
    foreground logit (the cells cover it), and pixels farther than one cell from the ROI cells get
    exactly 0 (no bias leaks through fc6/fc7/score)."""
    model = build_model(tiny_config(dropout=0.0)).eval()
    with torch.no_grad():
        model.head.score.bias.copy_(torch.tensor([0.0, 1.0]))
        features = model.backbone(torch.rand(1, 1, 96, 64))
        roi = torch.tensor([[21.0, 37.0, 30.0, 44.0]])
        logits = model.head(features, (96, 64), [roi])
    fg = logits[0, 1]
    inside = boxes_to_pixel_mask([roi], (96, 64))[0]
    assert (fg[inside] > 0).all()
    # Active cells (geometry 16, 8): rows 2 (32..47), cols 1 (16..31); kernel reach 16 px more.
    near = torch.zeros(96, 64, dtype=torch.bool)
    near[32 - 16 : 48 + 16, 16 - 16 : 32 + 16] = True
    assert torch.count_nonzero(logits[0][:, ~near]) == 0


def test_anchors_sit_on_cell_centres():
    model = build_model(tiny_config())
    features = torch.zeros(1, model.backbone.out_channels, 6, 4)
    images = ImageList(torch.zeros(1, 1, 96, 64), [(96, 64)])
    anchors = model.rpn.anchor_generator(images, [features])[0]
    a = len(model.config.anchor_sizes) * len(model.config.aspect_ratios)
    assert anchors.shape == (6 * 4 * a, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    cell = torch.arange(6 * 4).repeat_interleave(a)
    expected = torch.stack([8.0 + 16.0 * (cell % 4), 8.0 + 16.0 * (cell // 4)], dim=1)
    torch.testing.assert_close(centres, expected)
    sides = (anchors[:a, 2:] - anchors[:a, :2]).prod(1).sqrt()
    torch.testing.assert_close(sides, torch.tensor([16.0, 32, 64] * 3), rtol=0.05, atol=0)


def test_training_roi_selection():
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    near = gt + torch.randn(80, 4, generator=g) * 1.5  # IoU >= 0.5
    far = torch.tensor([[60.0, 60.0, 90.0, 90.0], [0.0, 0.0, 12.0, 12.0]])
    rois = select_training_rois(
        [torch.cat([far, near]), far, near],
        [gt, gt, torch.zeros(0, 4)],
        iou_thresh=0.5,
        max_rois=50,
        generator=g,
    )
    assert rois[0].shape == (50, 4) and torch.equal(rois[0][0], gt[0])  # capped, GT first
    assert rois[1].shape == (1, 4)  # no proposal passes: the GT box alone
    assert rois[2].shape == (0, 4)  # no object, no ROI
    assert not any((rois[0][1:] == f).all(1).any() for f in far)


def test_test_roi_selection():
    boxes = torch.arange(20.0).view(5, 4)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1])
    b, s = select_test_rois([boxes], [scores])
    assert s[0].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.2, 0.1]) and b[0].shape == (5, 4)
    b, s = select_test_rois([boxes], [scores], score_threshold=0.5, top_k=2)
    assert s[0].tolist() == pytest.approx([0.9, 0.7]) and torch.equal(b[0], boxes[[1, 3]])


def test_single_object_keeps_only_the_boxes_overlapping_the_best_one():
    boxes = torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10], [5, 5, 15, 15], [10, 10, 20, 20]])
    scores = torch.tensor([0.6, 0.9, 0.8, 0.7])  # the best is [0, 0, 10, 10]
    b, s = select_test_rois([boxes, boxes[:0]], [scores, scores[:0]], single_object=True)
    # [5, 5, 15, 15] overlaps it; [10, 10, 20, 20] only touches its corner; the far box goes
    assert torch.equal(b[0], boxes[[1, 2]]) and s[0].tolist() == pytest.approx([0.9, 0.8])
    assert b[1].shape == (0, 4)
    b, _ = select_test_rois([boxes], [scores], score_threshold=0.85, single_object=True)
    assert torch.equal(b[0], boxes[[1]])


def test_invalid_inputs_are_clear_errors():
    model = build_model(tiny_config()).train()
    mask = np.zeros((96, 64), dtype=np.int64)
    with pytest.raises(ValueError, match="needs targets"):
        model(torch.rand(1, 1, 96, 64))
    with pytest.raises(ValueError, match=r"Tensor\[N, 1, H, W\]"):
        model(torch.rand(1, 96, 64), _targets([mask]))
    with pytest.raises(ValueError, match=r"Tensor\[N, 1, H, W\]"):
        model(torch.rand(1, 2, 96, 64), _targets([mask]))
    # Three channels are three neighbouring slices (the 2.5D input): accepted.
    assert set(model(torch.rand(1, 3, 96, 64), _targets([mask]))) >= {"loss_seg"}
    bad = [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "masks": torch.from_numpy(mask)}]
    with pytest.raises(ValueError, match="max_col \\+ 1"):
        model(torch.rand(1, 1, 96, 64), bad)
    with pytest.raises(ValueError, match=r"masks'\] must be Tensor\[96, 64\]"):
        model(torch.rand(1, 1, 96, 64), [{"boxes": torch.zeros(0, 4), "masks": torch.zeros(5)}])


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def test_tiny_rpn_fcn_overfits_one_phantom_slice():
    """Detection + ROI-conv segmentation learn one synthetic slice: the best proposal finds the
    object and the head segments it (dice > 0.9) within a bounded number of Adam steps.

    Only the best-scoring ROI is used for the dice: the head is trained inside IoU >= 0.5 ROIs only
    (the paper's rule), so with all 50 proposals of a one-slice training run the union would cover
    pixels the head has never been trained on.
    """
    torch.manual_seed(0)
    image, mask = phantom_slice(128, 96, seed=0)
    model = build_model(tiny_config(fc6_channels=32, fc7_channels=32, dropout=0.0))
    x = torch.from_numpy(image)[None, None]
    targets = _targets([mask])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    best = 0.0
    for step in range(1, 501):  # seeds 0-2 need 125-200 steps (~10 ms each on an idle 2-core CPU)
        model.train()
        losses = model(x, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                out = model(x, top_k=1)[0]
            best = max(best, _dice(out["mask"].numpy().astype(bool), mask.astype(bool)))
            if best > 0.9:
                break
    assert best > 0.9, f"dice {best:.3f} after {step} steps"


def _proposals(n_boxes: int, clustered: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_boxes`` random boxes on a 384 x 512 image with logits; the best ``clustered`` are near
    copies of 5 boxes (nearly all suppressed), the rest spread out (nearly all kept)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n_boxes, 2, generator=g) * torch.tensor([480.0, 352.0])
    wh = 8 + torch.rand(n_boxes, 2, generator=g) * 40
    if clustered:
        centres = xy[torch.randint(0, 5, (clustered,), generator=g)]
        xy[:clustered] = centres[:clustered] + torch.rand(clustered, 2, generator=g)
        wh[:clustered] = 30
    logits = torch.randn(n_boxes, generator=g)
    if clustered:
        logits[:clustered] += 10
    return torch.cat([xy, xy + wh], 1), logits


@pytest.mark.parametrize("training, threshold", [(True, 0.0), (False, 0.0), (False, 0.9)])
def test_prefix_nms_keeps_exactly_what_torchvision_keeps(training, threshold):
    from torchvision.models.detection.rpn import RegionProposalNetwork

    model = build_model(tiny_config(rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=500,
                                    rpn_pre_nms_top_n_test=3000, rpn_post_nms_top_n_test=100))
    rpn = model.rpn.train(training)
    rpn.score_thresh = threshold  # 0.9: image 1's prefix stops doubling once it reaches below
    # image 0 keeps enough from the first prefix; image 1's best 1500 collapse to 5 boxes, so
    # its prefix doubles until it holds 500 survivors; image 2 runs out of boxes (all of them)
    pairs = [_proposals(4000, 0, 1), _proposals(4000, 1500, 2), _proposals(4000, 3990, 3)]
    proposals = torch.stack([p for p, _ in pairs])
    objectness = torch.stack([o for _, o in pairs]).reshape(-1, 1)
    shapes = [(384, 512)] * 3
    got_boxes, got_scores = rpn.filter_proposals(proposals, objectness, shapes, [4000])
    ref_boxes, ref_scores = RegionProposalNetwork.filter_proposals(
        rpn, proposals, objectness, shapes, [4000])
    post = rpn.post_nms_top_n()
    if threshold == 0.0:
        assert [len(b) for b in ref_boxes][:2] == [post, post] and len(ref_boxes[2]) < post
    else:
        assert len(ref_boxes[1]) < post  # the threshold, not NMS, ends image 1's list
    for g, r, gs, rs in zip(got_boxes, ref_boxes, got_scores, ref_scores):
        assert torch.equal(g, r) and torch.equal(gs, rs)


def test_prefix_nms_on_the_models_own_proposals_is_torchvisions():
    from torchvision.models.detection.rpn import RegionProposalNetwork

    torch.manual_seed(0)
    model = build_model(tiny_config(rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=300))
    model.train()
    seen = {}

    def keep_inputs(proposals, objectness, shapes, levels):
        seen["args"] = (proposals, objectness, shapes, levels)
        return type(model.rpn).filter_proposals(model.rpn, proposals, objectness, shapes, levels)

    model.rpn.filter_proposals = keep_inputs
    images, targets = _two_slices(256, 192)
    model(images, targets)
    got = type(model.rpn).filter_proposals(model.rpn, *seen["args"])
    ref = RegionProposalNetwork.filter_proposals(model.rpn, *seen["args"])
    assert seen["args"][0].shape[1] > 2 * 300  # the prefix path ran
    for g, gs, r, rs in zip(*got, *ref):
        assert torch.equal(gs, rs)  # same scores in the same order; boxes of equal score
        assert torch.equal(_by_score_then_box(g, gs), _by_score_then_box(r, rs))  # any order


def _by_score_then_box(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    rows = torch.cat([scores[:, None].double(), boxes.double()], 1).numpy()
    return torch.from_numpy(rows[np.lexsort(rows.T[::-1])])
