"""The Review dock widget on a small phantom segmented by a small untrained model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# At collection, before any test draws with OpenGL: see api.prepare_torch_import.
pytest.importorskip("torchvision")

from napari_roiseg._widgets.review_widget import NEXT_KEY, PREVIOUS_KEY, ReviewWidget  # noqa: E402
from napari_roiseg.project.history import CorrectionHistory  # noqa: E402
from napari_roiseg.layers import STATS_KEY  # noqa: E402
from napari_roiseg.project import Project  # noqa: E402


@pytest.fixture(scope="module")
def segmentation(phantom, untrained_model):
    from napari_roiseg.segment import segment_array

    return segment_array(phantom.volume, untrained_model(), device="cpu", batch_size=4)


@pytest.fixture
def setup(make_napari_viewer, phantom, segmentation, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    labels = viewer.add_labels(segmentation.labels.copy(), name="hip mask", scale=phantom.spacing,
                               metadata={STATS_KEY: segmentation.stats,
                                         "roiseg_prediction": segmentation.labels})
    widget = ReviewWidget(viewer, project=tmp_path / "proj")
    viewer.window.add_dock_widget(widget, name="Review queue")
    widget.select(image, labels)
    widget.refresh_scores()
    return viewer, image, labels, widget


def test_queue_click_plot_and_shortcuts(setup, qtbot):
    viewer, image, labels, widget = setup
    scores = widget.scores
    assert widget.table.rowCount() == len(image.data) and "model scores" in widget.review._summary.value
    shown = [int(widget.table.item(r, 1).text()) for r in range(widget.table.rowCount())]
    assert shown == scores.order.tolist()

    widget.table.cellClicked.emit(2, 0)  # click the third row
    assert widget.current_slice() == scores.order[2]
    assert list(widget.canvas._line.get_xdata()) == [scores.order[2]] * 2  # plot follows

    widget.canvas._clicked(SimpleNamespace(xdata=7.2))  # click on the plot near slice 7
    assert widget.current_slice() == 7

    assert widget.shortcuts[NEXT_KEY].key().toString() == "J"
    assert widget.shortcuts[PREVIOUS_KEY].key().toString() == "K"
    widget.review._pos = 2
    widget.shortcuts[NEXT_KEY].activated.emit()
    assert widget.current_slice() == scores.order[3]
    widget.shortcuts[PREVIOUS_KEY].activated.emit()
    assert widget.current_slice() == scores.order[2]


def test_marks_skip_and_persist(setup, make_napari_viewer, phantom, segmentation):
    viewer, image, labels, widget = setup
    order = widget.scores.order.tolist()
    widget.go_to(order[1])
    widget.mark_current("reviewed")
    widget.go_to(order[0])
    labels.data[order[0]] = phantom.labels[order[0]]  # the annotator fixes the slice
    record = widget.mark_current("corrected")
    assert record["slice"] == order[0] and 0 <= record["dice"] <= 1
    assert record["version"] is None  # no model version in this project yet
    widget.review._pos = -1
    assert widget.step(1) == order[2]  # marked slices are skipped
    marks_col = {int(widget.table.item(r, 1).text()): widget.table.item(r, 4).text()
                 for r in range(widget.table.rowCount())}
    assert marks_col[order[0]] == "corrected" and marks_col[order[1]] == "reviewed"

    labels.data[order[3]] = 0 if labels.data[order[3]].any() else phantom.labels[order[3]]
    labels.data[order[3], 0, 0] = 1  # make sure the slice differs from the prediction
    assert order[3] in widget.record_edits()

    folder = widget.project.folder
    viewer.close()
    viewer2 = make_napari_viewer()  # a new session: the marks are back
    viewer2.add_image(phantom.volume, name="hip")
    viewer2.add_labels(segmentation.labels.copy(), name="hip mask",
                       metadata={STATS_KEY: segmentation.stats})
    again = ReviewWidget(viewer2, project=folder)
    again.select(viewer2.layers["hip"], viewer2.layers["hip mask"])
    again.refresh_scores()
    assert again.marks == {order[0]: "corrected", order[1]: "reviewed", order[3]: "corrected"}
    saved = CorrectionHistory(folder).load_record("c0001")
    assert np.array_equal(saved["correction"], phantom.labels[order[0]] != 0)
    assert np.array_equal(saved["prediction"], segmentation.labels[order[0]])


def test_fallback_scores_from_mask_and_boxes(make_napari_viewer, phantom, segmentation, tmp_path):
    from napari_roiseg.layers import add_boxes_layer

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    labels = viewer.add_labels(segmentation.labels.copy(), name="painted mask")
    boxes = add_boxes_layer(viewer, segmentation.boxes)
    widget = ReviewWidget(viewer, project=tmp_path / "p")
    widget.select(image, labels, boxes)
    scores = widget.refresh_scores()
    assert "no probabilities" in widget.review._summary.value
    assert np.isfinite(scores.score).all() and not scores.z["entropy"].any()


def test_gate_compare_and_report(setup, untrained_model, phantom, tmp_path):
    viewer, image, labels, widget = setup
    project: Project = widget.project
    good, blank = untrained_model(), untrained_model()
    with torch.no_grad():
        blank.head.score.bias[:] = torch.tensor([5.0, -5.0])
    project.add_version(good, {"parent": None})
    project.add_version(blank, {"parent": "v000"}, make_current=False)
    filled = [k for k in range(len(labels.data)) if labels.data[k].any()]
    for k in filled[:4]:  # "corrections" equal to v000's output
        widget.history.record(k, labels.data[k], labels.data[k])
    locked = widget.lock(sync=True)
    assert locked and set(locked) <= set(filled[:4])

    widget.gate_panel._candidate.reset_choices()
    widget.gate_panel._candidate.value = "v001"
    changes = []
    widget.session.events.model.connect(changes.append)
    decision = widget.gate(sync=True)
    assert not decision.accepted and project.current_version == "v000"
    assert widget.gate_panel._override_button.enabled and "rejected" in widget.gate_panel._gate_info.value
    widget.gate_panel._reason.value = "testing the override"
    decision = widget.gate(override=widget.gate_panel._reason.value, sync=True)
    assert decision.accepted and decision.override["why"] == "testing the override"
    assert "v001" in changes[-1] and project.current_version == "v001"

    project.set_current("v000")
    widget.go_to(filled[0])
    shown = widget.compare(sync=True)
    assert shown["candidate"]["area"] == 0 and shown["current"]["area"] > 0
    names = {layer.name for layer in viewer.layers}
    assert {"compare mask", "compare boxes"} <= names and not any(
        n.startswith("compare candidate") or n.startswith("compare current") for n in names)
    from napari_roiseg._widgets.compare_layers import BOTH, CANDIDATE_ONLY, CURRENT_ONLY

    diff = viewer.layers["compare mask"]  # slice filled[0] only, placed on it
    assert diff.data.shape[0] == 1
    # the candidate paints nothing here: every pixel shown is the current version's alone
    assert (diff.data[0] == CURRENT_ONLY).sum() == shown["current"]["area"]
    assert not np.isin(diff.data[0], [BOTH, CANDIDATE_ONLY]).any()
    assert diff.metadata["slice"] == filled[0]
    assert diff.metadata["roiseg_versions"] == {"candidate": "v001", "current": "v000"}
    boxes = viewer.layers["compare boxes"]
    assert len(boxes.data) == shown["candidate"]["boxes"] + shown["current"]["boxes"]
    np.testing.assert_allclose(diff.data_to_world((0, 0, 0)),
                               image.data_to_world((filled[0], 0, 0)))

    paths = widget.export_report(tmp_path / "report", sync=True)
    page = paths["html"].read_text()
    assert "testing the override" in page and "data:image/png;base64," in page


def test_keys_pressed_on_the_canvas_walk_the_queue(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    lab = np.zeros((10, 30, 30), np.uint8)
    lab[2:8, 5:15, 5:15] = 1
    lab[5] = 0  # a gap in the run: first in the queue
    image = viewer.add_image(np.random.default_rng(0).random((10, 30, 30)))
    labels = viewer.add_labels(lab)
    widget = ReviewWidget(viewer, project=tmp_path / "p")
    viewer.window.add_dock_widget(widget)
    widget.select(image, labels)
    order = widget.refresh_scores().order.tolist()
    assert order[0] == 5
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_J)
    assert widget.current_slice() == 5
    qtbot.keyClick(canvas, Qt.Key.Key_J)
    assert widget.current_slice() == order[1]
    qtbot.keyClick(canvas, Qt.Key.Key_K)
    assert widget.current_slice() == 5


def test_finetune_widget_holds_the_locked_set_out(make_napari_viewer, phantom, segmentation,
                                                  untrained_model, tmp_path):
    from napari_roiseg._widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    labels = viewer.add_labels(segmentation.labels.copy(), name="hip mask",
                               metadata={"roiseg_prediction": segmentation.labels})
    history = CorrectionHistory(tmp_path / "proj")
    history.lock(phantom.volume, phantom.labels, [6])
    tune = FinetuneWidget(viewer, model=untrained_model(), project=tmp_path / "proj")
    tune.select(image, labels)
    for k in (1, 2, 3, 5, 6, 7, 9, 10):
        labels.data[k] = phantom.labels[k]
        labels.data[k, 0, 0] = 1  # differs from the prediction: a correction
    tune.refresh_corrections(save=False)
    plan = tune.plan()
    # the locked slice and its neighbours: neither trained on nor used to pick the weights
    assert not {5, 6, 7} & (set(plan.train) | set(plan.validation))
    assert plan.validation and set(plan.train) | set(plan.validation) <= {1, 2, 3, 9, 10}
    # typed slice lists cannot bring the locked slice back either
    tune.correct._train_text.value, tune.correct._val_text.value = "1, 2, 6, 9", "7, 10"
    plan = tune.plan()
    assert not {5, 6, 7} & (set(plan.train) | set(plan.validation))
    # (9 is dropped too: next to the validation slice 10)
    assert set(plan.train) == {1, 2} and set(plan.validation) == {10}


# --------------------------------------------------------------------------- the model's
# prediction, the locked set's references, the run lock, closing the widget


def test_segment_widget_layers_give_the_model_prediction(make_napari_viewer, phantom,
                                                         segmentation, tmp_path):
    """A layer made by the Segment widget (ResultLayers) carries the model's output: edits made
    before "Score slices" are not mistaken for the prediction."""
    from napari_roiseg.layers import ResultLayers

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    out = ResultLayers(viewer, image)
    out.prepare(segmentation.labels)
    out.write_slices(segmentation.labels, range(len(segmentation.labels)))
    out.set_stats(segmentation.stats)
    layer = out.labels_layer
    k = int(np.flatnonzero(segmentation.labels.any(axis=(1, 2)))[0])
    layer.data[k] = 0  # fixed before the slices were scored
    widget = ReviewWidget(viewer, project=tmp_path / "proj")
    widget.select(image, layer)
    widget.refresh_scores()
    assert np.array_equal(widget.prediction(), segmentation.labels)
    record = widget.record_slice(k)
    assert record["prediction_area"] == int(segmentation.labels[k].sum()) > 0
    assert record["correction_area"] == 0


def test_snapshots_are_kept_per_mask_layer(make_napari_viewer, phantom, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    first = viewer.add_labels(np.zeros(phantom.volume.shape, np.uint8), name="a")
    second = viewer.add_labels((phantom.labels != 0).astype(np.uint8), name="b")
    widget = ReviewWidget(viewer, project=tmp_path / "proj")
    widget.select(image, first)
    widget.refresh_scores()
    widget.select(image, second)  # another mask layer of the same shape
    assert widget.prediction() is None  # not scored yet: never the other layer's snapshot
    widget.refresh_scores()
    assert np.array_equal(widget.prediction(), phantom.labels != 0)
    widget.select(image, first)
    assert not widget.prediction().any()
    viewer.layers.remove(first)
    assert len(widget.snapshots) == 1  # a removed layer's snapshot goes with it


def test_lock_uses_the_saved_corrections(setup, phantom, segmentation):
    """The locked set's reference masks are the annotator's saved corrections, not the
    (uncorrected) mask layer that happens to be chosen."""
    from napari_roiseg.project.corrections import Corrections

    _, _, labels, widget = setup
    fixed = segmentation.labels.copy()
    corrected = [1, 2, 3, 6, 9, 10]
    fixed[corrected] = phantom.labels[corrected] != 0
    widget.project.save_corrections(fixed, Corrections(len(fixed), detected=corrected),
                                    segmentation.labels)
    assert not np.array_equal(fixed[corrected], labels.data[corrected])
    locked = widget.lock(sync=True)
    assert locked and set(locked) <= set(corrected)
    _, truth = widget.history.locked_data()
    assert np.array_equal(truth, fixed[locked])
    # a slice corrected only in the history: its recorded fix; one edited in the layer: the layer
    k_hist, k_layer = 4, 5
    fix = np.zeros_like(fixed[k_hist])
    fix[10:20, 10:20] = 1
    widget.history.record(k_hist, segmentation.labels[k_hist], fix)
    labels.data[k_layer] = 0
    labels.data[k_layer, 0:5, 0:5] = 1
    refs = widget.reference_masks([1, k_hist, k_layer])
    assert np.array_equal(refs[1], fixed[1]) and np.array_equal(refs[k_hist], fix)
    assert np.array_equal(refs[k_layer], labels.data[k_layer])


def _two_versions_and_four_records(widget, labels, untrained_model) -> list[int]:
    """v000 current, v001 a candidate; the first four slices with a mask recorded as
    corrections (unchanged). Returns the slices with a mask."""
    widget.project.add_version(untrained_model(), {"parent": None})
    widget.project.add_version(untrained_model(), {"parent": "v000"}, make_current=False)
    filled = [k for k in range(len(labels.data)) if labels.data[k].any()]
    for k in filled[:4]:
        widget.history.record(k, labels.data[k], labels.data[k])
    return filled


def test_gate_compare_and_lock_wait_for_a_run(setup, untrained_model, monkeypatch):
    from napari_roiseg import busy
    from napari_roiseg._widgets import gate_panel

    viewer, _, labels, widget = setup
    filled = _two_versions_and_four_records(widget, labels, untrained_model)
    widget.gate_panel._candidate.reset_choices()
    widget.gate_panel._candidate.value = "v001"
    errors = []
    monkeypatch.setattr(gate_panel, "show_error", errors.append)
    token = busy.try_acquire("segmenting 'hip'")
    try:
        assert widget.lock(sync=True) == [] and widget.gate(sync=True) is None and widget.compare(sync=True) == {}
    finally:
        token.release()
    assert len(errors) == 3 and all("segmenting 'hip'" in e for e in errors)
    assert not widget.history.locked and not widget.history.decisions
    assert not any(layer.name.startswith("compare ") for layer in viewer.layers)
    assert widget.lock(sync=True) and widget.gate(sync=True) is not None  # once the run is over
    assert busy.running() is None


def test_closing_the_widget_gives_the_keys_back(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import QCoreApplication, QEvent, Qt

    viewer = make_napari_viewer(show=True)
    pressed = []

    def own_j(_viewer):
        pressed.append("J")

    viewer.bind_key("J", own_j)
    image = viewer.add_image(np.random.default_rng(0).random((6, 20, 20)))
    lab = np.zeros((6, 20, 20), np.uint8)
    lab[1:5, 5:10, 5:10] = 1
    labels = viewer.add_labels(lab)
    widget = ReviewWidget(viewer, project=tmp_path / "p")
    viewer.window.add_dock_widget(widget, name="Review queue")
    widget.select(image, labels)
    widget.refresh_scores()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_J)
    assert not pressed  # the Review widget has J while it is open

    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    widget.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    qtbot.wait(10)
    before = viewer.dims.current_step
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_J)  # no error from a deleted widget
    qtbot.keyClick(canvas, Qt.Key.Key_K)
    assert pressed == ["J"] and viewer.dims.current_step == before
    viewer.add_labels(lab, name="later")  # layer events no longer reach the widget
    viewer.dims.set_current_step(0, 3)


def test_close_restores_an_unbound_key(make_napari_viewer, tmp_path):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, project=tmp_path / "p")
    assert coerce_keybinding("K") in viewer.keymap
    widget.close()
    assert coerce_keybinding("K") not in viewer.keymap
    assert coerce_keybinding("J") not in viewer.keymap


def test_finetune_resegmentation_carries_the_review_stats(make_napari_viewer, phantom,
                                                          untrained_model, tmp_path):
    from napari_roiseg._widgets.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    tune = FinetuneWidget(viewer, model=untrained_model(), project=tmp_path / "proj")
    tune.select(image)
    tune.segment(sync=True)
    layer = tune.last_segmentation["layer"]
    assert len(layer.metadata[STATS_KEY]) == len(phantom.volume)
    review = ReviewWidget(viewer, project=tmp_path / "proj")
    review.select(image, layer)
    review.refresh_scores()
    assert "model scores" in review.review._summary.value


def test_gate_and_compare_run_in_workers(setup, untrained_model, qtbot):
    """The buttons' path: gate and compare return a worker at once, hold the run lock while it
    runs, and show their result when it is done (the compare layers one turn at a time)."""
    from napari_roiseg import busy

    viewer, _, labels, widget = setup
    filled = _two_versions_and_four_records(widget, labels, untrained_model)
    assert widget.lock(sync=True)
    widget.gate_panel.follow_session()
    assert widget.gate_panel._candidate.value == "v001"
    worker = widget.gate()
    assert worker is not None and busy.running() == "gating v001"
    qtbot.waitUntil(lambda: busy.running() is None and widget.decision is not None,
                    timeout=60_000)
    assert widget.decision.candidate == "v001" and "v001" in widget.gate_panel._gate_info.value
    widget.go_to(filled[0])
    assert widget.compare() is not None
    qtbot.waitUntil(lambda: "compare boxes" in viewer.layers
                    and not widget.gate_panel.compare_view.pending
                    and "slice" in widget.gate_panel._gate_info.value, timeout=60_000)
    assert busy.running() is None
    assert viewer.layers["compare mask"].metadata["slice"] == filled[0]
