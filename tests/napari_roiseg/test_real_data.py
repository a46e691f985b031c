"""read_volume on the real ultrasound images in ../shared/data (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_roiseg.io.volumes import read_volume


def test_hc18_png_is_one_grayscale_slice(shared_data):
    image = shared_data / "hc18" / "images" / "001_HC.png"
    vol = read_volume(image)
    assert vol.data.shape == (1, 540, 800)
    assert vol.data.dtype == np.uint8
    assert vol.data.std() > 0  # real speckle, not a blank frame
    assert vol.spacing == (1.0, 1.0, 1.0)


def test_hc18_images_stack_as_a_volume(shared_data):
    frames = sorted((shared_data / "hc18" / "images").glob("0[0-9][0-9]_HC.png"))[:3]
    assert len(frames) == 3
    vol = read_volume(frames)
    assert vol.data.shape == (3, 540, 800)
    np.testing.assert_array_equal(vol.data[1], read_volume(frames[1]).data[0])


def test_spj_hip_rgb_pngs_become_one_channel(shared_data):
    folder = shared_data / "spj-hip"
    pngs = sorted(folder.rglob("*.png"))[:5] if folder.is_dir() else []
    if not pngs:
        pytest.skip(f"spj-hip images not found under {folder}")
    for png in pngs:
        with Image.open(png) as image:
            assert image.mode in ("RGB", "RGBA"), "the set is documented as RGB PNGs"
            red = np.asarray(image)[..., 0]
        vol = read_volume(png)
        assert vol.data.shape == (1, *red.shape), png.name
        np.testing.assert_array_equal(vol.data[0], red)
