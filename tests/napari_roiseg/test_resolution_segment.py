"""The same phantom at two resolutions gives the same mask up to resampling (shipped model), through
the engine, the API (a layer's scale and unit) and fine-tuning (the reference a new version keeps)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_roiseg.segment import segment_array  # noqa: E402
from src_model.resolution import resize_images, resize_masks  # noqa: E402


def _dice(a, b):
    a, b = a != 0, b != 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def pair():
    """Five labelled slices of an unseen phantom (0.15 mm pixels) and the same slices at twice
    the resolution (0.075 mm), as a scanner with a finer pixel would show them."""
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=301, n_slices=40)
    keep = np.flatnonzero(ph.labels.any(axis=(1, 2)))[::4][:5]
    volume, labels = ph.volume[keep], ph.labels[keep]
    fine = np.round(resize_images(volume / np.float32(255), (734, 384)) * 255).astype(np.uint8)
    return volume, labels, fine


def test_twice_the_resolution_gives_the_same_mask(pair):
    volume, labels, fine = pair
    coarse = segment_array(volume, None, device="cpu", spacing=0.15)
    assert _dice(coarse.labels, labels) > 0.85  # the model works on this phantom at all
    matched = segment_array(fine, None, device="cpu", spacing=(0.2, 0.075, 0.075))
    assert matched.labels.shape == fine.shape
    back = resize_masks(matched.labels, volume.shape[1:])
    assert _dice(back, coarse.labels) > 0.9
    # boxes come back in the fine slices' pixels: twice the coarse ones
    top = lambda r, k: r.boxes[r.boxes[:, 0] == k][np.argmax(r.boxes[r.boxes[:, 0] == k, 5])]
    for k in range(len(volume)):
        np.testing.assert_allclose(top(matched, k)[1:5], 2 * top(coarse, k)[1:5], atol=6)


def test_half_the_resolution_needs_the_spacing(pair):
    """At 0.3 mm the roof is half as many pixels as the model knows: it finds nothing unless
    the slices are matched to its 0.15 mm (measured: dice 0.00 unmatched, 0.95 matched)."""
    volume, labels, _ = pair
    half = np.round(resize_images(volume / np.float32(255), (184, 96)) * 255).astype(np.uint8)
    truth = resize_masks(labels, (184, 96))
    unmatched = segment_array(half, None, device="cpu").labels
    matched = segment_array(half, None, device="cpu", spacing=0.3).labels
    assert _dice(matched, truth) > 0.85 and _dice(unmatched, truth) < 0.5


def test_the_api_reads_the_layer_scale_and_unit(pair):
    from napari.layers import Image

    from napari_roiseg.api import segment_volume

    _, _, fine = pair
    layer = Image(fine[:2], scale=(0.2, 0.075, 0.075), units="mm")
    labels, _ = segment_volume(layer, device="cpu")
    expected = segment_array(fine[:2], None, device="cpu", spacing=0.075).labels
    np.testing.assert_array_equal(labels, expected)
    microns = Image(fine[:2], scale=(200, 75, 75), metadata={"unit": "micron"})
    np.testing.assert_array_equal(segment_volume(microns, device="cpu")[0], expected)


def test_finetuning_at_another_resolution_keeps_the_model_reference(pair):
    from napari_roiseg.api import finetune

    volume, labels, fine = pair
    big = resize_masks(labels, fine.shape[1:])
    net = finetune(fine, big, slices=[0, 1], steps=1, validation=[], spacing=0.075,
                   device="cpu")
    assert net.config.pixel_spacing_mm == pytest.approx(0.15)
    unknown = finetune(fine, big, slices=[0, 1], steps=1, validation=[], device="cpu")
    assert unknown.config.pixel_spacing_mm is None and unknown.config.frame_height_px == 734
