"""ModelConfig, presets and the builder's parameter budgets."""

from __future__ import annotations

import json

import pytest

from src_model.config import ARCHS, PRESETS, ModelConfig, get_preset
from src_model.model import build_model, count_parameters


def test_round_trip_through_json():
    for name in PRESETS:
        cfg = get_preset(name)
        back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and isinstance(back.anchor_sizes, tuple)


def test_unknown_keys_are_listed():
    data = {**get_preset("fast").to_dict(), "colour": "red", "achors": [1]}
    with pytest.raises(ValueError, match="unknown ModelConfig keys: achors, colour"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown ModelConfig keys: widht_divisor"):
        get_preset("fast", widht_divisor=2)


def test_missing_keys_take_defaults_and_invalid_values_are_refused():
    assert ModelConfig.from_dict({"arch": "unet"}).arch == "unet"
    with pytest.raises(ValueError, match="arch 'rpn' is not one of"):
        ModelConfig(arch="rpn")
    with pytest.raises(ValueError, match="width_divisor 3 must divide 64"):
        get_preset("fast", width_divisor=3)
    with pytest.raises(ValueError, match="rpn_bg_iou_thresh"):
        get_preset("fast", rpn_bg_iou_thresh=0.8)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_presets_are_the_papers_and_a_small_one():
    paper, fast = get_preset("paper"), get_preset("fast")
    assert (paper.width_divisor, paper.conv1_padding, paper.ceil_mode) == (1, 50, True)
    assert (paper.fc6_kernel, paper.fc6_padding, paper.fc6_channels, paper.fc7_channels) == (
        7,
        0,
        4096,
        4096,
    )
    assert paper.anchor_sizes == (128, 256, 512) and paper.aspect_ratios == (0.5, 1.0, 2.0)
    assert (paper.rpn_fg_iou_thresh, paper.rpn_bg_iou_thresh, paper.rpn_nms_thresh) == (
        0.7,
        0.3,
        0.7,
    )
    assert (paper.rpn_batch_size_per_image, paper.rpn_positive_fraction) == (256, 0.5)
    assert (paper.rpn_pre_nms_top_n_train, paper.rpn_pre_nms_top_n_test) == (12000, 6000)
    assert (paper.rpn_post_nms_top_n_train, paper.rpn_post_nms_top_n_test) == (2000, 300)
    assert (paper.roi_iou_thresh, paper.roi_batch_size_per_image) == (0.5, 50)
    assert fast.width_divisor == 4 and fast.anchor_sizes == (16, 32, 64)
    assert get_preset("fast", arch="unet").arch == "unet"
    assert set(ARCHS) == {"rpn_fcn", "fcn32s", "fcn_nopool5", "unet"}


def test_fast_preset_parameter_budget():
    # The shipped default checkpoint must stay < ~20 MB (float32): about <= 3.2 M parameters
    # (the refinement decoder adds 0.26 M to the paper head's 2.75 M).
    n = count_parameters(build_model(get_preset("fast")))
    assert 2_000_000 < n <= 3_200_000
