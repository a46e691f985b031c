"""The Segment dock widget on a small phantom volume with a small untrained model injected."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# At collection, before any test draws with OpenGL: see api.prepare_torch_import for the crash
# that importing torchvision (and with it triton) after Mesa's llvmpipe causes.
pytest.importorskip("torchvision")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_roiseg._widgets import SegmentWidget  # noqa: E402
from napari_roiseg.layers import STATS_KEY, filter_boxes  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    from sample_data.phantom import make_phantom

    return make_phantom(seed=0, n_slices=6, shape=(128, 96))



@pytest.fixture
def net(untrained_model):
    """Fresh per test: the counting and slowing hooks below must not leak between tests."""
    return untrained_model()


@pytest.fixture
def forward_calls(net):
    calls: list[int] = []
    net.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    return calls


@pytest.fixture
def notes():
    """Notifications dispatched during the test, as (severity, message)."""
    start = len(notification_manager.records)

    def read() -> list[tuple[str, str]]:
        return [(str(n.severity), str(n.message)) for n in notification_manager.records[start:]]

    return read


def _errors(notes) -> list[str]:
    return [m for sev, m in notes() if sev.lower() == "error"]


@pytest.fixture
def setup(make_napari_viewer, phantom, net):
    """A viewer with the phantom (anisotropic spacing) and the widget docked."""
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    widget = SegmentWidget(viewer, model=net)
    viewer.window.add_dock_widget(widget, name="Segment")
    return viewer, image, widget


def _go_to(viewer, image, k: int) -> None:
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])


def _assert_shapes_match(shapes, boxes):
    assert len(shapes.data) == len(boxes)
    for vertices, row, s in zip(shapes.data, boxes, shapes.features["slice"]):
        assert (vertices[:, 0] == row[0]).all() and s == row[0]
        np.testing.assert_allclose(vertices[:, 1:].min(0), row[1:3], rtol=1e-6)
        np.testing.assert_allclose(vertices[:, 1:].max(0), row[3:5], rtol=1e-6)


def test_slice_then_volume(setup, phantom):
    viewer, image, widget = setup
    assert widget.image_layer is image
    assert widget.model_panel._device_info.value == "auto -> cpu"
    assert widget.model_panel._source.value == "in-memory model"
    assert "fast preset" in widget.model_text

    _go_to(viewer, image, 4)  # z spacing 0.2: world 0.8 is slice 4
    assert widget.run_slice() == 4
    mask, shapes = viewer.layers["hip mask"], viewer.layers["hip boxes"]
    assert mask.data.shape == image.data.shape
    assert mask.data[4].any() and not np.delete(mask.data, 4, axis=0).any()
    assert set(shapes.features["slice"]) == {4}
    # The model's per-slice review numbers travel with the mask (the Review widget reads them).
    stats = mask.metadata[STATS_KEY]
    assert np.isfinite(stats[4]).all() and np.isnan(stats[0]).all()
    np.testing.assert_allclose(mask.scale, image.scale)
    np.testing.assert_allclose(shapes.scale, image.scale)

    widget.run_volume(sync=True)
    assert widget.last_run.done == widget.last_run.total == 6
    session = widget.sessions[image]
    assert session.result.done.all()
    np.testing.assert_array_equal(mask.data, session.result.labels)
    assert viewer.layers["hip mask"] is mask and viewer.layers["hip boxes"] is shapes
    _assert_shapes_match(shapes, filter_boxes(session.result.boxes, 0.5, 3))
    assert 0 < shapes.nshapes <= 18
    assert np.isfinite(mask.metadata[STATS_KEY]).all()


def test_threshold_and_top_k_do_not_rerun_the_model(setup, forward_calls):
    viewer, image, widget = setup
    widget.run_volume(sync=True)
    calls = len(forward_calls)
    assert calls > 0
    boxes = widget.sessions[image].result.boxes
    shapes = viewer.layers["hip boxes"]
    counts = []
    for threshold, top_k in [(0.0, 10), (0.0, 1), (0.5, 5), (1.0, 5)]:
        widget.segment._threshold.value = threshold
        widget.segment._top_k.value = top_k
        expected = filter_boxes(boxes, threshold, top_k)
        _assert_shapes_match(shapes, expected)
        counts.append(shapes.nshapes)
    assert counts[0] == 60 and counts[1] == 6 and counts[3] == 0
    assert len(forward_calls) == calls


def test_cancel_keeps_the_partial_result(make_napari_viewer, qtbot, net):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.integers(0, 255, (12, 96, 64), dtype=np.uint8), name="long")
    net.register_forward_pre_hook(lambda module, args: time.sleep(0.1))  # a long run
    widget = SegmentWidget(viewer, model=net)
    widget.segment._batch.value = 1
    worker = widget.run_volume()
    assert worker is not None and widget.worker is worker
    assert widget.segment._cancel_button.enabled and not widget.segment._volume_button.enabled
    worker.yielded.connect(lambda _step: widget.cancel())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    run = widget.last_run
    assert run.cancelled and 0 < run.done < run.total == 12
    result = widget.sessions[image].result
    assert result.done[:run.done].all() and not result.done[run.done:].any()
    mask = viewer.layers["long mask"].data
    assert mask[:run.done].any() and not mask[run.done:].any()
    np.testing.assert_array_equal(mask, result.labels)
    assert set(viewer.layers["long boxes"].features["slice"]) <= set(range(run.done))
    assert "cancelled" in widget.segment._status.value
    assert widget.segment._volume_button.enabled and not widget.segment._cancel_button.enabled


def test_worker_run_completes(setup, qtbot, net, monkeypatch):
    """A threaded CPU run leaves GUI_CORES cores to the viewer (torch's thread count is lowered
    for the run, at least 1) and restores the count afterwards."""
    viewer, image, widget = setup
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(3)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    threads = []
    net.register_forward_pre_hook(lambda module, args: threads.append(torch.get_num_threads()))
    widget.segment._batch.value = 4
    widget.run_volume()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert set(threads) == {3 - widget.runner.GUI_CORES} and torch.get_num_threads() == 3
    torch.set_num_threads(before)
    assert widget.last_run.done == 6 and not widget.last_run.cancelled
    assert widget.last_run.batches == 2
    np.testing.assert_array_equal(viewer.layers["hip mask"].data,
                                  widget.sessions[image].result.labels)
    assert widget.segment._status.value.startswith("done: 6/6")


def test_boxes_are_drawn_batch_by_batch_and_match_a_full_redraw(setup, qtbot, monkeypatch):
    """During a threaded run the boxes of the finished slices are added as batches come (score
    text hidden until the end); the layer then holds exactly what a full redraw draws."""
    viewer, image, widget = setup
    widget.run_volume(sync=True)  # boxes of an earlier run: cleared when the next one starts
    from napari_roiseg._widgets.volume_run import Segmenter

    monkeypatch.setattr(Segmenter, "BOXES_EVERY_S", 0.0)
    shapes = viewer.layers["hip boxes"]
    seen = []
    draw = Segmenter._draw_boxes

    def spy(self, run):
        draw(self, run)
        seen.append((run.boxes_upto, shapes.nshapes, shapes.text.visible))

    monkeypatch.setattr(Segmenter, "_draw_boxes", spy)
    widget.segment._batch.value = 1
    widget.run_volume()
    assert not shapes.text.visible
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert len({upto for upto, _, _ in seen}) > 1  # more than one update, slices in order
    assert [upto for upto, _, _ in seen] == sorted(upto for upto, _, _ in seen)
    assert not any(visible for _, _, visible in seen) and shapes.text.visible
    rows = widget.sessions[image].result.boxes
    for upto, n, _ in seen:  # each update shows the boxes of exactly the slices done
        assert n == len(filter_boxes(rows[rows[:, 0] < upto], 0.5, 3))
    incremental = (list(shapes.data), shapes.features.copy(), shapes.edge_color.copy(),
                   list(shapes.text.values))
    _assert_shapes_match(shapes, filter_boxes(rows, 0.5, 3))
    assert widget.last_run.shown == shapes.nshapes > 0
    assert f"{shapes.nshapes} boxes shown" in widget.segment._status.value
    widget.segment.refresh_boxes()  # a full redraw gives the same layer
    for a, b in zip(incremental[0], shapes.data):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(incremental[1].to_numpy(), shapes.features.to_numpy())
    np.testing.assert_allclose(incremental[2], shapes.edge_color)
    assert incremental[3] == list(shapes.text.values)


def test_result_layers_are_made_when_the_image_is_chosen(make_napari_viewer, phantom, net,
                                                         notes):
    """Making a layer freezes the viewer for 0.1-0.3 s, so it happens when the image is
    chosen, not during a run; images that cannot be segmented get nothing and no message."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 32, 32, 3), np.uint8), name="colour", rgb=True)
    nan = np.ones((4, 32, 32), np.float32)
    nan[1, 2, 3] = np.nan
    viewer.add_image(nan, name="nan")
    widget = SegmentWidget(viewer, model=net)
    assert widget.image_layer.name == "colour" and len(viewer.layers) == 2
    widget.image_layer = viewer.layers["nan"]
    assert len(viewer.layers) == 2 and notes() == []
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    widget.image_layer = image
    mask, shapes = viewer.layers["hip mask"], viewer.layers["hip boxes"]
    assert mask.data.shape == image.data.shape and not mask.data.any() and shapes.nshapes == 0
    np.testing.assert_allclose(mask.scale, image.scale)
    widget.image_layer = viewer.layers["nan"]
    widget.image_layer = image  # chosen again: the same layers
    big = viewer.add_image(np.zeros((2, 8, 8), np.uint8), name="big")
    widget.runner.PREPARE_MAX_VOXELS = 127  # an image too large to prepare gets its layers at the run
    widget.image_layer = big
    assert "big mask" not in viewer.layers
    widget.image_layer = image
    widget.run_volume(sync=True)
    assert [layer.name for layer in viewer.layers] == ["colour", "nan", "hip", "hip mask",
                                                       "hip boxes", "big"]
    assert viewer.layers["hip mask"] is mask and mask.data.any()
    assert _errors(notes) == []


def test_edited_labels_survive_a_second_run(setup, notes):
    viewer, image, widget = setup
    widget.run_volume(sync=True)
    mask = viewer.layers["hip mask"]
    mask.data[2, 0, 0] = 1 - mask.data[2, 0, 0]
    mask.refresh()
    edited = mask.data.copy()
    widget.run_volume(sync=True)
    new = viewer.layers["hip mask [1]"]
    assert new is not mask
    np.testing.assert_array_equal(mask.data, edited)
    np.testing.assert_array_equal(new.data, widget.sessions[image].result.labels)
    assert any("edited" in m and "hip mask [1]" in m for _, m in notes())
    # the new layer is unedited: the next run updates it in place
    n_layers = len(viewer.layers)
    widget.run_slice()
    assert len(viewer.layers) == n_layers


def test_unedited_labels_are_updated_in_place(setup):
    viewer, image, widget = setup
    widget.run_volume(sync=True)
    widget.run_volume(sync=True)
    assert [layer.name for layer in viewer.layers] == ["hip", "hip mask", "hip boxes"]


def test_follow_mode_segments_the_slice_shown(setup, qtbot, forward_calls):
    viewer, image, widget = setup
    _go_to(viewer, image, 1)
    widget.segment._follow.value = True  # segments the current slice at once
    result = lambda: widget.sessions[image].result  # noqa: E731
    assert result().done.tolist() == [False, True, False, False, False, False]
    _go_to(viewer, image, 5)
    qtbot.waitUntil(lambda: result().done[5], timeout=10_000)
    calls = len(forward_calls)
    _go_to(viewer, image, 1)  # already segmented by this model: no new run
    qtbot.wait(3 * widget.segment.FOLLOW_DELAY_MS)
    assert len(forward_calls) == calls
    assert viewer.layers["hip mask"].data[[1, 5]].any()


def test_2d_image_gives_2d_layers(make_napari_viewer, phantom, net):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume[2], name="frame")
    widget = SegmentWidget(viewer, model=net)
    assert widget.run_slice() == 0
    widget.run_volume(sync=True)
    mask, shapes = viewer.layers["frame mask"], viewer.layers["frame boxes"]
    assert mask.data.shape == image.data.shape and mask.data.any()
    assert shapes.ndim == 2 and shapes.nshapes > 0


# --------------------------------------------------------------------------- bad input


def test_no_image_layer(make_napari_viewer, net, notes):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer, model=net)
    assert widget.image_layer is None
    assert widget.run_slice() is None and widget.run_volume() is None
    assert any("No image" in m for m in _errors(notes))
    assert len(viewer.layers) == 0


def test_image_choices_follow_the_layer_list(make_napari_viewer, net):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer, model=net)
    a = viewer.add_image(np.zeros((2, 32, 32)), name="a")
    viewer.add_labels(np.zeros((2, 32, 32), np.uint8), name="not an image")
    assert widget.pickers.combos['image'].choices == (a,)
    a.name = "renamed"
    assert widget.pickers.combos['image'].native.itemText(0) == "renamed"
    viewer.layers.remove(a)
    assert widget.image_layer is None


def test_rgb_layer(make_napari_viewer, net, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="photo")
    widget = SegmentWidget(viewer, model=net)
    assert widget.run_slice() is None
    assert any("RGB" in m and "grayscale" in m for m in _errors(notes))


def test_4d_layer(make_napari_viewer, net, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="timelapse")
    widget = SegmentWidget(viewer, model=net)
    assert widget.run_volume() is None
    assert any("4 dimensions" in m for m in _errors(notes))


def test_checkpoints_good_corrupt_and_of_another_preset(setup, tmp_path, net, notes):
    from src_model.checkpoint import save_checkpoint

    viewer, image, widget = setup
    good = save_checkpoint(tmp_path / "good.pt", net, {"note": "test"})
    widget.model_panel._checkpoint.value = good
    assert widget.model_panel._source.value == "checkpoint file"
    assert "fast preset" in widget.model_text and "good.pt" in widget.model_text
    assert widget.run_slice() is not None

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:500])
    widget.model_panel._checkpoint.value = corrupt
    assert "not loaded" in widget.model_text
    assert any("corrupt" in m for m in _errors(notes))
    assert widget.run_slice() is None  # and it says why again

    payload = torch.load(good, weights_only=True)
    from src_model.config import get_preset

    payload["config"] = get_preset("fast", width_divisor=8).to_dict()
    other = tmp_path / "other_preset.pt"
    torch.save(payload, other)
    widget.model_panel._checkpoint.value = other
    assert any("do not fit" in m for m in _errors(notes))

    widget.model_panel._source.value = "in-memory model"  # the injected model is still on offer
    assert widget.load_model() is net and "in-memory" in widget.model_text


def test_missing_default_model_and_cuda(setup, monkeypatch, notes):
    import napari_roiseg.segment as module

    viewer, image, widget = setup
    monkeypatch.setattr(module, "default_checkpoint", lambda: module.Path("/nonexistent.pt"))
    widget.model_panel._source.value = "checkpoint file"
    widget.model_panel._source.value = "shipped default"  # drops the injected model
    assert widget.run_slice() is None
    assert any("missing" in m for m in _errors(notes))
    if not torch.cuda.is_available():
        widget.model_panel._device.value = "cuda"
        assert "unavailable" in widget.model_panel._device_info.value
        assert any("CUDA is not available" in m for m in _errors(notes))


# --------------------------------------------------------------------------- on screen


def test_screenshot_with_results_is_not_blank(make_napari_viewer, phantom, net):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    widget = SegmentWidget(viewer, model=net)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.segment._threshold.value = 0.0
    widget.run_volume(sync=True)
    _go_to(viewer, image, 3)
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.shape[1] > 300
    assert len(np.unique(shot.reshape(-1, shot.shape[-1]), axis=0)) > 50
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    viewer.layers["hip mask"].visible = False
    viewer.layers["hip boxes"].visible = False
    bare = viewer.screenshot(canvas_only=True, flash=False)
    assert canvas.shape == bare.shape and (canvas != bare).any()  # overlays are drawn


def test_shipped_default_model_loads(make_napari_viewer):
    from napari_roiseg.segment import default_checkpoint

    assert default_checkpoint().is_file(), "the shipped default model is missing"
    widget = SegmentWidget(make_napari_viewer())
    assert widget.model_panel._source.value == "shipped default"
    assert widget.load_model() is not None
    assert "fast preset" in widget.model_text and "shipped default" in widget.model_text


def test_model_line_says_a_stopped_run_and_which_weights_it_kept():
    from types import SimpleNamespace

    from napari_roiseg.model_info import describe_model

    net = SimpleNamespace(config=SimpleNamespace(preset="fast", arch="rpn_fcn"))
    stopped = {"training": {"steps": 2400, "state": "stopped", "best_step": 1400}}
    line = describe_model(net, stopped, "shipped default")
    assert "stopped early" in line and "weights of step 1400" in line and "2400" not in line
    finished = {"training": {"steps": 300, "state": "finished"}}
    assert "300 training steps" in describe_model(net, finished, "file")
    assert "120 training steps" in describe_model(
        net, {"training": {"steps": 300, "steps_done": 120, "state": "stopped"}}, "file")
