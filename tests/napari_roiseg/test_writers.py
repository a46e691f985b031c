"""Writers: TIFF and CSV round trips, atomic saves, and the npe2 writer contributions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_roiseg.io import writers as _volume_write
from napari_roiseg.io.writer import write_boxes, write_labels
from napari_roiseg.io.volumes import (
    read_boxes_csv,
    read_volume,
    write_boxes_csv,
    write_labels_tiff,
    write_volume_tiff,
)


def test_labels_tiff_round_trip_with_spacing(tmp_path):
    labels = np.zeros((4, 20, 30), np.int32)
    labels[1:3, 5:10, 8:12] = 1
    path = write_labels_tiff(tmp_path / "labels.tif", labels, spacing=(2.5, 0.3, 0.2), unit="mm")
    vol = read_volume(path)
    assert vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.data, labels)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.3, 0.2), rtol=1e-6)
    assert vol.unit == "mm"


def test_labels_above_255_are_uint16_and_bad_labels_are_refused(tmp_path):
    labels = np.array([[0, 300]] * 8 * 4, np.int64).reshape(8, 8)
    assert read_volume(write_labels_tiff(tmp_path / "l.tif", labels)).data.dtype == np.uint16
    message = r"Labels span -1\.\.1: an ImageJ TIFF holds labels 0\.\.65535"
    with pytest.raises(ValueError, match=message):
        write_labels_tiff(tmp_path / "neg.tif", np.full((8, 8), -1) + np.eye(8, dtype=int) * 2)
    with pytest.raises(ValueError, match="Labels must be integers"):
        write_labels_tiff(tmp_path / "f.tif", np.zeros((8, 8), np.float32))


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.uint8, np.uint8), (np.uint16, np.uint16), (np.float64, np.float32), (bool, np.uint8)],
)
def test_volume_tiff_round_trip(tmp_path, volume, dtype, stored):
    data = volume.astype(dtype)
    vol = read_volume(write_volume_tiff(tmp_path / "v.tif", data, spacing=(3, 1, 0.5)))
    assert vol.data.dtype == stored
    np.testing.assert_array_equal(vol.data, data.astype(stored))
    np.testing.assert_allclose(vol.spacing, (3, 1, 0.5))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, volume, monkeypatch):
    path = write_volume_tiff(tmp_path / "v.tif", volume)
    before = path.read_bytes()

    def broken_imwrite(target, *args, **kwargs):
        open(target, "wb").write(b"partial")  # noqa: SIM115 -- simulate a crash mid-write
        raise OSError("disk full")

    monkeypatch.setattr(_volume_write.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_volume_tiff(path, volume[:2])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.tif"]


def test_boxes_csv_has_header_and_nan_score(tmp_path):
    path = write_boxes_csv(tmp_path / "b.csv", [[3, 10.5, 20, 30, 40.25]])
    lines = path.read_text().splitlines()
    assert lines == ["slice,y1,x1,y2,x2,score", "3,10.5,20.0,30.0,40.25,nan"]
    boxes = read_boxes_csv(path)
    assert boxes.shape == (1, 6) and np.isnan(boxes[0, 5])
    assert read_boxes_csv(write_boxes_csv(tmp_path / "e.csv", [])).shape == (0, 6)


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(
    boxes=arrays(np.float64, st.tuples(st.integers(0, 5), st.just(5)), elements=finite),
    slices=st.lists(st.integers(0, 500), min_size=5, max_size=5),
)
def test_boxes_csv_round_trip(tmp_path_factory, boxes, slices):
    boxes[:, 0] = slices[: len(boxes)]
    scores = np.linspace(0, 1, len(boxes))
    rows = np.column_stack([boxes, scores])
    path = tmp_path_factory.mktemp("csv") / "boxes.csv"
    np.testing.assert_array_equal(read_boxes_csv(write_boxes_csv(path, rows)), rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "expected the header line slice,y1,x1,y2,x2,score"),
        ("slice,y1,x1,y2,x2,score\n1,2,3\n", "line 2"),
        ("slice,y1,x1,y2,x2,score\n1,2,3,4,x,1\n", "line 2"),
    ],
)
def test_read_boxes_csv_names_the_problem(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_boxes_csv(path)


def test_labels_writer_uses_layer_scale(tmp_path):
    labels = np.zeros((3, 16, 16), np.uint8)
    labels[1, 4:8, 4:8] = 1
    [written] = write_labels(str(tmp_path / "l.tif"), labels, {"scale": (2.0, 0.5, 0.25)})
    vol = read_volume(written)
    np.testing.assert_array_equal(vol.data, labels)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.5, 0.25))


def test_labels_writer_2d_and_multiscale(tmp_path):
    labels = np.eye(16, dtype=np.uint8)
    [flat] = write_labels(str(tmp_path / "a.tif"), labels, {"scale": (0.5, 0.25)})
    np.testing.assert_allclose(read_volume(flat).spacing, (1.0, 0.5, 0.25))
    meta = {"scale": (1, 1), "multiscale": True}
    [multi] = write_labels(str(tmp_path / "b.tif"), [labels, labels[::2, ::2]], meta)
    np.testing.assert_array_equal(read_volume(multi).data[0], labels)


def test_boxes_writer_3d_rectangles_with_scores(tmp_path):
    rect = np.array([[4, 10, 20], [4, 10, 40], [4, 30, 40], [4, 30, 20]], float)
    shapes = [rect, rect[:, [0, 2, 1]] + [3, 0, 0]]
    [written] = write_boxes(str(tmp_path / "b.csv"), shapes, {"features": {"score": [0.9, 0.5]}})
    np.testing.assert_array_equal(
        read_boxes_csv(written), [[4, 10, 20, 30, 40, 0.9], [7, 20, 10, 40, 30, 0.5]]
    )


def test_boxes_writer_2d_without_scores(tmp_path):
    rect = np.array([[10, 20], [10, 40], [30, 40], [30, 20]], float)
    [written] = write_boxes(str(tmp_path / "b.csv"), [rect], {})
    [row] = read_boxes_csv(written)
    np.testing.assert_array_equal(row[:5], [0, 10, 20, 30, 40])
    assert np.isnan(row[5])


def test_boxes_writer_refuses_shapes_across_slices(tmp_path):
    tilted = np.array([[1, 10, 20], [2, 10, 40], [2, 30, 40], [1, 30, 20]], float)
    with pytest.raises(ValueError, match=r"Shape 0 spans slices \[1\.0, 2\.0\]"):
        write_boxes(str(tmp_path / "b.csv"), [tilted], {})


def test_writers_through_napari_save(tmp_path, roiseg_plugin):
    """The manifest's writers are what napari picks for labels (.tif) and shapes (.csv)."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    labels = viewer.add_labels(np.eye(16, dtype=np.uint8)[None].repeat(2, 0), scale=(3, 1, 1))
    rect = np.array([[1, 2, 3], [1, 2, 9], [1, 8, 9], [1, 8, 3]], float)
    shapes = viewer.add_shapes([rect], shape_type="rectangle", features={"score": [0.75]})
    viewer.layers.selection = {labels}
    assert viewer.layers.save(str(tmp_path / "labels.tif"), selected=True, plugin="napari-roiseg")
    np.testing.assert_allclose(read_volume(tmp_path / "labels.tif").spacing, (3, 1, 1))
    np.testing.assert_array_equal(read_volume(tmp_path / "labels.tif").data, labels.data)
    viewer.layers.selection = {shapes}
    assert viewer.layers.save(str(tmp_path / "boxes.csv"), selected=True, plugin="napari-roiseg")
    np.testing.assert_array_equal(read_boxes_csv(tmp_path / "boxes.csv"), [[1, 2, 3, 8, 9, 0.75]])
