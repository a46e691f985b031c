"""Property-based tests (hypothesis): reader dispatch never crashes with an unexpected error
type; boxes, pixel masks and feature cells convert consistently."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_roiseg.io.volumes import read_volume

_VOL = np.random.default_rng(0).integers(0, 200, (3, 16, 16), dtype=np.uint8)


def _tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, _VOL, photometric="minisblack")
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_VOL[0]).save(buf, format="PNG")
    return buf.getvalue()


def _nifti() -> bytes:
    nibabel = pytest.importorskip("nibabel")
    return nibabel.Nifti1Image(_VOL.T, np.eye(4)).to_bytes()


CONTENTS = {"tiff": _tiff(), "png": _png(), "nifti": _nifti()}
EXTENSIONS = [".tif", ".tiff", ".png", ".nii", ".nii.gz", ".dcm", ".TIF", ".jpg", ""]


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([*CONTENTS, "random", "empty"]), ext=st.sampled_from(EXTENSIONS),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.integers(0, 10**6), max_size=3),
       noise=st.binary(min_size=1, max_size=600))
def test_any_extension_and_content_gives_a_volume_or_a_value_error(tmp_path, kind, ext, cut,
                                                                    flips, noise):
    data = bytearray({"random": noise, "empty": b""}.get(kind, CONTENTS.get(kind, b"")))
    if kind in CONTENTS and cut < 0.5:  # truncate and/or flip some bytes
        data = data[: int(len(data) * cut * 2)]
    for f in flips:
        if data:
            data[f % len(data)] ^= 0xFF
    path = tmp_path / f"scan ü{ext}"
    path.write_bytes(bytes(data))
    try:
        volume = read_volume(path)
    except ValueError as exc:  # VolumeReadError and friends: a message, one line
        assert str(exc) and "\n" not in str(exc)
        return
    assert volume.data.ndim == 3 and min(volume.data.shape[1:]) >= 8
    assert volume.data.dtype.kind in "uif"


masks = st.builds(
    lambda h, w, seed, p: np.random.default_rng(seed).random((h, w)) < p,
    st.integers(1, 24), st.integers(1, 24), st.integers(0, 10**6), st.floats(0.02, 0.6))


@settings(max_examples=100, deadline=None)
@given(mask=masks)
def test_gt_box_is_the_tight_box_around_every_mask_pixel(mask):
    from src_model.data import gt_box_from_mask

    box = gt_box_from_mask(mask.astype(np.uint8))
    if not mask.any():
        assert box.shape[0] == 0
        return
    x1, y1, x2, y2 = box[0]
    rows, cols = np.nonzero(mask)
    assert x1 == cols.min() and y1 == rows.min() and x2 == cols.max() + 1 and y2 == rows.max() + 1


boxes = st.tuples(st.floats(0, 60), st.floats(0, 60), st.floats(0.5, 40), st.floats(0.5, 40))


@settings(max_examples=100, deadline=None)
@given(box=boxes, stride=st.sampled_from([4.0, 8.0, 16.0]), shift=st.floats(0.0, 1.0))
def test_pixel_mask_of_a_box_is_covered_by_the_footprint_of_its_cells(box, stride, shift):
    import torch

    from src_model.roi_conv import boxes_to_cell_mask, boxes_to_pixel_mask

    offset = shift * stride / 2  # cell 0's footprint starts at or before pixel 0's edge
    x1, y1, w, h = box
    b = torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32)
    size = (112, 112)
    pixels = boxes_to_pixel_mask([b], size).reshape(size).numpy()
    grid = (math.ceil((size[0] - offset) / stride) + 2,) * 2
    cells = boxes_to_cell_mask([b], grid, stride, offset).reshape(grid).numpy()
    for i, j in zip(*np.nonzero(pixels)):
        # the cell whose footprint [o + s*c - s/2, o + s*c + s/2) holds the pixel centre
        c = math.floor((j + 0.5 - offset + stride / 2) / stride)
        r = math.floor((i + 0.5 - offset + stride / 2) / stride)
        assert 0 <= r < grid[0] and 0 <= c < grid[1] and cells[r, c], (i, j, r, c)


rows = st.lists(st.tuples(st.integers(0, 20), st.floats(0, 200), st.floats(0, 200),
                          st.floats(0, 100), st.floats(0, 100), st.floats(0, 1)), max_size=8)


@settings(max_examples=100, deadline=None)
@given(rows=rows, ndim=st.sampled_from([2, 3]))
def test_box_rows_round_trip_through_napari_rectangles(rows, ndim):
    from napari_roiseg.layers import box_rectangles

    table = np.array([(s, y, x, y + h, x + w, sc) for s, y, x, h, w, sc in rows],
                     np.float32).reshape(-1, 6)
    rects = box_rectangles(table, ndim)
    assert rects.shape == (len(table), 4, ndim)
    for row, rect in zip(table, rects):
        (y1, x1), (y2, x2) = rect[:, -2:].min(0), rect[:, -2:].max(0)
        assert np.allclose([y1, x1, y2, x2], row[1:5])
        if ndim == 3:
            assert np.all(rect[:, 0] == row[0])
