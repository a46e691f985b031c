"""How long does the napari GUI freeze while the Segment widget runs a whole volume?

    xvfb-run -a .venv/bin/python scripts/bench_gui_stall.py [--slices 256] [--batch-size 8]

Opens a napari Viewer (shown, on a virtual X display) with the phantom volume, docks the Segment
widget with the shipped default model, starts ``SegmentWidget.run_volume`` (the threaded worker
path the button uses) and runs a 10 ms ``QTimer`` in the GUI thread from the click until the run
has finished (its last GUI steps included). Every gap between two ticks beyond 10 ms is time the
event loop could not run: the stall. Prints the max / 99th percentile / median gap and how many
exceeded 100 ms (the target: none), counted from the click, so the synchronous ``run_volume()``
call is one of the gaps (its own duration is printed too). The result layers exist already: the
widget makes them when the image is chosen. A benchmark, not a test; the load average is printed
because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
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
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets import SegmentWidget
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=0, n_slices=args.slices)
    viewer = napari.Viewer(show=True)
    image = viewer.add_image(ph.volume, name="hip phantom", scale=ph.spacing)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.image_layer = image
    widget._device.value = args.device
    widget._batch.value = args.batch_size
    viewer.dims.set_point(0, image.data_to_world((args.slices // 2, 0, 0))[0])
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
    net = widget.load_model()  # loading the checkpoint is not part of the run
    threads: set[int] = set()  # torch's thread count in the worker (the widget limits it)
    net.register_forward_pre_hook(lambda *_: threads.add(torch.get_num_threads()))

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(args.interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    finished = []
    t0 = time.perf_counter()
    timer.start()
    worker = widget.run_volume()
    t_started = time.perf_counter()  # run_volume returns once the worker is started
    if worker is None:
        print("run_volume did not start a worker (see the napari notifications)", file=sys.stderr)
        return 1
    worker.finished.connect(lambda: finished.append(time.perf_counter()))
    while not finished or widget._run is not None:
        app.processEvents()
        time.sleep(0.001)
    for _ in range(10):  # let the last layer updates run, and time them too
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    run = widget.last_run
    # Gaps from the click: the synchronous start is the first one.
    ticks = [t for t in ticks if t > t0]
    gaps = np.diff(np.asarray([t0, *ticks])) * 1000
    over = int((gaps > 100).sum())
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads in the worker "
          f"{sorted(threads)} (GUI thread {torch.get_num_threads()}); Qt platform "
          f"{app.platformName()}")
    print(f"run: {run.done}/{run.total} slices in {finished[0] - t0:.1f} s, batch "
          f"{args.batch_size}, {run.batches} batches, status '{widget._status.value}'")
    print(f"start-up: run_volume() itself took {1000 * (t_started - t0):.0f} ms (synchronous: "
          "checks the image, clears the boxes, makes the worker; it starts from the event loop "
          "once napari's activity bar is up)")
    print(f"event-loop gaps from the click to the end ({len(gaps)} ticks of "
          f"{args.interval_ms} ms): max {gaps.max():.0f} ms, "
          f"99th percentile {np.percentile(gaps, 99):.0f} ms, median {np.median(gaps):.0f} ms, "
          f"{over} above 100 ms")
    worst = int(np.argmax(gaps))
    print(f"the longest gap ended {ticks[worst] - t0:.2f} s after the click "
          f"(the run's last batch was reported at {finished[0] - t0:.2f} s)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
