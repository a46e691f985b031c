"""Phantom v2: determinism, drawn ranges, labels, overlays, sweeps. ``make_phantom`` itself is
pinned byte for byte in test_phantom_pinned.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from sample_data.overlays import KINDS
from sample_data.phantom_v2 import SIZE_RANGE, PhantomV2, draw_style, make_phantom_v2

SMALL = dict(n_slices=10, shape=(256, 320))


@pytest.fixture(scope="module")
def pairs() -> dict[int, tuple[PhantomV2, PhantomV2]]:
    """(roof, ilium_roof) phantoms of a few seeds, small frames."""
    return {seed: (make_phantom_v2(seed, label="roof", **SMALL),
                   make_phantom_v2(seed, label="ilium_roof", **SMALL)) for seed in (0, 1, 2)}


def test_same_seed_same_arrays_other_seed_differs(pairs):
    a = pairs[1][0]
    b = make_phantom_v2(1, label="roof", **SMALL)
    for name in ("volume", "labels", "overlay_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.style == b.style and a.params == b.params and a.spacing == b.spacing
    c = pairs[2][0]
    assert not np.array_equal(a.volume, c.volume) and a.style != c.style


def test_drawn_sizes_and_spacings_vary_within_their_ranges():
    styles = [draw_style(seed) for seed in range(40)]
    lo, hi = SIZE_RANGE
    for st in styles:
        height, width = st.shape
        assert lo <= height <= hi and lo <= width <= hi
        top, left, fov_h, fov_w = st.fov
        assert top >= 0 and left >= 0 and top + fov_h <= height and left + fov_w <= width
        assert 0.04 <= st.spacing_mm <= 0.35
        assert fov_h * st.spacing_mm >= 40.0 - 1e-6  # depth setting
        assert fov_w * st.spacing_mm >= 36.0 - 1e-6  # room for ilium and head
        assert -10 <= st.gain_db <= 6 and 45 <= st.dynamic_range_db <= 80
    assert len({st.shape for st in styles}) >= 35
    spacings = [st.spacing_mm for st in styles]
    assert max(spacings) > 2 * min(spacings)
    assert len({st.shape[0] for st in styles if st.shape[0] < 400}) >= 5  # small and
    assert len({st.shape[0] for st in styles if st.shape[0] > 650}) >= 5  # large frames


def test_spacing_style_and_params_are_recorded_and_json_able(pairs):
    ph = pairs[0][1]
    st = ph.style
    assert ph.spacing == (st["slice_mm"], st["spacing_mm"], st["spacing_mm"])
    assert st["label"] == "ilium_roof" and st["shape"] == list(ph.volume.shape[1:])
    assert json.loads(json.dumps(st)) == st
    assert json.loads(json.dumps(ph.params)) == ph.params
    assert ph.volume.dtype == ph.labels.dtype == np.uint8 and ph.overlay_mask.dtype == bool
    volume, labels = ph
    assert volume is ph.volume and labels is ph.labels


@pytest.mark.parametrize("kind", [0, 1])
def test_label_is_a_contiguous_run_and_clear_of_the_overlays(pairs, kind):
    for seed, pair in pairs.items():
        ph = pair[kind]
        present = np.flatnonzero(ph.labels.any(axis=(1, 2)))
        assert present.size >= 3, seed
        np.testing.assert_array_equal(present, np.arange(present[0], present[-1] + 1))
        assert ph.overlay_mask.any() and len(ph.style["overlays"]) >= 3
        assert not (ph.labels.astype(bool) & ph.overlay_mask).any(), seed


def test_overlays_are_bright_static_and_at_the_frame_edges(pairs):
    for ph, _ in pairs.values():
        height, width = ph.overlay_mask.shape
        y, x = np.nonzero(ph.overlay_mask)
        at_edge = ((x < 0.3 * width) | (x >= 0.7 * width) | (y < 0.3 * height)
                   | (y >= 0.7 * height))
        assert at_edge.all()
        frames = ph.volume[:, ph.overlay_mask]
        assert (frames == frames[0]).all()  # burned in: the same in every frame
        top, left, fov_h, fov_w = ph.style["fov"]
        scan = ph.volume[:, top:top + fov_h, left:left + fov_w]
        assert frames.mean() > scan.mean() + 50
        for item in ph.style["overlays"]:
            assert item["kind"] in KINDS
            x1, y1, x2, y2 = item["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert ph.volume[0, y1:y2, x1:x2][ph.overlay_mask[y1:y2, x1:x2]].max() >= 150


def test_the_depth_ruler_ticks_every_5_mm(pairs):
    rulers = 0
    for ph, _ in pairs.values():
        for item in ph.style["overlays"]:
            if item["kind"] != "ruler":
                continue
            rulers += 1
            x1, y1, x2, y2 = item["box"]
            ticks = ph.overlay_mask[y1:y2, x1:x2].sum(axis=1) > 1  # the line alone is 1 px wide
            starts = np.flatnonzero(ticks[1:] & ~ticks[:-1]) + 1
            gaps = np.diff(np.concatenate([[0], starts]))
            np.testing.assert_allclose(gaps, 5.0 / ph.style["spacing_mm"], atol=1.01)
    assert rulers >= 2


def test_ilium_roof_is_one_band_that_contains_the_roof(pairs):
    for seed, (roof, band) in pairs.items():
        # one render: the label choice changes neither the frames nor the overlays
        np.testing.assert_array_equal(roof.volume, band.volume)
        np.testing.assert_array_equal(roof.overlay_mask, band.overlay_mask)
        r, b = roof.labels.astype(bool), band.labels.astype(bool)
        assert not (r & ~b).any()
        assert b.sum() > 1.5 * r.sum(), seed
        ys, xs = np.nonzero(b.any(axis=0))
        assert np.ptp(xs) > np.ptp(ys), seed  # a band wider than tall, as real ilium+roof labels
        for z in np.flatnonzero(r.any(axis=(1, 2))):
            assert b[z].sum() > r[z].sum()
            assert ndi.label(b[z])[1] == 1, (seed, z)


def test_labelled_pixels_are_brighter_than_their_surroundings(pairs):
    for seed, (_, ph) in pairs.items():
        lab = ph.labels.astype(bool)
        ring = ndi.binary_dilation(lab, structure=np.ones((1, 9, 9), bool)) & ~lab
        assert ph.volume[lab].mean() > ph.volume[ring].mean() + 30, seed


def test_changing_the_imaging_keeps_the_anatomy():
    st = draw_style(3, shape=(256, 256))
    a = make_phantom_v2(3, n_slices=4, style=st)
    b = make_phantom_v2(3, n_slices=4, style=dataclasses.replace(st, gain_db=st.gain_db + 6))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert b.volume.mean() > a.volume.mean()


@pytest.mark.parametrize("seed", [0, 7, 11])
@pytest.mark.parametrize("n_slices", [1, 2])
def test_single_frames_and_two_frame_sweeps(seed, n_slices):
    ph = make_phantom_v2(seed, n_slices=n_slices, label="ilium_roof", shape=(256, 256))
    assert ph.volume.shape == ph.labels.shape == (n_slices, 256, 256)
    assert ph.labels.any()


def test_bad_arguments_say_what_works():
    with pytest.raises(ValueError, match="n_slices"):
        make_phantom_v2(0, n_slices=0)
    with pytest.raises(ValueError, match="ilium_roof"):
        make_phantom_v2(0, n_slices=2, label="acetabulum")
    with pytest.raises(ValueError, match="128"):
        make_phantom_v2(0, n_slices=2, shape=(64, 256))
    st = draw_style(0, shape=(256, 256))
    with pytest.raises(ValueError, match="inside the frame"):
        dataclasses.replace(st, fov=(0, 0, 300, 256))
