"""The floor under the GUI stall probe: how long napari itself stops the event loop on this
machine for the drawing a run must do, with no model work anywhere.

    xvfb-run -a .venv/bin/python scripts/bench_gui_floor.py [--seconds 5] [--every 0.3]

Opens a shown napari Viewer with the 256-slice phantom, an empty mask (Labels), a boxes layer
(Shapes) and the ROI Seg dock, as ``bench_gui_stall.py`` does. A 10 ms ``QTimer`` ticks in the
GUI thread while one drawing action repeats every ``--every`` seconds; each row reports the
largest gap between ticks (what a user feels as a freeze), the 99th percentile, the median and the
number of gaps over 100 ms. Rows: the idle viewer; the shown slice's mask repainted (what a
segmentation writes); one box added on the shown slice; the shown slice changed (the user
browsing); and the time to add one Labels and one Shapes layer. A benchmark, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per row")
    p.add_argument("--every", type=float, default=0.3, help="seconds between actions")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets.main_dock import RoisegDock
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=0, n_slices=256)
    viewer = napari.Viewer(show=True)
    viewer.add_image(ph.volume, name="hip phantom")
    mask = viewer.add_labels(np.zeros_like(ph.labels), name="hip phantom mask")
    boxes = viewer.add_shapes(name="hip phantom boxes", ndim=3, shape_type="rectangle",
                              face_color="transparent", edge_color="yellow")
    viewer.window.add_dock_widget(RoisegDock(viewer), name="ROI Seg")
    app = QApplication.instance()
    shown = 128
    viewer.dims.set_current_step(0, shown)
    for _ in range(200):  # let the first draws and the dock's own start-up settle
        app.processEvents()
        time.sleep(0.005)

    def gaps_during(action) -> np.ndarray:
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        t0 = next_at = time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            if action is not None and time.perf_counter() >= next_at:
                action()
                next_at += args.every
            app.processEvents()
            time.sleep(0.001)
        timer.stop()
        return np.diff([t0, *ticks]) * 1000

    count = [0]

    def paint() -> None:  # a few more pixels of the shown slice, then the layer's refresh
        count[0] += 1
        mask.data[shown, 100:120, 50:50 + count[0] % 40] = 1
        mask.refresh()

    def box() -> None:
        count[0] += 1
        y = 10 + count[0] % 50
        boxes.add_rectangles([np.array([[shown, y, 10], [shown, y, 60], [shown, y + 50, 60],
                                        [shown, y + 50, 10]])])

    def browse() -> None:
        count[0] += 1
        viewer.dims.set_current_step(0, 100 + count[0] % 50)

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; Qt platform {app.platformName()}; "
          f"{args.seconds:g} s per row, an action every {args.every:g} s")
    print("| napari alone | max gap ms | p99 ms | median ms | gaps > 100 ms |")
    print("|---|---|---|---|---|")
    for name, action in (("idle viewer", None), ("mask of the shown slice repainted", paint),
                         ("one box added on the shown slice", box),
                         ("shown slice changed (browsing)", browse)):
        g = gaps_during(action)
        print(f"| {name} | {g.max():.0f} | {np.percentile(g, 99):.0f} | {np.median(g):.0f} | "
              f"{int((g > 100).sum())} |", flush=True)
    for kind in ("Labels", "Shapes"):
        t = time.perf_counter()
        if kind == "Labels":
            viewer.add_labels(np.zeros((1, *ph.volume.shape[1:]), np.uint8), name="floor x")
        else:
            viewer.add_shapes(name="floor y", ndim=3)
        app.processEvents()
        print(f"| one {kind} layer added (its call and first draw) | "
              f"{1000 * (time.perf_counter() - t):.0f} | | | |", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
