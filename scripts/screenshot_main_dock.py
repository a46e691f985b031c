"""Screenshot of the main dock (all steps) beside the viewer, as on a 1920x1080 screen.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshot_main_dock.py \
        [--out docs/images/main_dock.png] [--step Segment]

Opens napari at 1920x1080 with the phantom volume, docks the main dock with the shipped default
model, segments the volume (so the mask and boxes show), goes to a slice in the middle, shows
the chosen step and saves a screenshot of the whole window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/images/main_dock.png"))
    p.add_argument("--step", default="Segment", choices=["Segment", "Correct", "Fine-tune",
                                                         "Review"])
    p.add_argument("--slices", type=int, default=64)
    args = p.parse_args(argv)

    from napari_roiseg.api import prepare_torch_import

    prepare_torch_import()
    # isort: off
    import torchvision  # noqa: F401  (before anything draws: see prepare_torch_import)
    import napari
    # isort: on
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets import RoisegDock
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=0, n_slices=args.slices)
    viewer = napari.Viewer(show=True, title="napari-roiseg")
    window = viewer.window._qt_window
    window.resize(1920, 1080)
    image = viewer.add_image(ph.volume, name="hip", scale=ph.spacing)
    dock = RoisegDock(viewer)
    viewer.window.add_dock_widget(dock, name="ROI Seg", area="right")
    dock.segment.run_volume(sync=True)
    viewer.dims.set_point(0, image.data_to_world((args.slices // 2, 0, 0))[0])
    dock.show_step(args.step)
    app = QApplication.instance()
    for _ in range(30):
        app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(f"{args.out}: {shot.shape[1]}x{shot.shape[0]} px; dock {dock.width()}x{dock.height()} "
          f"px (minimum height {dock.minimumSizeHint().height()} px)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
