"""Model work in the session's model process: the protocol (jobs stream, errors keep their
type, crashes and kills are reported, cancel ends a job within a second), and the dock's whole
loop run through the process with the same results as the thread path."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

from napari_roiseg.worker import (JobError, JobKilled, ProcessWorker, WorkerCrashed,
                                  process_available)

pytestmark = pytest.mark.skipif(not process_available(), reason="no model process here")


@pytest.fixture(scope="module")
def light_worker():
    """A model process that imports no torch (the protocol's own jobs need none)."""
    worker = ProcessWorker(eager=False)
    yield worker
    worker.shutdown()


def test_a_job_streams_its_values_and_returns(light_worker):
    gen = light_worker.run("echo", values=[1, "two", {"three": 3}])
    got = []
    while True:
        try:
            got.append(next(gen))
        except StopIteration as end:
            returned = end.value
            break
    assert got == [1, "two", {"three": 3}] and returned == "done"
    assert light_worker.call("echo", values=[]) == "done"
    assert light_worker.alive and not light_worker.busy


def test_errors_keep_their_type_and_warnings_come_back(light_worker):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="^bad slice$"):
            light_worker.call("fail", kind="ValueError", message="bad slice")
        with pytest.raises(JobError, match="NoSuchError: odd"):
            light_worker.call("fail", kind="NoSuchError", message="odd")
    assert [str(w.message) for w in caught] == ["about to fail: bad slice",
                                                "about to fail: odd"]
    assert all(w.category is RuntimeWarning for w in caught)
    assert light_worker.call("echo", values=[1]) == "done"  # the process lives on


def test_a_crash_is_reported_and_the_next_job_starts_a_new_process(light_worker):
    starts, pid = light_worker.starts, light_worker.pid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(WorkerCrashed, match="SIGSEGV.*layers are unchanged"):
            light_worker.call("fail", kind="crash", message="segfault")
    assert not light_worker.alive
    assert light_worker.call("echo", values=[1]) == "done"
    assert light_worker.starts == starts + 1 and light_worker.pid != pid


def test_cancel_stops_a_job_at_its_next_step(light_worker):
    gen = light_worker.run("echo", values=list(range(1000)), wait_s=0.02)
    next(gen)
    t0 = time.perf_counter()
    light_worker.cancel()
    rest = []
    while True:
        try:
            rest.append(next(gen))
        except StopIteration as end:
            assert end.value == "stopped"
            break
    assert time.perf_counter() - t0 < 1.0 and len(rest) < 10
    assert light_worker.call("echo", values=[1]) == "done"  # the stop does not linger


def test_cancel_kills_a_job_that_does_not_stop_within_a_second(light_worker):
    gen = light_worker.run("echo", values=[1, 2], wait_s=30)
    threading.Timer(0.3, light_worker.cancel).start()
    t0 = time.perf_counter()
    with pytest.raises(JobKilled, match="did not stop within 1 s"):
        next(gen)
    assert 1.0 <= time.perf_counter() - t0 < 2.0
    assert light_worker.call("echo", values=[1]) == "done"


def test_a_job_let_go_early_is_stopped_before_the_next(light_worker):
    gen = light_worker.run("echo", values=list(range(1000)), wait_s=0.01)
    assert next(gen) == 0
    gen.close()  # e.g. the consumer failed
    assert not light_worker.busy
    assert list(light_worker.run("echo", values=["a", "b"])) == ["a", "b"]


def test_shutdown_ends_the_process_and_removes_shared_files():
    worker = ProcessWorker(eager=False)
    ref = worker.arrays.copy_of(np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
    np.testing.assert_array_equal(ref.open(), np.arange(24).reshape(2, 3, 4))
    worker.start()
    assert worker.alive
    worker.shutdown()
    assert not worker.alive and not worker.arrays.folder.exists()


# --------------------------------------------------------------------------- the dock


@pytest.fixture
def process_dock(tmp_path, make_napari_viewer, phantom, untrained_model):
    from napari_roiseg._widgets import RoisegDock

    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip")
    start = untrained_model()
    dock = RoisegDock(viewer, model=start, project=tmp_path / "hip.roiseg")
    viewer.window.add_dock_widget(dock, name="ROI Seg")
    dock.session.worker_mode = "process"
    dock.session.image_layer = image
    yield viewer, image, dock, start
    dock.session.close()


def _wait(qtbot, busy, timeout=120_000):
    qtbot.waitUntil(lambda: not busy(), timeout=timeout)


def test_the_loop_runs_in_the_model_process(process_dock, phantom, qtbot):
    """Segment, correct, fine-tune, segment with the new version, gate and compare, each in
    the model process, with what the thread path gives."""
    from napari_roiseg.segment import segment_array

    viewer, image, dock, start = process_dock
    session, runner = dock.session, dock.segment.runner
    assert dock.segment.run_volume() is not None
    _wait(qtbot, lambda: runner.busy)
    assert runner.last_run.done == runner.last_run.total == len(image.data)
    worker = session.process_worker()
    assert worker.alive and worker.pid != os.getpid()
    mask = session.mask_layer
    expected = segment_array(phantom.volume, start)
    np.testing.assert_array_equal(mask.data, expected.labels)
    np.testing.assert_allclose(session.results[image].result.boxes, expected.boxes, atol=1e-4)
    assert session.loaded_model() is None  # no model was loaded in this process for the run

    all_wrong = [k for k in range(len(image.data))
                 if not np.array_equal(mask.data[k] != 0, phantom.labels[k] != 0)]
    wrong = [all_wrong[0], all_wrong[-1]]
    for k in wrong:
        mask.data[k] = phantom.labels[k]
    mask.refresh()
    corrected = mask.data.copy()
    assert dock.correct.refresh_corrections() == wrong
    dock.correct._val_text.value = "none"
    dock.tune._amount.value, dock.tune._batch.value, dock.tune._lr.value = 2, 1, 1e-3
    assert dock.tune.start() is not None
    _wait(qtbot, lambda: dock.tune.worker is not None)
    result, project = dock.tune.last_result, session.project
    assert result.version == "v001" == project.current_version
    assert project.versions["v001"]["parent"] == "v000"
    assert dock.tune.history.loss_steps == [1, 2]  # the records came through, live
    assert session.model_spec() == ("project", str(project.folder), "v001")

    dock.readout.segment()  # the next segmentation uses v001, in the process
    _wait(qtbot, lambda: runner.busy)
    new = dock.readout.last_segmentation["layer"] if dock.readout.last_segmentation else None
    v001 = project.load_version("v001")
    labels = new.data if new is not None else viewer.layers["hip mask"].data
    np.testing.assert_array_equal(labels, segment_array(phantom.volume, v001).labels)
    np.testing.assert_array_equal(mask.data, corrected)  # the corrections are untouched

    dock.review.refresh_scores()
    assert dock.review.record_edits() == wrong
    third = all_wrong[len(all_wrong) // 2]
    dock.review.go_to(third)
    mask.data[third] = phantom.labels[third]
    mask.refresh()
    assert dock.review.mark_current("corrected")["slice"] == third
    assert dock.gate_panel.lock(sync=True)
    dock.gate_panel._candidate.value = "v001"
    assert dock.gate_panel.gate() is not None
    _wait(qtbot, lambda: session.running() is not None)
    assert dock.gate_panel.decision is not None and dock.gate_panel.decision.candidate == "v001"
    assert dock.gate_panel.compare() is not None
    _wait(qtbot, lambda: session.running() is not None)
    assert "candidate v001" in dock.gate_panel._gate_info.value
    qtbot.waitUntil(lambda: not dock.gate_panel.compare_view.pending)
    assert viewer.layers["compare mask"].metadata["roiseg_versions"]["candidate"] == "v001"
    assert worker.starts == 1  # one process, kept warm for the whole loop


@pytest.fixture
def long_run(process_dock, qtbot):
    """A 96-slice volume being segmented in the model process, with its first batch done."""
    from sample_data.phantom import make_phantom

    viewer, _, dock, _ = process_dock
    ph = make_phantom(seed=5, n_slices=96, shape=(128, 96))
    image = viewer.add_image(ph.volume, name="long")
    notes = viewer.add_labels(np.zeros(ph.volume.shape, np.uint8), name="my corrections")
    notes.data[3, 10:20, 10:20] = 7
    dock.session.image_layer = image
    dock.segment._batch.value = 1
    dock.session.process_worker(start=True)
    runner = dock.segment.runner
    assert dock.segment.run_volume() is not None
    qtbot.waitUntil(lambda: runner._run is not None and runner._run.done >= 2, timeout=120_000)
    return viewer, image, dock, notes


def test_cancel_ends_a_process_run_within_a_second(long_run, qtbot):
    viewer, image, dock, _ = long_run
    runner = dock.segment.runner
    t0 = time.perf_counter()
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5_000)
    elapsed = time.perf_counter() - t0
    run = runner.last_run
    assert run.cancelled and 2 <= run.done < run.total
    assert elapsed < 1.0, f"the run took {elapsed:.2f} s to stop"
    result = dock.session.results[image].result
    assert result.done[:run.done].all() and not result.done[run.done:].any()


def test_a_killed_model_process_is_one_message_and_loses_nothing(long_run, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, image, dock, notes = long_run
    runner, worker = dock.segment.runner, dock.session.process_worker()
    before_notes = notes.data.copy()
    start = len(notification_manager.records)
    os.kill(worker.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    messages = [str(n.message) for n in notification_manager.records[start:]]
    assert len(messages) == 1 and "SIGKILL" in messages[0] and "next run" in messages[0]
    run = runner.last_run
    assert run.error and run.done < run.total
    mask = viewer.layers["long mask"]
    result = dock.session.results[image].result
    assert result.done[:run.done].all()
    np.testing.assert_array_equal(mask.data[:run.done], result.labels[:run.done])
    np.testing.assert_array_equal(notes.data, before_notes)  # the annotator's layer
    dock.segment._batch.value = 0
    assert dock.segment.run_volume() is not None  # the next run starts a new process
    qtbot.waitUntil(lambda: not runner.busy, timeout=120_000)
    assert runner.last_run.done == runner.last_run.total and worker.starts == 2


def test_a_runtime_error_in_a_threaded_run_ends_the_run(make_napari_viewer, qtbot,
                                                        untrained_model):
    """napari's generator workers take a RuntimeError for a deleted worker and never emit
    ``finished``; torch raises many. The run must still end and give the run lock back."""
    from napari.utils.notifications import notification_manager

    from napari_roiseg._widgets import RoisegDock

    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (4, 64, 48), np.uint8),
                             name="scan")

    def broken(*_args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    net = untrained_model()
    net.register_forward_pre_hook(broken)
    dock = RoisegDock(viewer, model=net)
    assert dock.session.worker_mode == "thread"  # the suite's default (tests/conftest.py)
    dock.session.image_layer = image
    start = len(notification_manager.records)
    assert dock.segment.run_volume() is not None
    qtbot.waitUntil(lambda: not dock.segment.runner.busy, timeout=30_000)
    assert dock.session.running() is None
    messages = [str(n.message) for n in notification_manager.records[start:]]
    assert any("illegal memory access" in m for m in messages)
    assert dock.segment.runner.last_run.error
