"""Open a volume through the plugin in a real napari window and check that it is drawn."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui


def test_volume_opened_with_plugin_is_rendered(make_napari_viewer, tmp_path, roiseg_plugin):
    # Bright disc on a dark ramp: any correct rendering has many distinct pixel values.
    yy, xx = np.mgrid[:64, :96]
    slice_ = (xx * 1.5).astype(np.uint8)
    slice_[(yy - 32) ** 2 + (xx - 48) ** 2 < 15**2] = 255
    path = tmp_path / "volume.tif"
    tifffile.imwrite(path, np.stack([slice_] * 4), imagej=True, metadata={"axes": "ZYX"})

    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(path), plugin="napari-roiseg")
    assert layer.data.shape == (4, 64, 96)
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot.ndim == 3 and screenshot.shape[-1] == 4  # RGBA
    assert np.unique(screenshot[..., :3]).size > 10, "the canvas looks blank"
