"""How long does the napari GUI freeze while the main dock segments a volume, gates a
candidate version and compares two versions?

    xvfb-run -a .venv/bin/python scripts/bench_gui_stall.py [--slices 256] [--batch-size 0]

Opens a napari Viewer (shown, on a virtual X display) with the phantom volume, docks the main
dock (all steps) with the shipped default model and a project holding two versions and a locked
set of 8 slices, then, one after the other: starts a whole-volume segmentation (the threaded
worker path the button uses), *Gate candidate* and *Compare on this slice* (napari workers
too). For each, a 10 ms ``QTimer`` ticks in the GUI thread from the click until the run has
finished (its last GUI steps included). Every gap between two ticks beyond 10 ms is time the
event loop could not run: the stall. Prints, per run, the max / 99th percentile / median gap and
how many exceeded 100 ms (the target: none), counted from the click, so the synchronous call is
one of the gaps. A benchmark, not a test; the load average is printed because the machine may be
shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def measure(app: Any, interval_ms: int, start: Callable[[], Any],
            busy: Callable[[], bool]) -> tuple[np.ndarray, float, float]:
    """Tick every ``interval_ms`` from ``start()`` until ``busy()`` is False and the worker
    has finished; returns (gaps in ms, seconds of the run, ms the start call itself took)."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    finished: list[float] = []
    t0 = time.perf_counter()
    timer.start()
    worker = start()
    t_started = time.perf_counter()
    if worker is None:
        raise RuntimeError("the run did not start a worker (see the napari notifications)")
    worker.finished.connect(lambda: finished.append(time.perf_counter()))
    while not finished or busy():
        app.processEvents()
        time.sleep(0.001)
    for _ in range(10):  # let the last layer updates run, and time them too
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    ticks = [t for t in ticks if t > t0]
    gaps = np.diff(np.asarray([t0, *ticks])) * 1000
    return gaps, finished[0] - t0, 1000 * (t_started - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=0, choices=[0, 1, 2, 4, 8, 16, 32, 64],
                   help="0: segment.default_batch_size")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--interval-ms", type=int, default=10)
    args = p.parse_args(argv)

    from napari_roiseg.api import prepare_torch_import

    prepare_torch_import()
    # torch and torchvision before anything that may draw (see prepare_torch_import)
    # isort: off
    import torch
    import torchvision  # noqa: F401
    import napari
    # isort: on
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets import RoisegDock
    from napari_roiseg.project.history import CorrectionHistory
    from napari_roiseg.project import Project
    from napari_roiseg.segment import load_model
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=0, n_slices=args.slices)
    folder = tempfile.mkdtemp(prefix="roiseg-stall-")
    project = Project(folder)
    project.bind_image("hip phantom", ph.volume.shape)
    net = load_model()
    project.add_version(net, {"parent": None, "source": "shipped default"})
    with torch.no_grad():
        candidate = load_model()
        for param in candidate.parameters():
            param.mul_(0.99)
    project.add_version(candidate, {"parent": "v000"}, make_current=False)
    locked = np.linspace(5, args.slices - 6, 8).astype(int).tolist()
    CorrectionHistory(project).lock(ph.volume, ph.labels, locked)

    viewer = napari.Viewer(show=True)
    image = viewer.add_image(ph.volume, name="hip phantom", scale=ph.spacing)
    dock = RoisegDock(viewer, project=folder)
    viewer.window.add_dock_widget(dock, name="ROI Seg")
    dock.session.image_layer = image
    dock.model_panel._device.value = args.device
    dock.segment._batch.value = args.batch_size
    viewer.dims.set_point(0, image.data_to_world((args.slices // 2, 0, 0))[0])
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    net = dock.model_panel.load_model()  # loading the checkpoint is not part of the run
    threads: set[int] = set()  # torch's thread count in the worker (the runner limits it)
    net.register_forward_pre_hook(lambda *_: threads.add(torch.get_num_threads()))
    runner, gate = dock.segment.runner, dock.gate_panel
    gate.follow_session()
    gate._candidate.value = "v001"
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; Qt platform "
          f"{app.platformName()}; {args.slices} slices, locked set of {len(locked)}")
    rows = []
    for name, start, busy in (
            ("segment volume", dock.segment.run_volume, lambda: runner.busy),
            ("gate candidate", gate.gate, lambda: dock.session.running() is not None),
            ("compare on slice", gate.compare, lambda: dock.session.running() is not None),
            ("compare again", gate.compare, lambda: dock.session.running() is not None)):
        gaps, seconds, start_ms = measure(app, args.interval_ms, start, busy)
        rows.append((name, seconds, start_ms, gaps))
    print(f"torch threads in the segmentation worker {sorted(threads)} (GUI thread "
          f"{torch.get_num_threads()}); last segmentation: {runner.last_run.done}/"
          f"{runner.last_run.total} slices; gate: {gate._gate_info.value}")
    print("| run | seconds | start call ms | max gap ms | p99 ms | median ms | gaps > 100 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, start_ms, gaps in rows:
        print(f"| {name} | {seconds:.1f} | {start_ms:.0f} | {gaps.max():.0f} | "
              f"{np.percentile(gaps, 99):.0f} | {np.median(gaps):.0f} | "
              f"{int((gaps > 100).sum())} |")
    worst = max(gaps.max() for *_, gaps in rows)
    print(f"max gap over all runs: {worst:.0f} ms (target <= 100 ms)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
