"""Loaders of the real ultrasound beside the repository (../shared/data); skipped where absent."""

from __future__ import annotations

import numpy as np
import pytest

from sample_data.real_data import default_data_root, fill_outline, load_hc18, load_spj_hip

DATA = default_data_root()
needs_hc18 = pytest.mark.skipif(
    not (DATA / "hc18").is_dir(), reason=f"HC18 data not found at {DATA / 'hc18'}"
)
needs_spj = pytest.mark.skipif(
    not (DATA / "spj-hip").is_dir(), reason=f"SPJ hip data not found at {DATA / 'spj-hip'}"
)


def test_fill_outline_bridges_a_one_pixel_gap():
    yy, xx = np.mgrid[0:60, 0:80]
    dist = np.hypot((yy - 30) / 20, (xx - 40) / 30)
    ring = np.abs(dist - 1) < 0.04
    outline = ring.astype(np.uint8) * 255
    outline[29:31, 60:80] = 0  # a two-pixel gap across the drawn ring
    mask = fill_outline(outline)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[30, 40] == 1 and mask[30, 69] == 1 and mask[0, 0] == 0
    assert abs(int(mask.sum()) - int((dist < 1.04).sum())) <= 10  # the whole ellipse, no more


def test_missing_folder_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_hc18(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no PNG"):
        load_spj_hip(tmp_path)


@needs_hc18
def test_hc18_masks_are_filled_heads():
    samples = load_hc18()
    assert len(samples) == 60
    names = [name for name, _, _ in samples]
    assert names == sorted(names) and "000_HC" in names and "014_2HC" in names
    for name, image, mask in samples:
        assert image.shape == mask.shape == (540, 800), name
        assert image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}, name
        assert 0.03 < mask.mean() < 0.4, (name, mask.mean())  # a head, not an outline or a leak
        rows, cols = np.nonzero(mask)
        assert mask[int(rows.mean()), int(cols.mean())] == 1  # the centre is inside
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


@needs_spj
def test_spj_hip_images_are_single_channel():
    samples = load_spj_hip()
    assert len(samples) == 51
    name, image = samples[0]
    assert name.startswith("standard_ultrasound__") or name.startswith("substandard_ultrasound__")
    for name, image in samples:
        assert image.shape == (256, 256) and image.dtype == np.uint8, name
        assert image.std() > 5, name  # real content


def test_from_hc18_keeps_or_resizes():
    torch = pytest.importorskip("torch")
    from sample_data.real_data import from_hc18

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(54, 80), dtype=np.uint8)
    mask = np.zeros((54, 80), np.uint8)
    mask[10:40, 20:60] = 1
    samples = [("000_HC", image, mask), ("001_HC", image[::-1].copy(), mask)]
    native = from_hc18(samples)
    assert len(native) == 2 and native.locate(1) == ("001_HC", 0)
    assert native[0][0].shape == (1, 54, 80)
    small = from_hc18(samples, resize_to=(27, 40), negatives="none")
    img, target = small[0]
    assert img.shape == (1, 27, 40)
    assert set(target["masks"].unique().tolist()) == {0, 1}
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 20.0]]))
    assert abs(float(img.mean()) - image.mean() / 255) < 0.02  # bilinear keeps the intensities
