"""Resolution matching: the rule (model_size, reference_of) and the mapping back of results."""

from __future__ import annotations

import numpy as np
import pytest

from src_model.config import get_preset
from src_model.resolution import (check_spacing, model_size, reference_of, resample_pair,
                                  resize_masks, results_to_input)

MM = get_preset("fast").replace(pixel_spacing_mm=0.15)
FRAME = get_preset("fast").replace(frame_height_px=384)
NONE = get_preset("fast")


def test_known_spacing_is_matched_per_axis():
    assert model_size(MM, (10, 734, 384), (0.2, 0.075, 0.075)) == (367, 192)
    assert model_size(MM, (600, 400), (0.1, 0.3)) == (400, 800)  # anisotropic -> square
    assert model_size(MM, (600, 400), 0.3) == (1200, 800)


def test_small_changes_and_unknowns_leave_the_size():
    assert model_size(MM, (367, 192), 0.152) == (367, 192)  # within the 5 % tolerance
    assert model_size(MM, (367, 192), None) == (367, 192)  # unknown, no frame reference
    assert model_size(NONE, (367, 192), 0.3) == (367, 192)  # the model has no reference


def test_unknown_spacing_falls_back_on_the_frame_height():
    assert model_size(FRAME, (426, 600), None) == (384, 541)
    assert model_size(FRAME, (390, 512), None) == (390, 512)  # 1.5 %: unchanged


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), (0.1, float("inf")), ()])
def test_bad_spacing_is_refused(bad):
    with pytest.raises(ValueError, match="spacing"):
        check_spacing(bad)


def test_reference_kept_from_the_parent_or_taken_from_the_data():
    assert reference_of(MM, (300, 200), 0.1) == {"pixel_spacing_mm": 0.15, "frame_height_px": None}
    # parent in mm, data of unknown size: the new model's reference is the frames it saw
    assert reference_of(MM, (384, 512), None) == {"pixel_spacing_mm": None, "frame_height_px": 384}
    assert reference_of(NONE, (300, 200), (1, 0.2, 0.2)) == {"pixel_spacing_mm": 0.2,
                                                             "frame_height_px": None}
    assert reference_of(NONE, (300, 200), None) == {"pixel_spacing_mm": None,
                                                    "frame_height_px": 300}
    assert reference_of(FRAME, (426, 600), None) == {"pixel_spacing_mm": None,
                                                     "frame_height_px": 384}


def test_results_come_back_at_the_input_size():
    mask = np.zeros((50, 40), np.uint8)
    mask[10:20, 8:30] = 1
    result = {"boxes": np.array([[8, 10, 30, 20]], np.float32), "scores": np.ones(1, np.float32),
              "mask": mask, "probabilities": mask.astype(np.float32)}
    (back,) = results_to_input([result], (100, 80))
    np.testing.assert_allclose(back["boxes"], [[16, 20, 60, 40]])
    assert back["mask"].shape == back["probabilities"].shape == (100, 80)
    np.testing.assert_array_equal(back["mask"], np.kron(mask, np.ones((2, 2), np.uint8)))
    assert back["scores"] is result["scores"]


def test_resampled_pairs_keep_the_label_area():
    volume = np.random.default_rng(0).integers(0, 255, (3, 200, 120)).astype(np.uint8)
    labels = np.zeros_like(volume)
    labels[:, 50:90, 30:70] = 1
    vol, lab = resample_pair(volume, labels, (100, 60))
    assert vol.dtype == np.uint8 and vol.shape == lab.shape == (3, 100, 60)
    assert lab.sum() == pytest.approx(labels.sum() / 4, rel=0.05)
    assert resize_masks(labels, (200, 120)).sum() == labels.sum()


def test_float_volumes_are_normalised_before_resampling():
    volume = np.linspace(0, 4000, 2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    vol, _ = resample_pair(volume, np.zeros(volume.shape, np.uint8), (32, 32))
    assert vol.dtype == np.uint8 and vol.max() >= 250 and vol.min() <= 5


def test_the_status_line_says_what_was_resampled():
    from src_model.resolution import describe

    assert describe(MM, (4, 734, 384), 0.075) == (
        "resampled 734x384 -> 367x192 (0.075 mm pixels to the model's 0.15 mm)")
    assert describe(FRAME, (426, 600), None).startswith("resampled 426x600 -> 384x541 (pixel size")
    assert describe(MM, (367, 192), 0.15) == "" == describe(NONE, (10, 10), 1.0)
