"""Under load: ten segmentations in a row leak no memory; runs never interleave (busy lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_roiseg import busy

REPO = Path(__file__).resolve().parents[2]

_LEAK = textwrap.dedent("""
    import json, resource, sys, tempfile
    from pathlib import Path
    import numpy as np, tifffile, torch
    torch.set_num_threads(1)
    from napari_roiseg.api import segment_volume
    from napari_roiseg.cli import main

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    vol = np.random.default_rng(0).integers(0, 200, (32, 128, 128), dtype=np.uint8)
    tmp = Path(tempfile.mkdtemp())
    tifffile.imwrite(tmp / "v.tif", vol, photometric="minisblack")
    api, cli = [], []
    for i in range(10):
        segment_volume(vol, device="cpu")
        api.append(peak_mib())
    for i in range(10):
        assert main(["segment", str(tmp / "v.tif"), "--out", str(tmp / "o"), "--device", "cpu",
                     "--quiet"]) == 0
        cli.append(peak_mib())
    print(json.dumps({"api": api, "cli": cli}))
""")


def test_ten_segmentations_leak_no_memory():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _LEAK], capture_output=True, env=env,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    peaks = json.loads(run.stdout.decode().strip().splitlines()[-1])
    for name, values in peaks.items():
        assert values[-1] <= 1.10 * values[0], (name, values)
    assert peaks["cli"][-1] <= 1.10 * peaks["api"][0], peaks


@pytest.fixture
def slow_model(untrained_model):
    net = untrained_model()
    started = threading.Event()

    def slow(module, args):
        started.set()
        time.sleep(0.3)

    net.register_forward_pre_hook(slow)
    net.started = started
    return net


def test_api_finetune_is_refused_while_a_segmentation_runs(slow_model, untrained_model):
    from napari_roiseg.api import finetune, segment_volume

    vol = np.random.default_rng(0).integers(0, 200, (4, 64, 64), dtype=np.uint8)
    labels = np.zeros_like(vol)
    labels[1, 20:30, 20:30] = 1
    worker = threading.Thread(target=segment_volume, args=(vol, slow_model),
                              kwargs={"device": "cpu", "batch_size": 1})
    worker.start()
    try:
        assert slow_model.started.wait(30)
        assert busy.running() == "segmenting"
        with pytest.raises(busy.BusyError, match="Cannot start fine-tuning: segmenting is still "
                           "running"):
            finetune(vol, labels, slices=[1], model=untrained_model(), steps=1, device="cpu")
        with pytest.raises(busy.BusyError, match="Cannot start segmenting"):
            segment_volume(vol, untrained_model(), device="cpu")
    finally:
        worker.join(60)
    assert busy.running() is None
    segment_volume(vol, untrained_model(), device="cpu")  # free again


def test_widget_finetune_is_refused_while_the_segment_widget_runs(
        make_napari_viewer, slow_model, untrained_model, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_roiseg._widgets import FinetuneWidget, SegmentWidget

    viewer = make_napari_viewer()
    vol = np.random.default_rng(0).integers(0, 200, (6, 64, 64), dtype=np.uint8)
    image = viewer.add_image(vol, name="hip")
    labels = viewer.add_labels(np.zeros_like(vol), name="hip corrections")
    seg = SegmentWidget(viewer, model=slow_model)
    tune = FinetuneWidget(viewer, project=tmp_path / "p")  # the session's model: the slow one
    tune.select(image=image, labels=labels)
    labels.data[2, 10:20, 10:20] = 1
    tune.mark_current("corrected")
    worker = seg.run_volume()
    assert worker is not None  # started from the event loop, once the activity bar is up
    qtbot.waitUntil(slow_model.started.is_set, timeout=30000)
    start = len(notification_manager.records)
    layers = [lyr.name for lyr in viewer.layers]
    assert tune.start(sync=True) is None and tune.segment(sync=True) is None
    errors = [str(n.message) for n in notification_manager.records[start:]]
    # the re-segmentation is the Segment dock's own run: it says that run is in progress
    assert len(errors) == 2 and "segmenting 'hip' is still running" in errors[0]
    assert "already in progress" in errors[1]
    assert tune.project.versions == {}  # nothing was saved or trained
    assert [lyr.name for lyr in viewer.layers] == layers
    qtbot.waitUntil(lambda: seg.worker is None, timeout=60000)
    assert busy.running() is None and seg.last_run.done == 6
    # and the other way round: segmenting is refused while fine-tuning holds the lock
    token = busy.acquire("fine-tuning")
    try:
        start = len(notification_manager.records)
        assert seg.run_volume() is None and seg.run_slice() is None
        errors = [str(n.message) for n in notification_manager.records[start:]]
        assert len(errors) == 2 and all("fine-tuning is still running" in e for e in errors)
    finally:
        token.release()


def test_a_run_that_fails_to_start_lets_go_of_the_lock(make_napari_viewer, untrained_model,
                                                       monkeypatch, tmp_path):
    """An error between taking the run lock and starting the worker is reported once and frees
    the lock, so the next run is not refused until napari restarts."""
    from napari.utils.notifications import notification_manager

    from napari_roiseg._widgets import FinetuneWidget, SegmentWidget

    viewer = make_napari_viewer()
    vol = np.random.default_rng(0).integers(0, 200, (4, 64, 64), dtype=np.uint8)
    image = viewer.add_image(vol, name="hip")
    labels = viewer.add_labels(np.zeros_like(vol), name="hip corrections")
    seg = SegmentWidget(viewer, model=untrained_model())
    tune = FinetuneWidget(viewer, model=untrained_model(), project=tmp_path / "p")
    tune.select(image=image, labels=labels)
    labels.data[2, 10:20, 10:20] = 1
    tune.mark_current("corrected")

    def boom(*_args, **_kwargs):
        raise RuntimeError("no more file handles")

    def boom_when_starting(set_running):
        def patched(self, running):
            if running:
                boom()
            set_running(self, running)
        return patched

    from napari_roiseg._widgets.finetune_panel import FinetunePanel
    from napari_roiseg._widgets.segment_panel import SegmentPanel

    for cls in (SegmentPanel, FinetunePanel):
        monkeypatch.setattr(cls, "set_running", boom_when_starting(cls.set_running))
    for start_run in (seg.run_volume, tune.start, tune.segment):
        before = len(notification_manager.records)
        assert start_run() is None
        messages = [str(n.message) for n in notification_manager.records[before:]
                    if "no validation slices" not in str(n.message)]  # the plan's own warning
        assert len(messages) == 1 and "no more file handles" in messages[0], messages
        assert busy.running() is None and seg.worker is None and tune.worker is None
    assert seg.runner._run is None and seg.segment._cancel_button.enabled is False
