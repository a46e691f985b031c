"""Anchors fitted to labelled boxes: ranges, the height/width convention, counts that keep every
RPN weight, config round trips, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from src_model.anchor_fit import (
    REFIT_BELOW_IOU,
    adapt_config_anchors,
    anchor_shape_iou,
    MIN_SIZE,
    MIN_STEP,
    boxes_from_labels,
    fit_anchors,
    fit_config_anchors,
)
from src_model.config import ModelConfig, get_preset
from src_model.model import build_model
from src_model.rpn import GridAnchorGenerator


def _boxes(widths, heights, x0=20.0, y0=30.0) -> np.ndarray:
    w, h = np.asarray(widths, float), np.asarray(heights, float)
    return np.stack([np.full_like(w, x0), np.full_like(h, y0), x0 + w, y0 + h], axis=1)


def _is_increasing(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def test_phantom_like_boxes_give_sizes_in_their_range():
    rng = np.random.default_rng(0)
    w, h = rng.uniform(10, 60, 200), rng.uniform(10, 60, 200)
    sizes, ratios = fit_anchors(_boxes(w, h), 3, 3)
    assert len(sizes) == 3 and len(ratios) == 3
    assert all(isinstance(s, int) for s in sizes) and _is_increasing(sizes)
    assert 10 <= sizes[0] and sizes[-1] <= 60
    assert sizes[0] < np.median(np.sqrt(w * h)) < sizes[-1]  # spread over the distribution
    assert _is_increasing(ratios) and ratios[0] < 1 < ratios[-1]


def test_ilium_roof_bands_give_sizes_near_their_area_and_ratios_near_their_shape():
    rng = np.random.default_rng(1)
    w, h = rng.normal(150, 12, 300), rng.normal(55, 5, 300)
    sizes, ratios = fit_anchors(_boxes(w, h), 3, 3)
    side = np.sqrt(150 * 55)  # 90.8 px
    assert sizes[1] == pytest.approx(side, rel=0.05)
    assert side / 1.4 < sizes[0] < side < sizes[-1] < side * 1.4
    assert ratios[1] == pytest.approx(55 / 150, rel=0.05)
    assert all(0.25 < r < 0.55 for r in ratios)


def test_ratio_is_height_over_width_as_torchvisions_anchor_generator_builds_it():
    boxes = _boxes([150.0] * 5, [50.0] * 5)
    sizes, ratios = fit_anchors(boxes, 1, 1)
    assert ratios == (pytest.approx(1 / 3, rel=0.01),) and sizes == (87,)
    config = get_preset("fast")
    model = build_model(config.replace(anchor_sizes=sizes, aspect_ratios=ratios))
    gen = model.rpn.anchor_generator
    assert isinstance(gen, GridAnchorGenerator)
    image = torch.zeros(1, 3, 64, 64)
    anchors = gen(ImageList(image, [(64, 64)]), [torch.zeros(1, 1, 4, 4)])[0]
    aw, ah = anchors[0, 2] - anchors[0, 0], anchors[0, 3] - anchors[0, 1]
    assert (float(aw), float(ah)) == pytest.approx((150, 50), abs=2)  # wide, like the boxes


def test_identical_or_few_boxes_still_give_distinct_sorted_values():
    one = _boxes([150.0], [55.0])
    sizes, ratios = fit_anchors(one, 3, 3)
    assert _is_increasing(sizes) and _is_increasing(ratios)
    # pushed apart by MIN_STEP around the box itself
    assert sizes[1] == round(np.sqrt(150 * 55))
    assert ratios[1] == pytest.approx(55 / 150, rel=0.01)
    assert sizes[2] / sizes[1] == pytest.approx(MIN_STEP, rel=0.02)
    assert ratios[2] / ratios[1] == pytest.approx(MIN_STEP, rel=0.02)
    tiny = _boxes([2.0, 3.0], [2.0, 3.0])
    sizes, _ = fit_anchors(tiny, 3, 3)
    assert sizes[0] >= MIN_SIZE and _is_increasing(sizes)
    sizes, ratios = fit_anchors(_boxes([30.0] * 4, [20.0] * 4), 5, 4)
    assert len(sizes) == 5 and len(ratios) == 4
    assert _is_increasing(sizes) and _is_increasing(ratios)


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_fitted_counts_keep_every_rpn_weight(preset):
    old_config = get_preset(preset)
    boxes = _boxes(np.linspace(120, 180, 20), np.linspace(45, 65, 20)[::-1])
    new_config = fit_config_anchors(old_config, boxes)
    assert len(new_config.anchor_sizes) == len(old_config.anchor_sizes)
    assert len(new_config.aspect_ratios) == len(old_config.aspect_ratios)
    assert new_config.anchor_sizes != old_config.anchor_sizes
    assert new_config.replace(anchor_sizes=old_config.anchor_sizes,
                              aspect_ratios=old_config.aspect_ratios) == old_config
    if preset == "paper":  # build the small one only: 138 M parameters would be slow here
        return
    old, new = build_model(old_config), build_model(new_config)
    new.load_state_dict(old.state_dict(), strict=True)
    for name, tensor in old.rpn.state_dict().items():
        assert torch.equal(new.rpn.state_dict()[name], tensor), name
    # the check has teeth: one ratio fewer changes the head's shapes
    fewer = build_model(old_config.replace(aspect_ratios=(0.5, 1.0)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        fewer.load_state_dict(old.state_dict(), strict=True)


def test_fitted_anchors_survive_the_config_json_round_trip():
    boxes = _boxes([150.0, 140.0, 170.0], [55.0, 50.0, 60.0])
    config = fit_config_anchors(get_preset("fast"), boxes)
    back = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert back.anchor_sizes == config.anchor_sizes and back.aspect_ratios == config.aspect_ratios


def test_boxes_from_labels_one_box_per_labelled_slice():
    labels = np.zeros((4, 40, 50), np.uint8)
    labels[1, 5:10, 7:20] = 1
    labels[3, 30:31, 0:50] = 2
    labels[3, 12, 3] = 1
    boxes = boxes_from_labels(labels)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[7, 5, 20, 10], [0, 12, 50, 31]])
    np.testing.assert_array_equal(boxes_from_labels(labels[1]), [[7, 5, 20, 10]])
    assert boxes_from_labels(np.zeros((3, 8, 8))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        boxes_from_labels(np.zeros((2, 2, 8, 8)))


def test_phantom_v2_labels_feed_the_fit():
    from sample_data.phantom_v2 import make_phantom_v2

    ph = make_phantom_v2(4, n_slices=6, label="ilium_roof", shape=(256, 256))
    boxes = boxes_from_labels(ph.labels)
    sizes, ratios = fit_anchors(boxes, 3, 3)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.sqrt(w * h)
    assert side.min() / MIN_STEP <= sizes[0] and sizes[-1] <= side.max() * MIN_STEP


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        (np.zeros((0, 4)), "no boxes"),
        (np.zeros((3, 5)), r"\[K, 4\]"),
        (_boxes([10.0, 0.0], [10.0, 5.0]), "degenerate"),
        (np.array([[5.0, 5.0, 3.0, 9.0]]), "x2 > x1"),
        (np.array([[0.0, 0.0, np.nan, 9.0]]), "degenerate"),
    ],
)
def test_empty_or_degenerate_boxes_are_refused_with_a_reason(boxes, match):
    with pytest.raises(ValueError, match=match):
        fit_anchors(boxes, 3, 3)


def test_counts_must_be_positive():
    with pytest.raises(ValueError, match="n_sizes"):
        fit_anchors(_boxes([10.0], [10.0]), 0, 3)


def test_shape_iou_is_one_for_an_anchor_and_falls_with_size_mismatch():
    cfg = get_preset("fast")  # 16/32/64 px x ratios 0.5/1/2
    exact = np.array([[0.0, 0.0, 32.0, 32.0]])
    double = np.array([[0.0, 0.0, 256.0, 256.0]])  # 4x the largest anchor's side
    assert anchor_shape_iou(cfg, exact)[0] == pytest.approx(1.0)
    assert anchor_shape_iou(cfg, double)[0] == pytest.approx(64 * 64 / 256 ** 2)


def test_adapt_keeps_anchors_that_match_and_refits_ones_that_do_not():
    from sample_data.phantom import make_phantom

    cfg = get_preset("fast")
    phantom_boxes = boxes_from_labels(make_phantom(3, 32).labels)
    kept, info = adapt_config_anchors(cfg, phantom_boxes)
    assert kept is cfg and not info["refit"] and info["median_iou_before"] >= REFIT_BELOW_IOU
    heads = np.array([[40.0, 30.0, 200.0, 180.0], [60.0, 20.0, 230.0, 200.0],
                      [30.0, 50.0, 180.0, 190.0]])  # 150-190 px objects (HC18-like heads)
    fitted, info = adapt_config_anchors(cfg, heads)
    assert info["refit"] and info["median_iou_after"] > 0.8 > info["median_iou_before"]
    assert len(fitted.anchor_sizes) == 3 and min(fitted.anchor_sizes) > 100
    forced, info = adapt_config_anchors(cfg, phantom_boxes, always=True)
    assert forced.anchor_sizes != cfg.anchor_sizes or not info["refit"]
