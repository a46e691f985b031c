"""Screenshot of napari with the Segment widget docked and its results on a phantom volume.

    xvfb-run -a .venv/bin/python scripts/screenshot_segment.py        # -> docs/images/segment_widget.png

Uses the shipped default model, or ``--model CHECKPOINT``. While the default model does not
exist yet, ``--quick-train STEPS`` trains a throwaway fast-preset model on other phantom seeds
first (a few minutes on 2 CPU cores; the picture then says so in the widget's model line).
The volume is segmented through the widget's real worker path, then the viewer shows the slice
with the largest ground-truth acetabulum.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# Before napari draws anything: see napari_roiseg.api.prepare_torch_import.
import torch  # noqa: F401  isort: skip
import torchvision  # noqa: F401  isort: skip

ROOT = Path(__file__).resolve().parents[1]


def quick_model(steps: int):
    from napari_roiseg.cli.train_job import load_source, train_model
    from src_model.train import TrainConfig

    train = [load_source(f"phantom:{seed}:64") for seed in (1, 2, 3)]
    t0 = time.perf_counter()
    model, outcome = train_model(train, train_config=TrainConfig(steps=steps, batch_size=4, seed=0))
    print(f"quick-trained {outcome.steps_done} steps in {time.perf_counter() - t0:.0f} s")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint to use (default: the shipped default model)")
    p.add_argument("--quick-train", type=int, default=0, metavar="STEPS",
                   help="train a throwaway model for this many steps instead (no default model yet)")
    p.add_argument("--save-model", metavar="PATH",
                   help="also save the quick-trained model there (reuse it with --model)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (not a training seed)")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "segment_widget.png"))
    args = p.parse_args()

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets import SegmentWidget
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=args.seed, n_slices=args.slices)
    net = quick_model(args.quick_train) if args.quick_train else None
    if net is not None and args.save_model:
        from src_model.checkpoint import save_checkpoint

        save_checkpoint(args.save_model, net, {
            "description": f"quick-trained {args.quick_train} steps by screenshot_segment.py"})

    viewer = napari.Viewer(title="napari-roiseg: Segment")
    viewer.window._qt_window.resize(1500, 950)
    image = viewer.add_image(ph.volume, name="hip phantom", scale=ph.spacing)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (napari-roiseg)", area="right")
    if net is not None:
        widget.set_model(net, f"quick-trained {args.quick_train} steps, screenshot only")
    elif args.model:
        widget.model_panel._checkpoint.value = args.model

    worker = widget.run_volume()  # the real background path
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
    if worker is None or widget.last_run is None or widget.last_run.done != len(ph.volume):
        raise SystemExit("segmentation did not complete; see the messages above")

    area = ph.labels.reshape(len(ph.labels), -1).sum(1)
    best = int(np.argmax(area))
    viewer.dims.set_point(0, image.data_to_world((best, 0, 0))[0])
    viewer.layers.selection.active = viewer.layers[f"{image.name} mask"]
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, shot)
    mask = viewer.layers[f"{image.name} mask"].data
    print(f"slice {best}: truth {area[best]} px, mask {int(mask[best].sum())} px, "
          f"{viewer.layers[f'{image.name} boxes'].nshapes} boxes drawn; wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
