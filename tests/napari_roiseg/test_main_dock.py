"""The whole loop in the main dock, choosing the image and the model once: open a volume,
segment, correct two slices, fine-tune, see the new version used by the next segmentation,
review, gate."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")  # before any OpenGL canvas: see api.prepare_torch_import

from napari_roiseg._widgets import RoisegDock  # noqa: E402


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_the_whole_loop_in_one_dock(make_napari_viewer, phantom, untrained_model, tmp_path):
    path = tmp_path / "hip.tif"
    tifffile.imwrite(path, phantom.volume, imagej=True, metadata={"axes": "ZYX"})
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="napari-roiseg")  # open a volume
    start = untrained_model()
    dock = RoisegDock(viewer, model=start, project=tmp_path / "hip.roiseg")
    viewer.window.add_dock_widget(dock, name="ROI Seg")
    session = dock.session
    assert session.image_layer is image  # chosen once, for every step

    # Segment
    dock.segment.run_volume(sync=True)
    mask = session.mask_layer
    assert mask is not None and mask.name == "hip mask" and mask.data.any()
    assert dock.pickers.combos["mask"].value is mask

    # Correct two slices (the untrained model is wrong on them)
    dock.show_step("Correct")
    all_wrong = [k for k in range(len(image.data))
                 if not np.array_equal(mask.data[k] != 0, phantom.labels[k] != 0)]
    assert len(all_wrong) >= 3
    wrong = [all_wrong[0], all_wrong[-1]]
    for k in wrong:
        mask.data[k] = phantom.labels[k]
    mask.refresh()
    assert dock.correct.refresh_corrections() == wrong
    corrected = mask.data.copy()

    # Fine-tune: from the model chosen at the start, saved as v000
    dock.show_step("Fine-tune")
    dock.correct._val_text.value = "none"
    dock.tune._amount.value, dock.tune._batch.value, dock.tune._lr.value = 2, 1, 1e-3
    dock.tune.start(sync=True)
    result = dock.tune.last_result
    project = session.project
    assert result.version == "v001" == project.current_version
    assert project.versions["v001"]["parent"] == "v000"
    assert not _same_weights(result.model, start)
    assert session.loaded_model() is result.model  # every step's next run uses it
    assert "v001" in dock.model_panel.model_text

    # The next segmentation uses v001, and leaves the corrected labels alone
    calls = []
    result.model.register_forward_pre_hook(lambda *_: calls.append(1))
    dock.readout.segment(sync=True)
    new = dock.readout.last_segmentation["layer"]
    assert calls and new is not mask and new.metadata["roiseg_version"] == "v001"
    np.testing.assert_array_equal(mask.data, corrected)
    assert session.mask_layer is mask  # the layer being corrected stays the one reviewed

    # Review: the queue, the corrections recorded, a locked set, the gate
    dock.show_step("Review")
    scores = dock.review.refresh_scores()
    assert scores is not None and scores.n_slices == len(image.data)
    assert dock.review.record_edits() == wrong
    third = all_wrong[len(all_wrong) // 2]  # the queue shows one more slice to fix
    dock.review.go_to(third)
    mask.data[third] = phantom.labels[third]
    mask.refresh()
    assert dock.review.mark_current("corrected")["slice"] == third
    locked = dock.gate_panel.lock(sync=True)
    assert locked and set(locked) <= {*wrong, third}
    dock.gate_panel.follow_session()
    assert dock.gate_panel._candidate.value == "v001"
    decision = dock.gate_panel.gate(sync=True)
    assert decision is not None and decision.candidate == "v001"
    assert decision.current == "v000"
    winner = "v001" if decision.accepted else "v000"
    assert project.current_version == winner
    # whatever the gate decided is what the next segmentation uses
    assert _same_weights(session.model(), project.load_version(winner))
    assert winner in dock.model_panel.model_text


def test_main_dock_fits_a_1080p_screen(make_napari_viewer, phantom):
    viewer = make_napari_viewer()
    viewer.add_image(phantom.volume, name="hip")
    dock = RoisegDock(viewer)
    viewer.window.add_dock_widget(dock, name="ROI Seg")
    # napari's title bar, menus and the dock's title leave about 950 px of a 1080 px screen
    assert dock.minimumSizeHint().height() <= 900
    for step in range(dock.steps.count()):  # each step scrolls on its own when it is long
        assert dock.steps.widget(step).widgetResizable()


def test_single_step_docks_share_the_session(make_napari_viewer, phantom, untrained_model,
                                             tmp_path):
    """The image chosen in one dock and a version made current in another are the same
    everywhere: the docks keep no copies."""
    from napari_roiseg._widgets import FinetuneWidget, ReviewWidget, SegmentWidget

    viewer = make_napari_viewer()
    a = viewer.add_image(phantom.volume, name="a")
    b = viewer.add_image(phantom.volume[:, ::-1].copy(), name="b")
    seg = SegmentWidget(viewer, model=untrained_model())
    tune = FinetuneWidget(viewer, project=tmp_path / "proj")
    review = ReviewWidget(viewer)
    assert seg.image_layer is tune.image_layer is review.image_layer is a
    seg.image_layer = b
    assert tune.pickers.combos["image"].value is b and review.pickers.combos["image"].value is b
    tune.session.project.add_version(untrained_model(), {"parent": None, "source": "test"})
    other = untrained_model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    tune.session.project.add_version(other, {"parent": "v000", "source": "test"})
    tune.use_version("v001")
    assert "project version v001" in seg.model_text
    assert _same_weights(seg.session.model(), other)


def test_closing_a_dock_disconnects_what_it_connected(make_napari_viewer, phantom, tmp_path):
    """Every viewer and session event a dock connects is disconnected when it closes."""
    from napari_roiseg._widgets import FinetuneWidget, SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(phantom.volume, name="hip")

    def counts() -> list[int]:
        events = viewer.layers.events
        return [len(e.callbacks) for e in (events.inserted, events.removed,
                                           viewer.dims.events.current_step)]

    before = counts()
    docks = [SegmentWidget(viewer), FinetuneWidget(viewer, project=tmp_path / "p"),
             RoisegDock(viewer)]
    session = docks[0].session
    assert counts() != before
    for dock in docks:
        dock.close()
    assert counts() == before
    assert len(session.events.layers) == 0 and len(session.events.model) == 0


def test_a_run_alone_makes_no_project_folder(make_napari_viewer, phantom, untrained_model,
                                             qtbot, monkeypatch, tmp_path):
    """The Correct step watches the mask; a model's run writing into it is no correction, so
    no project folder is made (in the user's home) before anything was corrected."""
    monkeypatch.setenv("HOME", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.add_image(phantom.volume, name="hip")
    dock = RoisegDock(viewer, model=untrained_model())
    dock.segment.run_volume(sync=True)
    qtbot.wait(2 * dock.correct.DETECT_DELAY_MS)
    assert dock.correct.corrections.listed() == [] and dock.session.project is None
    assert not (tmp_path / "napari-roiseg").exists()


def test_marks_made_in_one_dock_are_kept_by_the_other(make_napari_viewer, phantom, tmp_path):
    """Two docks showing the Correct step share its state: a mark made in one is not lost
    when the other saves the corrections (each used to keep, and save, its own copy)."""
    from napari_roiseg._widgets import FinetuneWidget
    from napari_roiseg.project import Project

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    labels = viewer.add_labels(np.zeros(phantom.volume.shape, np.uint8), name="hip mask",
                               metadata={"roiseg_prediction": np.zeros(phantom.volume.shape,
                                                                       np.uint8)})
    dock = RoisegDock(viewer, project=tmp_path / "p")
    tune = FinetuneWidget(viewer)
    tune.select(image, labels)
    dock.correct.go_to(3)
    dock.correct.mark_current("negative")
    labels.data[5] = phantom.labels[5]
    labels.refresh()
    tune.refresh_corrections()  # the other dock saves
    saved, planes, _, _ = Project(tmp_path / "p").load_corrections()
    assert saved.marks == {3: "negative"} and tune.corrections.marks == {3: "negative"}
    assert sorted(planes) == [3, 5] and dock.correct.corrections.detected == [5]


def test_demo_points_the_dock_at_the_result_layers_not_the_ground_truth(make_napari_viewer):
    from napari_roiseg.cli.demo import _point_dock_at_results
    from napari_roiseg.session import get_session

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 32, 24), np.uint8), name="hip phantom")
    truth = viewer.add_labels(np.zeros((4, 32, 24), np.uint8), name="acetabulum ground truth")
    dock = RoisegDock(viewer)
    session = get_session(viewer)
    # an opened Labels layer is never taken as the model's mask unasked
    assert session.mask_layer is not truth
    if "hip phantom mask" in viewer.layers:  # made empty when the image was chosen: adopted
        assert session.mask_layer is viewer.layers["hip phantom mask"]
    assert dock.pickers.combos["mask"].value is session.mask_layer
    if "hip phantom mask" not in viewer.layers:  # the dock may already have made them, empty
        viewer.add_labels(np.zeros((4, 32, 24), np.uint8), name="hip phantom mask")
    if "hip phantom boxes" not in viewer.layers:
        viewer.add_shapes(name="hip phantom boxes", ndim=3)
    mask, boxes = viewer.layers["hip phantom mask"], viewer.layers["hip phantom boxes"]
    _point_dock_at_results(viewer, image)
    assert session.mask_layer is mask and session.boxes_layer is boxes
    dock.close()
