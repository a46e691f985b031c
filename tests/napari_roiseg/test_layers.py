"""napari_roiseg.layers: exact box conversions and filtering, then the layers in a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_roiseg.layers import (
    PREDICTION_KEY,
    STATS_KEY,
    ResultLayers,
    add_result_layers,
    box_features,
    box_rectangles,
    filter_boxes,
    image_array,
    plane_shown,
)

# rows: slice, y1, x1, y2, x2, score
BOXES = np.array([
    [1, 10, 20, 30, 40, 0.40],
    [0, 1, 2, 3, 4, 0.90],
    [1, 11, 21, 31, 41, 0.95],
    [1, 12, 22, 32, 42, 0.70],
    [0, 5, 6, 7, 8, 0.60],
    [1, 13, 23, 33, 43, 0.70],
], np.float32)


def test_box_rectangles_3d_exact():
    rect = box_rectangles(BOXES[:1])
    assert rect.shape == (1, 4, 3)
    np.testing.assert_array_equal(rect[0], [[1, 10, 20], [1, 10, 40], [1, 30, 40], [1, 30, 20]])


def test_box_rectangles_2d_drops_slice():
    rect = box_rectangles(BOXES[1:2], ndim=2)
    np.testing.assert_array_equal(rect[0], [[1, 2], [1, 4], [3, 4], [3, 2]])


def test_box_rectangles_empty_and_bad_shape():
    assert box_rectangles(np.zeros((0, 6))).shape == (0, 4, 3)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        box_rectangles(np.zeros((3, 5)))


def test_box_features():
    f = box_features(BOXES[:2])
    np.testing.assert_allclose(f["score"], [0.4, 0.9], rtol=1e-6)
    assert f["slice"].tolist() == [1, 0] and f["slice"].dtype.kind == "i"


def test_filter_boxes_threshold_and_top_k_exact():
    out = filter_boxes(BOXES, score_threshold=0.5, top_k=2)
    # slice 0: 0.90, 0.60; slice 1: 0.95, then the first of the two 0.70 rows (input order)
    np.testing.assert_array_equal(out, BOXES[[1, 4, 2, 3]])


def test_filter_boxes_no_limits_sorts_by_slice_then_score():
    out = filter_boxes(BOXES, score_threshold=None, top_k=None)
    np.testing.assert_array_equal(out, BOXES[[1, 4, 2, 3, 5, 0]])


def test_filter_boxes_edges():
    assert filter_boxes(BOXES, 0.96, None).shape == (0, 6)
    assert filter_boxes(BOXES, None, 0).shape == (0, 6)
    assert filter_boxes(np.zeros((0, 6)), 0.5, 3).shape == (0, 6)
    np.testing.assert_array_equal(filter_boxes(BOXES, 0.95, 1), BOXES[[2]])  # >= threshold
    with pytest.raises(ValueError, match="top_k"):
        filter_boxes(BOXES, 0.5, -1)


def test_image_array_accepts_arrays_and_rejects_other_shapes():
    data, layer = image_array(np.zeros((2, 20, 20)))
    assert data.shape == (2, 20, 20) and layer is None
    with pytest.raises(ValueError, match="slices, height, width"):
        image_array(np.zeros((2, 2, 20, 20)))


# --------------------------------------------------------------------------- in a viewer


def test_result_layers_follow_image_and_keep_edits(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 32, 24), np.uint8), name="vol", scale=(2.5, 1, 0.5),
                             translate=(3, 0, 1))
    out = ResultLayers(viewer, image)
    labels = np.zeros((4, 32, 24), np.uint8)
    assert out.prepare(labels) is None
    labels[2, 5:9, 5:9] = 1
    out.write_slices(labels, [2])
    first = out.labels_layer
    assert first.name == "vol mask" and first.data[2].sum() == 16
    np.testing.assert_array_equal(first.scale, image.scale)
    np.testing.assert_array_equal(first.translate, image.translate)

    assert out.show_boxes(BOXES, 0.5, 1) == 2
    shapes = out.boxes_layer
    np.testing.assert_array_equal(shapes.scale, image.scale)
    assert [int(v[0, 0]) for v in shapes.data] == shapes.features["slice"].tolist() == [0, 1]
    assert out.show_boxes(BOXES, 0.0, 10) == 6 and shapes.nshapes == 6
    assert out.boxes_layer is shapes  # updated in place

    # unedited: the next run writes in place
    assert out.prepare(labels) is None and out.labels_layer is first
    # painted on: the next run goes to a new layer and the edit stays
    first.data[0, 0, 0] = 1
    message = out.prepare(labels)
    assert message and "vol mask" in message
    assert out.labels_layer is not first and first.data[0, 0, 0] == 1
    np.testing.assert_array_equal(out.labels_layer.data, labels)


def test_add_result_layers_2d(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 24), np.float32), name="frame")
    labels = np.zeros((32, 24), np.uint8)
    lab, shp = add_result_layers(viewer, image, labels, BOXES[1:2])
    assert lab.data.shape == (32, 24) and lab.data is not labels
    assert shp.ndim == 2 and shp.nshapes == 1
    np.testing.assert_array_equal(shp.data[0], [[1, 2], [1, 4], [3, 4], [3, 2]])


def test_added_boxes_equal_drawing_them_at_once(make_napari_viewer):
    """ResultLayers.add_boxes, slice group by slice group, ends with the same rectangles,
    features, colours and score text as one show_boxes of every row."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint8), name="vol")
    rows = np.concatenate([BOXES, BOXES + [2, 5, 5, 5, 5, 0]])  # slices 0-3
    out = ResultLayers(viewer, image)
    assert out.add_boxes(rows[:0]) == 0 and out.boxes_alive and out.boxes_layer.nshapes == 0
    for group in ((0,), (1, 2), (3,)):
        out.add_boxes(rows[np.isin(rows[:, 0], group)], 0.5, 2)
    layer = out.boxes_layer
    added = ([v.copy() for v in layer.data], layer.features.to_numpy().copy(),
             layer.edge_color.copy(), list(layer.text.values))
    assert out.show_boxes(rows, 0.5, 2) == len(filter_boxes(rows, 0.5, 2)) == len(added[0]) == 8
    for a, b in zip(added[0], layer.data):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(added[1], layer.features.to_numpy())
    np.testing.assert_allclose(added[2], layer.edge_color)
    assert added[3] == list(layer.text.values) and "0.95" in added[3]


def test_add_result_layers_fills_empty_layers_of_its_names(make_napari_viewer):
    """Empty layers of the result names (the Segment dock makes them when an image is chosen)
    are filled, not duplicated; a layer with anything in it is never touched."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((2, 16, 12), np.uint8), name="vol", scale=(3, 1, 1))
    out = ResultLayers(viewer, image)
    out.prepare(np.zeros((2, 16, 12), np.uint8))
    out.show_boxes(BOXES[:0])
    labels = np.zeros((2, 16, 12), np.uint8)
    labels[1, 2:5, 2:5] = 1
    lab, shp = add_result_layers(viewer, image, labels, BOXES)
    assert lab is out.labels_layer and shp is out.boxes_layer and len(viewer.layers) == 3
    np.testing.assert_array_equal(lab.data, labels)
    np.testing.assert_array_equal(lab.metadata[PREDICTION_KEY], labels)
    assert shp.nshapes == len(filter_boxes(BOXES))
    lab2, shp2 = add_result_layers(viewer, image, labels, BOXES)  # now neither is empty
    assert lab2 is not lab and shp2 is not shp and lab2.name == "vol mask [1]"
    np.testing.assert_array_equal(lab.data, labels)
    assert out.labels_edited()  # the widget's next run keeps these results and makes a new layer


def test_result_layers_keep_the_model_prediction(make_napari_viewer):
    """The mask layer carries the model's output (what corrections are compared with), kept up
    to date as slices are written, untouched by painting; the very array written, not a copy."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 16, 12), np.uint8), name="vol")
    out = ResultLayers(viewer, image)
    labels = np.zeros((4, 16, 12), np.uint8)
    out.prepare(labels)
    labels[1, 2:6, 2:6] = 1
    out.write_slices(labels, [1])
    layer = out.labels_layer
    out.set_stats(np.zeros(4))
    prediction = layer.metadata[PREDICTION_KEY]
    assert prediction is out._written  # no extra copy of the volume
    np.testing.assert_array_equal(prediction, labels)
    layer.data[1, 2:4, 2:6] = 0  # the annotator fixes slice 1 ...
    labels[3, 0:3, 0:3] = 1
    out.write_slices(labels, [3])  # ... while the run writes slice 3 into the same layer
    assert out.labels_layer is layer and STATS_KEY in layer.metadata
    np.testing.assert_array_equal(layer.metadata[PREDICTION_KEY], labels)  # the model's, unfixed
    assert layer.data[1].sum() == 8
    # an edited slice rewritten: the new layer has its own prediction, the old one keeps its own
    labels[1, 8:10, 8:10] = 1
    out.write_slices(labels, [1])
    assert out.labels_layer is not layer
    np.testing.assert_array_equal(out.labels_layer.metadata[PREDICTION_KEY], labels)
    assert layer.metadata[PREDICTION_KEY][1].sum() == 16


def test_add_result_layers_store_the_prediction(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((3, 16, 12), np.uint8), name="vol")
    labels = np.zeros((3, 16, 12), np.uint8)
    labels[1, 2:6, 2:6] = 1
    lab, _ = add_result_layers(viewer, image, labels, BOXES[:0], stats=np.zeros(3))
    lab.data[1] = 0  # painting changes neither the prediction nor the caller's array
    prediction = lab.metadata[PREDICTION_KEY]
    assert prediction.shape == (3, 16, 12) and prediction[1].sum() == 16 and labels[1].sum() == 16
    assert not prediction.flags.writeable
    frame = viewer.add_image(np.zeros((16, 12), np.float32), name="frame")
    lab2, _ = add_result_layers(viewer, frame, labels[1], BOXES[:0])
    assert lab2.metadata[PREDICTION_KEY].shape == (1, 16, 12)  # (S, H, W), as the widgets read it


def test_slices_written_out_of_sight_are_not_redrawn(make_napari_viewer):
    """A volume run writes batch after batch; the mask is redrawn only for a batch holding the
    slice shown (in world coordinates: scaled and shifted), and always in a 3D view."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((6, 16, 12), np.uint8), name="vol", scale=(2.0, 1, 1),
                             translate=(4, 0, 0))
    out = ResultLayers(viewer, image)
    labels = np.ones((6, 16, 12), np.uint8)
    out.prepare(np.zeros_like(labels))
    viewer.dims.set_point(0, image.data_to_world((3, 0, 0))[0])
    assert plane_shown(viewer, out.labels_layer) == plane_shown(viewer, image) == 3
    refreshed = []
    out.labels_layer.refresh = lambda *a, **k: refreshed.append(1)
    out.write_slices(labels, [0, 1])
    assert not refreshed
    out.write_slices(labels, [2, 3])
    assert len(refreshed) == 1
    np.testing.assert_array_equal(out.labels_layer.data[:4], labels[:4])  # all written
    viewer.dims.ndisplay = 3
    assert plane_shown(viewer, image) is None
    out.write_slices(labels, [5])
    assert len(refreshed) == 2
