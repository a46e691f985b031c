"""The infant-hip phantom: determinism, shapes, label statistics, image/label consistency, TIFFs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from sample_data.phantom import DEFAULT_SHAPE, SPACING, Phantom, make_phantom, write_phantom

SMALL = dict(n_slices=12, shape=(96, 64))


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    # Paper-sized slices, fewer slices than the default 256 to keep the suite fast.
    return make_phantom(seed=3, n_slices=80)


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = make_phantom(1, **SMALL), make_phantom(1, **SMALL), make_phantom(2, **SMALL)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.params == b.params
    assert not np.array_equal(a.volume, c.volume)
    assert a.params != c.params


def test_shapes_dtypes_spacing_and_unpacking(phantom):
    assert phantom.volume.shape == phantom.labels.shape == (80, *DEFAULT_SHAPE)
    assert phantom.volume.dtype == phantom.labels.dtype == np.uint8
    assert set(np.unique(phantom.labels)) == {0, 1}
    assert phantom.spacing == SPACING and len(SPACING) == 3 and all(v > 0 for v in SPACING)
    volume, labels = phantom
    assert volume is phantom.volume and labels is phantom.labels
    # uses the gray range without saturating everything
    assert 15 < phantom.volume.mean() < 90
    assert (phantom.volume == 255).mean() < 0.01


def test_small_volumes_and_bad_arguments():
    ph = make_phantom(0, n_slices=3, shape=(40, 32))
    assert ph.volume.shape == (3, 40, 32)
    assert ph.labels[1].any()  # the middle slice carries the label even when tiny
    with pytest.raises(ValueError, match="n_slices"):
        make_phantom(0, n_slices=0)
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, n_slices=2, shape=(16, 64))


def test_label_is_one_contiguous_run_in_the_middle(phantom):
    present = np.flatnonzero(phantom.labels.any(axis=(1, 2)))
    start, stop = phantom.params["label_slices"]
    np.testing.assert_array_equal(present, np.arange(start, stop))
    n = phantom.volume.shape[0]
    assert start >= 1 and stop <= n - 1  # empty slices at both ends
    assert 0.4 <= (stop - start) / n <= 0.7


@pytest.mark.parametrize("seed", [0, 5])
def test_foreground_fractions(seed):
    ph = make_phantom(seed, n_slices=48)
    start, stop = ph.params["label_slices"]
    on_labelled = ph.labels[start:stop].mean()
    on_volume = ph.labels.mean()
    # design: ~0.5 % of a labelled slice, ~0.3 % of the volume (the paper's 0.3 %)
    assert 0.003 <= on_labelled <= 0.01, on_labelled
    assert 0.0015 <= on_volume <= 0.006, on_volume


def test_label_changes_smoothly_and_tapers(phantom):
    start, stop = phantom.params["label_slices"]
    area = phantom.labels[start:stop].reshape(stop - start, -1).sum(axis=1).astype(int)
    assert np.abs(np.diff(area)).max() <= 0.08 * area.max()
    assert area[0] < 0.5 * area.max() and area[-1] < 0.5 * area.max()  # tapers at both ends
    # the label is one connected region on every slice
    assert all(ndi.label(phantom.labels[z])[1] == 1 for z in range(start, stop))
    # and moves little between neighbouring slices
    overlap = [
        (phantom.labels[z] & phantom.labels[z + 1]).sum() / phantom.labels[z].sum()
        for z in range(start, stop - 1)
    ]
    assert min(overlap) > 0.6


def test_labelled_pixels_are_brighter_than_their_surroundings(phantom):
    lab = phantom.labels.astype(bool)
    ring = ndi.binary_dilation(lab, structure=np.ones((1, 13, 13), bool)) & ~lab
    inside, around = phantom.volume[lab].mean(), phantom.volume[ring].mean()
    assert inside > around + 50, (inside, around)


def test_write_phantom_imagej_tiffs(tmp_path):
    vol_path, lab_path = write_phantom(tmp_path / "out", seed=4, **SMALL)
    assert (vol_path.name, lab_path.name) == ("volume.tif", "labels.tif")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.tif", "volume.tif"]
    ph = make_phantom(4, **SMALL)
    for path, expected in ((vol_path, ph.volume), (lab_path, ph.labels)):
        with tifffile.TiffFile(path) as tif:
            np.testing.assert_array_equal(tif.asarray(), expected)
            assert tif.is_imagej
            meta = tif.imagej_metadata
            assert meta["spacing"] == pytest.approx(SPACING[0])
            assert meta["unit"] == "mm"
            xres = tif.pages[0].tags["XResolution"].value
            yres = tif.pages[0].tags["YResolution"].value
            assert xres[1] / xres[0] == pytest.approx(SPACING[2], rel=1e-6)
            assert yres[1] / yres[0] == pytest.approx(SPACING[1], rel=1e-6)
