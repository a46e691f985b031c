"""normalize_slices: any numeric 2-D/3-D array -> float32 in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from src_model.preprocess import normalize_slices


def test_uint8_is_divided_by_255():
    arr = np.array([[0, 51, 255]], dtype=np.uint8)
    out = normalize_slices(arr)
    assert out.dtype == np.float32 and np.allclose(out, [[0.0, 0.2, 1.0]])


def test_bool_and_constant():
    assert normalize_slices(np.eye(3, dtype=bool)).tolist() == np.eye(3).tolist()
    assert not normalize_slices(np.full((2, 4, 4), 7.5)).any()
    assert not normalize_slices(np.full((4, 4), 300, dtype=np.uint16)).any()


def test_robust_range_over_the_whole_volume():
    rng = np.random.default_rng(0)
    vol = rng.normal(1000.0, 50.0, size=(3, 40, 40)).astype(np.float64)
    vol[1] += 200.0  # a brighter slice keeps its relative brightness
    vol[0, 0, 0] = 1e6  # one hot pixel must not squash the contrast
    out = normalize_slices(vol)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[1].mean() > out[0].mean() + 0.2
    assert out[0, 0, 0] == 1.0 and 0.05 < np.median(out[0]) < 0.6


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32])
def test_other_dtypes(dtype):
    arr = (np.arange(100).reshape(10, 10) * 3).astype(dtype)
    out = normalize_slices(arr)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert out[0, 0] == 0.0 and out[-1, -1] == 1.0


def test_errors_say_what_would_work():
    with pytest.raises(ValueError, match=r"\(H, W\).*\(N, H, W\).*shape \(2, 3, 4, 5\)"):
        normalize_slices(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="shape \\(5,\\)"):
        normalize_slices(np.zeros(5))
    bad = np.zeros((4, 4), dtype=np.float32)
    bad[0, 0], bad[1, 1], bad[2, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match="3 of 16 values are NaN or infinite.*nan_to_num"):
        normalize_slices(bad)
    with pytest.raises(ValueError, match="real numeric"):
        normalize_slices(np.zeros((3, 3), dtype=np.complex64))


def test_batches_normalised_with_the_volume_range_equal_the_whole_volume():
    from src_model.preprocess import intensity_range

    rng = np.random.default_rng(3)
    vol = (rng.gamma(2.0, 300.0, size=(9, 20, 16))).astype(np.float32)
    vol[4, 0, 0] = 1e6  # an outlier in one slice must not change the others' scaling per batch
    whole = normalize_slices(vol)
    rng_ = intensity_range(vol)
    batched = np.concatenate([normalize_slices(vol[i:i + 4], rng_) for i in range(0, 9, 4)])
    np.testing.assert_array_equal(batched, whole)
    assert intensity_range(vol.astype(np.uint8)) is None
    with pytest.raises(ValueError, match="NaN or infinite"):
        intensity_range(np.full((2, 8, 8), np.nan, np.float32))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_burned_in_overlays_and_black_margins_do_not_squash_the_tissue_range(seed):
    """Phantom v2 frames as 16-bit data with the overlays (text, ruler, bars, logo) at full
    white and black margins around the scan region: the range is the tissue's, not 0..65535."""
    from sample_data.phantom_v2 import make_phantom_v2
    from src_model.preprocess import imaged_area, intensity_range

    ph = make_phantom_v2(seed, n_slices=6)
    vol = ph.volume.astype(np.uint16) * 64
    vol[:, ph.overlay_mask] = 65535
    top, left, height, width = ph.style["fov"]
    tissue = np.zeros(vol.shape[1:], bool)
    tissue[top:top + height, left:left + width] = True
    tissue &= ~ph.overlay_mask
    assert np.percentile(vol, 99.5) == 65535  # over every pixel, the overlay would set white
    lo, hi = intensity_range(vol)
    ref_lo, ref_hi = np.percentile(vol[:, tissue], (0.5, 99.5))
    assert hi == pytest.approx(ref_hi, rel=0.15) and lo <= ref_lo + 0.05 * ref_hi
    area = imaged_area(vol)
    assert not (area & ph.overlay_mask).any() and not area[~tissue].any()


def test_one_frame_leaves_its_black_border_out():
    from src_model.preprocess import imaged_area, intensity_range

    frame = np.zeros((100, 120), np.float32)
    frame[20:90, 30:110] = np.random.default_rng(0).gamma(2.0, 100.0, (70, 80)) + 50.0
    area = imaged_area(frame[None])
    assert area.sum() == 70 * 80
    lo, _ = intensity_range(frame)
    assert lo >= 50.0  # not the border's 0


def _sweep_with_overlay(frames=8, seed=0):
    """Speckled tissue that changes every frame, a black margin, an acoustic shadow of exact
    zeros inside the tissue, a bright band (the structure), a white burned-in ruler, a dim
    one (darker than the brightest tissue, brighter than most) and a dark static patch."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(30, 120, size=(frames, 60, 80)).astype(np.uint8)
    stack[:, :, :8] = 0  # black margin: static but dark
    stack[:, 30:45, 20:50] = 0  # shadow below the band: exact zeros in every frame
    stack[:, 24:28, 20:50] = rng.integers(200, 250, size=(frames, 4, 30))  # bright band
    stack[:, 5:55, 74:76] = 255  # burned-in ruler
    stack[:, 5:55, 66] = 115  # dim ruler: tissue maxima's 50th percentile 112, 95th 119
    stack[:, 50:58, 10:18] = 20  # static but dark: a noise floor, not an overlay
    return stack


def test_burned_in_marks_static_pixels_brighter_than_the_background_only():
    from src_model.preprocess import burned_in

    stack = _sweep_with_overlay()
    m = burned_in(stack)
    assert m.dtype == np.uint8 and m.shape == stack.shape[1:]
    assert (m[5:55, 74:76] == 2).all()  # the ruler: bright and the same in every frame
    assert (m[5:55, 66] == 2).all()  # the dim ruler too
    assert not burned_in(stack, static_percentile=95)[5:55, 66].any()  # a "bright only" rule
    short = burned_in(stack[:6])  # too few frames to trust a dim static pixel: bright only
    assert (short[5:55, 74:76] == 2).all() and not short[5:55, 66].any()
    assert (m[24:28, 20:50] == 1).mean() > 0.5 and not (m[24:28, 20:50] == 2).any()  # the band
    assert not m[:, :8].any() and not m[30:45, 20:50].any()  # margin and shadow: dark, not overlay
    assert not m[50:58, 10:18].any()  # static below the tissue's median maximum: not an overlay
    assert burned_in(stack[:2]) is None  # two frames cannot tell
    assert burned_in(np.repeat(stack[:1], 5, axis=0)) is None  # a still stack cannot either
    no_overlay = stack.copy()
    no_overlay[:, 5:55, 74:76] = stack[:, 5:55, 60:62]
    no_overlay[:, 5:55, 66] = stack[:, 5:55, 62]
    assert burned_in(no_overlay) is None  # nothing but the background is static


def test_burned_in_leaves_a_clipped_echo_of_a_still_probe_to_the_tissue():
    """A bright echo clipped at the display's maximum in a clip where the probe stays still is
    the same in every frame, like an overlay; its rim, which the noise clips now and then, tells
    it apart. A ruler drawn at the same maximum over tissue is still burned in."""
    from src_model.preprocess import burned_in

    rng = np.random.default_rng(3)
    yy = np.arange(60)[:, None]
    echo = 300.0 * np.exp(-0.5 * ((yy - 26) / 3.0) ** 2) * np.ones((1, 60))  # a smooth band
    base = np.full((60, 80), 70.0)
    base[:, 10:70] += echo
    frames = np.clip(base + rng.normal(0, 2.0, (10, 60, 80)), 0, 255).round().astype(np.uint8)
    frames[:, 5:55, 74:76] = 255  # burned-in ruler at the same maximum
    clipped = (frames == 255).all(axis=0)
    clipped[:, 74:76] = False
    assert clipped[:, 10:70].sum() >= 240  # the band's core is clipped in every frame
    m = burned_in(frames)
    assert (m[5:55, 74:76] == 2).all()
    assert not (m[clipped] == 2).any() and (m[clipped] == 1).all()  # bright tissue
    # without the rim (a clipped block with a hard edge) the rule cannot tell, as before
    block = frames.copy()
    block[:, 20:32, 10:70] = 255
    block[:, 18:20, 10:70] = block[:, 32:34, 10:70] = 150
    assert (burned_in(block)[20:32, 10:70] == 2).all()


def test_burned_in_cannot_tell_in_a_nearly_still_clip():
    """Noise of a fraction of a grey level on a still probe: tissue repeats its value by chance
    over the frames, so static pixels are no evidence of an overlay and there is no map."""
    from src_model.preprocess import burned_in

    rng = np.random.default_rng(4)
    tissue = rng.uniform(30, 200, (60, 80))
    for sigma, expect_map in ((0.3, False), (3.0, True)):
        frames = np.clip(tissue + rng.normal(0, sigma, (10, 60, 80)), 0, 255).round()
        frames = frames.astype(np.uint8)
        frames[:, 5:55, 74:76] = 255  # a burned-in ruler
        m = burned_in(frames)
        assert (m is not None) == expect_map
        if expect_map:
            assert (m[5:55, 74:76] == 2).all() and (m[:, :70] == 2).mean() < 0.01


def test_burned_in_keeps_overlays_of_a_moving_sweep_whatever_borders_them():
    """Found by a review: in a moving sweep the clipped-tissue exemption must not apply (a 255
    ruler among speckle that reaches 255 now and then stays an overlay), and a dark background
    flickering by a grey level over most of the frame must not make the sweep look still."""
    from src_model.preprocess import burned_in

    rng = np.random.default_rng(1)
    speckle = np.clip(rng.gamma(2.0, 40.0, (8, 40, 50)), 0, 255).round().astype(np.uint8)
    assert (speckle.max(axis=0) == 255).mean() > 0.05  # tissue that reaches the maximum
    speckle[:, 2:38, 45:47] = 255
    assert (burned_in(speckle)[2:38, 45:47] == 2).all()
    dark = np.empty((8, 60, 80), np.uint8)
    dark[:, :, 56:] = np.clip(rng.gamma(2.0, 40.0, (8, 60, 24)), 0, 250).round()
    dark[:, :, :56] = rng.integers(0, 2, (8, 60, 56))  # 70 % of the frame: a 0/1 noise floor
    dark[:, 5:55, 77:79] = 200
    assert (burned_in(dark)[5:55, 77:79] == 2).all()
    assert burned_in(dark > 100) is None  # a boolean stack is not an image


def test_drop_burned_in_removes_boxes_on_overlays_and_keeps_the_structure():
    import torch

    from src_model.preprocess import burned_in
    from src_model.rpn import drop_burned_in

    m = torch.from_numpy(burned_in(_sweep_with_overlay()))
    boxes = torch.tensor([
        [18.0, 20.0, 52.0, 47.0],  # the band and its shadow: kept
        [70.0, 10.0, 80.0, 50.0],  # the ruler: dropped
        [60.5, 10.2, 79.7, 49.9],  # the ruler and some tissue: mostly ruler, dropped
        [0.0, 0.0, 8.0, 60.0],  # the black margin: no bright pixel, left to the filter
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    kept, kept_scores = drop_burned_in([boxes, boxes[:0]], [scores, scores[:0]], m)
    assert kept[0].tolist() == [boxes[0].tolist(), boxes[3].tolist()]
    assert kept_scores[0].tolist() == pytest.approx([0.9, 0.6]) and len(kept[1]) == 0
    # the rule, pixel by pixel (a pixel is in a box when its centre is)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([80.0, 60.0])
    random_boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 30 + 0.3], dim=1)
    got, _ = drop_burned_in([random_boxes], [torch.ones(40)], m, max_fraction=0.4)
    jj, ii = np.meshgrid(np.arange(80) + 0.5, np.arange(60) + 0.5)
    want = []
    for x1, y1, x2, y2 in random_boxes.tolist():
        inside = (jj >= x1) & (jj <= x2) & (ii >= y1) & (ii <= y2)
        bright, burned = (m.numpy()[inside] >= 1).sum(), (m.numpy()[inside] == 2).sum()
        want.append(not (bright > 0 and burned >= 0.4 * bright))
    assert got[0].tolist() == random_boxes[torch.tensor(want)].tolist()
    assert 0 < sum(want) < 40
