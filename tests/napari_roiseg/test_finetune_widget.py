"""The Fine-tune dock widget on a small phantom with a small untrained model injected."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# At collection, before any test draws with OpenGL: see api.prepare_torch_import.
pytest.importorskip("torchvision")

from qtpy.QtCore import Qt  # noqa: E402

from napari_roiseg._widgets.finetune_widget import FinetuneWidget  # noqa: E402
from napari_roiseg.finetune import Project  # noqa: E402

TIMEOUT_MS = 180_000  # two shared CPU cores: generous, the runs themselves take seconds



@pytest.fixture
def net(untrained_model):
    return untrained_model()


@pytest.fixture(scope="module")
def prediction(phantom, untrained_model):
    from napari_roiseg.segment import segment_array

    return segment_array(phantom.volume, untrained_model(), device="cpu", batch_size=4).labels


@pytest.fixture
def setup(make_napari_viewer, phantom, prediction, net, tmp_path):
    """Viewer with the phantom, the model's mask as a Labels layer and the widget docked."""
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    labels = viewer.add_labels(prediction.copy(), name="hip mask", scale=phantom.spacing,
                               metadata={"roiseg_prediction": prediction})
    widget = FinetuneWidget(viewer, model=net, project=tmp_path / "proj")
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.select(image, labels)
    return viewer, image, labels, widget


def _correct(labels, phantom, slices) -> None:
    for k in slices:
        labels.data[k] = phantom.labels[k]
    labels.refresh()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_corrected_slices_are_detected_listed_and_marked(setup, phantom, prediction, qtbot):
    viewer, image, labels, widget = setup
    changed = [k for k in (2, 4, 6) if not np.array_equal(prediction[k] != 0, phantom.labels[k] != 0)]
    assert changed == [2, 4, 6]  # the untrained model is wrong on these: editing changes them
    _correct(labels, phantom, changed)
    assert widget.refresh_corrections() == [2, 4, 6]

    # a brush stroke is picked up by itself once painting pauses
    value = int(prediction[9, 60, 40] == 0)  # paint the pixel over with the other value
    labels.paint((9, 60, 40), value)
    assert labels.data[9, 60, 40] == value
    qtbot.waitUntil(lambda: 9 in widget.corrections.detected, timeout=5000)

    widget.go_to(0)
    widget.mark_current("negative")
    widget.go_to(11)
    widget.mark_current("corrected")
    widget.go_to(4)
    widget.mark_current("excluded")
    assert not labels.data[0].any()  # a negative slice is cleared
    assert widget.corrections.slices() == [0, 2, 6, 9, 11]
    items = [widget.correct._list.item(i) for i in range(widget.correct._list.count())]
    assert [it.data(Qt.ItemDataRole.UserRole) for it in items] == [0, 2, 4, 6, 9, 11]
    assert "negative" in items[0].text() and "excluded" in items[2].text()

    widget.correct._list.itemClicked.emit(items[3])  # clicking jumps to the slice
    assert widget.current_slice() == 6
    assert "slice 6" in widget.readout._readout.value and "dice" in widget.readout._readout.value

    plan = widget.plan()
    assert all(abs(t - v) > 1 for t in plan.train for v in plan.validation)
    widget.correct._val_text.value = "2"
    assert widget.plan().validation == (2,)
    assert "only 1 validation slice" in widget.correct._plan_info.value
    # saved as it goes: the project folder has the corrections already
    saved, planes, _, _ = Project(widget.project.folder).load_corrections()
    assert sorted(planes) == [0, 2, 6, 9, 11] and saved.marks[4] == "excluded"


def test_short_finetune_in_worker_makes_a_version_and_plots(setup, phantom, qtbot):
    viewer, image, labels, widget = setup
    _correct(labels, phantom, [2, 4, 6, 9])
    widget.refresh_corrections()
    widget.correct._val_text.value = "9"
    widget.tune._amount.value = 3
    widget.tune._batch.value = 2
    draws = widget.canvas.draws
    worker = widget.start()
    assert worker is not None and not widget.tune._start_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)

    result = widget.last_result
    assert result.state == "finished" and result.steps_done == 3
    assert result.train == (2, 4, 6) and result.validation == (9,)
    assert result.version == "v001" == widget.project.current_version
    assert list(widget.project.versions) == ["v000", "v001"]
    assert "v001" in widget.project_panel._version_info.value and "saved as v001" in widget.tune._status.value
    h = widget.history
    assert h.loss_steps == [1, 2, 3] and h.metric_steps[0] == 0 and h.before is not None
    assert len(h.dice) == len(h.precision) == len(h.metric_steps) >= 2
    qtbot.waitUntil(lambda: widget.canvas.draws > draws, timeout=5000)
    assert widget.tune._progress.value == 3 and widget.tune._start_button.enabled

    # re-segment with the new version into a new layer; the dice change is shown
    assert widget.segment() is not None
    qtbot.waitUntil(lambda: widget.last_segmentation is not None, timeout=TIMEOUT_MS)
    seg = widget.last_segmentation
    # the Segment step's run: the corrected layer is kept, the new mask goes to a new layer
    assert seg["layer"] is not labels and seg["layer"] in viewer.layers
    assert seg["layer"].metadata["roiseg_version"] == "v001"
    assert seg["validation"] == [9] and "before" in seg and "after" in seg
    assert "validation slices" in widget.readout._segment_info.value
    widget.go_to(9)
    assert set(widget.readout_values) == {"model's prediction", "v001"}


def test_stop_mid_run_keeps_a_version(setup, phantom, net, qtbot):
    viewer, image, labels, widget = setup
    net.register_forward_pre_hook(lambda *_: time.sleep(0.05))  # copied with the model
    _correct(labels, phantom, [2, 4, 6, 9])
    widget.refresh_corrections()
    widget.correct._val_text.value = "9"
    widget.tune._amount.value = 500
    widget.tune._batch.value = 1
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history.loss_steps) >= 1, timeout=TIMEOUT_MS)
    widget.stop()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    result = widget.last_result
    assert result.state == "stopped" and 1 <= result.steps_done < 500
    assert widget.project.versions[result.version]["state"] == "stopped"
    assert not widget.tune._stop_button.enabled


def test_rollback_restores_exact_weights(setup, phantom, net):
    viewer, image, labels, widget = setup
    original = {k: v.clone() for k, v in net.state_dict().items()}
    _correct(labels, phantom, [2, 4, 6])
    widget.refresh_corrections()
    widget.correct._val_text.value = "none"  # no validation: the last weights are kept
    widget.tune._amount.value = 2
    widget.tune._batch.value = 2
    widget.tune._lr.value = 1e-3
    widget.start(sync=True)
    tuned = widget.last_result.model
    assert widget.project.current_version == "v001"
    assert not _same_weights(tuned, net)

    changes = []
    widget.session.events.model.connect(changes.append)
    widget.use_version("v000")
    assert changes and "project version v000" in changes[-1]
    assert widget.project.current_version == "v000" and widget.project_panel._version_info.value.startswith("v000")
    state = widget.model.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)
    widget.use_version("v001")
    assert _same_weights(widget.model, tuned)
    assert Project(widget.project.folder).current_version == "v001"


def test_corrections_survive_closing_and_reopening(make_napari_viewer, setup, phantom, net):
    viewer, image, labels, widget = setup
    _correct(labels, phantom, [2, 6])
    widget.go_to(10)
    widget.mark_current("negative")
    widget.go_to(4)
    widget.mark_current("corrected")
    folder = widget.project.folder
    expected = np.array(labels.data, copy=True)
    marks = dict(widget.corrections.marks)
    viewer.close()

    viewer2 = make_napari_viewer()  # a new napari session: only the image is open again
    viewer2.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    again = FinetuneWidget(viewer2, model=net, project=folder)
    restored = again.labels_layer
    assert restored is not None and restored.name == "hip mask"
    assert np.array_equal(restored.data, expected)
    assert again.corrections.marks == marks
    assert again.corrections.slices() == [2, 4, 6, 10]
    assert again.reference is not None and again.refresh_corrections(save=False) == [2, 6, 10]
    assert tuple(restored.scale) == tuple(viewer2.layers["hip"].scale)


def test_finetune_after_the_review_gate_trains_the_version_it_made_current(
        setup, phantom, net, untrained_model, monkeypatch):
    """The Review dock's gate (an override here) makes another version current; the next
    fine-tune must start from *that* version's weights and record it as the parent. (It used to
    train the weights cached in the Fine-tune dock while recording the new parent.)"""
    import napari_roiseg.finetune as finetune_module
    from napari_roiseg._widgets.review_widget import ReviewWidget
    from napari_roiseg.project.history import CorrectionHistory

    viewer, image, labels, widget = setup
    assert widget._ensure_model() is net and widget.project.current_version == "v000"
    CorrectionHistory(widget.project.folder).lock(phantom.volume, phantom.labels, [6])
    candidate = untrained_model()
    with torch.no_grad():
        for p in candidate.parameters():
            p.add_(0.01)
    Project(widget.project.folder).add_version(candidate, {"parent": "v000", "source": "test"},
                                               make_current=False)
    review = ReviewWidget(viewer, project=widget.project.folder)
    review.gate_panel._candidate.value = "v001"
    decision = review.gate(override="the candidate follows the lateral edge better", sync=True)
    assert decision is not None and decision.accepted
    assert Project(widget.project.folder).current_version == "v001"

    started_from = []
    real = finetune_module.iter_finetune

    def spy(*args, **kwargs):
        started_from.append((args[4], kwargs.get("parent")))
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(finetune_module, "iter_finetune", spy)  # finetune_and_gate's
    _correct(labels, phantom, [2, 4, 9])
    widget.refresh_corrections()
    widget.correct._val_text.value = "none"
    widget.tune._amount.value = 1
    widget.tune._batch.value = 1
    widget.start(sync=True)
    [(trained, parent)] = started_from
    assert parent == "v001"
    assert _same_weights(trained, candidate), "fine-tuned the weights of v000, not v001"
    assert widget.project.versions[widget.last_result.version]["parent"] == "v001"


def test_progress_says_how_long_the_run_has_left(setup):
    from src_model.train import TrainProgress

    *_, widget = setup
    widget.tune._on_record(TrainProgress(step=10, total_steps=40, losses={"loss": 0.5}, lr=1e-4,
                                         seconds=20.0))
    assert "step 10/40" in widget.tune._status.value
    assert "about 1:00 left" in widget.tune._status.value  # 2 s a step, 30 steps to go
    widget.tune._on_record(TrainProgress(step=40, total_steps=40, losses={}, lr=1e-4,
                                         seconds=80.0, state="finished"))
    assert "left" not in widget.tune._status.value
