"""How long does the napari GUI freeze while the main dock segments a volume, fine-tunes,
gates a candidate version and compares two versions -- with the model work in the session's
model process and in napari threads of the GUI process, in the same run?

    xvfb-run -a .venv/bin/python scripts/bench_gui_stall.py [--slices 256] [--runs 5]
        [--contend 2] [--finetune-steps 100] [--workers process thread]

Opens a napari Viewer (shown, on a virtual X display) with the phantom volume, docks the main
dock (all steps) with the shipped default model and a project holding two versions and a locked
set of 8 slices. For each worker path, one warm-up segmentation (not counted: it starts the
model process and loads the model), then ``--runs`` times: a whole-volume segmentation and a
fine-tune of ``--finetune-steps`` steps on 8 corrected slices (the button's paths), then once
*Gate candidate* and *Compare on this slice*. During each, a 10 ms ``QTimer`` ticks in the GUI
thread from the click until the run has finished (its last GUI steps included); every gap
between two ticks beyond 10 ms is time the event loop could not run: the stall. Prints, per
row, the wall time and the max / 99th percentile / median gap and how many exceeded 100 ms.
``--contend N`` starts N busy-loop processes (at the GUI's priority, as a PACS viewer or a
browser would be) for the whole probe and stops them at the end. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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
    times = np.asarray([t0, *ticks])
    gaps = np.diff(times) * 1000
    measure.last_times = times  # type: ignore[attr-defined]  (for --why)
    return gaps, finished[0] - t0, 1000 * (t_started - t0)


class StackSampler:
    """Samples the GUI thread's Python stack every ``every_s`` from another thread, so that
    the long gaps can be attributed (``--why``): for each gap, the innermost frames of this
    project, napari, vispy or matplotlib seen during it."""

    def __init__(self, every_s: float = 0.005) -> None:
        import threading

        self.samples: list[tuple[float, str]] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import traceback

        while not self._stop.wait(self._every):
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            keep = [f for f in stack if any(k in f.filename for k in (
                "napari_roiseg", "napari/", "vispy", "matplotlib", "superqt", "magicgui"))]
            where = keep[-1] if keep else stack[-1]
            self.samples.append((time.perf_counter(),
                                 f"{where.filename.split('site-packages/')[-1]}:{where.lineno} "
                                 f"{where.name}"))

    def during(self, t0: float, t1: float) -> list[tuple[str, int]]:
        from collections import Counter

        return Counter(w for t, w in self.samples if t0 <= t <= t1).most_common(3)

    def stop(self) -> None:
        self._stop.set()


def contenders(n: int) -> list[subprocess.Popen]:
    """``n`` busy-loop processes at the default priority."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=256)
    p.add_argument("--runs", type=int, default=5, help="segmentations and fine-tunes per path")
    p.add_argument("--finetune-steps", type=int, default=100, help="0: no fine-tune rows")
    p.add_argument("--finetune-runs", type=int, default=None,
                   help="fine-tunes per path (default: --runs)")
    p.add_argument("--contend", type=int, default=0, metavar="N",
                   help="busy-loop processes competing for the CPU during the probe")
    p.add_argument("--workers", nargs="+", default=["process", "thread"],
                   choices=["process", "thread"])
    p.add_argument("--batch-size", type=int, default=0, choices=[0, 1, 2, 4, 8, 16, 32, 64],
                   help="0: segment.default_batch_size")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--interval-ms", type=int, default=10)
    p.add_argument("--why", action="store_true",
                   help="sample the GUI thread's stack and print what it did in gaps > 100 ms")
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
    from napari_roiseg.project import Project
    from napari_roiseg.project.history import CorrectionHistory
    from napari_roiseg.segment import load_model
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=0, n_slices=args.slices)
    folder = tempfile.mkdtemp(prefix="roiseg-stall-")
    project = Project(folder)
    project.bind_image("hip phantom", ph.volume.shape)
    project.add_version(load_model(), {"parent": None, "source": "shipped default"})
    with torch.no_grad():
        candidate = load_model()
        for param in candidate.parameters():
            param.mul_(0.99)
    project.add_version(candidate, {"parent": "v000"}, make_current=False)
    locked = np.linspace(5, args.slices - 6, 8).astype(int).tolist()
    CorrectionHistory(project).lock(ph.volume, ph.labels, locked)
    corrected = [k for k in np.linspace(2, args.slices - 3, 12).astype(int).tolist()
                 if min(abs(k - j) for j in locked) > 1][:8]

    viewer = napari.Viewer(show=True)
    image = viewer.add_image(ph.volume, name="hip phantom", scale=ph.spacing)
    dock = RoisegDock(viewer, project=folder)
    viewer.window.add_dock_widget(dock, name="ROI Seg")
    session, runner, gate, tune = dock.session, dock.segment.runner, dock.gate_panel, dock.tune
    session.image_layer = image
    dock.model_panel._device.value = args.device
    dock.segment._batch.value = args.batch_size
    viewer.dims.set_point(0, image.data_to_world((args.slices // 2, 0, 0))[0])
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    dock.model_panel.load_model()  # the thread path's load is not part of its runs
    gate.follow_session()
    gate._candidate.value = "v001"

    def running() -> bool:
        return session.running() is not None

    def correct() -> None:  # what the annotator did before clicking Start (not timed)
        mask = session.mask_layer
        for k in corrected:  # the same corrections every time
            mask.data[k] = ph.labels[k]
        mask.refresh()
        dock.correct.refresh_corrections()
        project.set_current("v000")  # every fine-tune starts from the same version
        tune._amount.value, tune._unit.value = args.finetune_steps, "steps"
        for _ in range(20):
            app.processEvents()

    sampler = StackSampler() if args.why else None
    competing = contenders(args.contend)
    rows = []
    try:
        print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}; load average "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; Qt platform "
              f"{app.platformName()}; {args.slices} slices; {args.contend} busy-loop "
              f"processes; {len(corrected)} corrected slices", flush=True)
        for mode in args.workers:
            session.worker_mode = mode
            plan = [("warm-up segmentation", None, runner.run_volume, lambda: runner.busy,
                     False)]
            # all segmentations first: once corrected, the mask is left alone and the next
            # run writes to a new layer, whose making is not what is probed here
            plan += [("segment volume", None, runner.run_volume, lambda: runner.busy,
                      True)] * args.runs
            if args.finetune_steps:
                plan += [(f"fine-tune {args.finetune_steps} steps", correct, tune.start,
                          lambda: tune.worker is not None, True)] * (
                    args.runs if args.finetune_runs is None else args.finetune_runs)
            plan += [("gate candidate", None, gate.gate, running, True),
                     ("compare on slice", None, gate.compare, running, True)]
            for name, prepare, start, busy, counted in plan:
                if prepare is not None:
                    prepare()
                gaps, seconds, start_ms = measure(app, args.interval_ms, start, busy)
                if counted:
                    rows.append((mode, name, seconds, start_ms, gaps))
                if sampler is not None:
                    times = measure.last_times  # type: ignore[attr-defined]
                    for i in np.flatnonzero(gaps > 100):
                        print(f"    gap {gaps[i]:.0f} ms at +{times[i] - times[0]:.2f} s: "
                              f"{sampler.during(times[i], times[i + 1])}")
                print(f"  {mode} {name}: {seconds:.1f} s, max gap {gaps.max():.0f} ms, median "
                      f"{np.median(gaps):.0f} ms", flush=True)
    finally:
        for proc in competing:
            proc.kill()
        session.close()
    print(f"load average at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| worker | run | n | seconds (median) | start call ms (max) | max gap ms | "
          "p99 ms | median ms | gaps > 100 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.workers:
        for name in dict.fromkeys(r[1] for r in rows if r[0] == mode):
            got = [r for r in rows if r[0] == mode and r[1] == name]
            gaps = np.concatenate([r[4] for r in got])
            print(f"| {mode} | {name} | {len(got)} | {np.median([r[2] for r in got]):.1f} | "
                  f"{max(r[3] for r in got):.0f} | {gaps.max():.0f} | "
                  f"{np.percentile(gaps, 99):.0f} | {np.median(gaps):.0f} | "
                  f"{int((gaps > 100).sum())} |")
    for mode in args.workers:
        worst = max(r[4].max() for r in rows if r[0] == mode)
        print(f"{mode}: max gap over all runs {worst:.0f} ms (target <= 100 ms)")
    viewer.close()
    shutil.rmtree(folder, ignore_errors=True)  # the project: three 12 MB versions and more
    return 0


if __name__ == "__main__":
    sys.exit(main())
