"""The main job: the sample hip volume, the shipped default model, napari.

With a display, ``roiseg demo`` opens napari with the phantom volume and its ground truth, docks
the one ROI Seg dock (all steps), segments the whole volume with the default model and shows boxes and masks.
Without one (or with ``--headless``) it runs the same pipeline and writes ``volume.tif``,
``labels.tif``, ``boxes.csv``, ``metrics.json`` and ``screenshot.png`` (napari drawn on a virtual
X display when ``xvfb-run`` is installed, else a matplotlib rendering of the same layers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in (
        "win32", "darwin")


def run_demo(out: str | Path = "roiseg-demo", headless: bool = False, seed: int = 0,
             slices: int = 256, model: Any = None, device: str = "auto") -> int:
    """Run the main job; returns a process exit status."""
    from sample_data.phantom import make_phantom

    if not headless and _has_display():
        return _interactive(make_phantom(seed=seed, n_slices=slices), model, device)
    return _headless(Path(out), seed, slices, model, device)


def _headless(out: Path, seed: int, slices: int, model: Any, device: str) -> int:
    from sample_data.phantom import make_phantom
    from src_model.metrics import evaluate_masks

    from ..segment import segment_array
    from ..io.volumes import write_boxes_csv, write_labels_tiff, write_volume_tiff

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph = make_phantom(seed=seed, n_slices=slices)
    t1 = time.perf_counter()
    result = segment_array(ph.volume, model, device=device)
    t2 = time.perf_counter()
    write_volume_tiff(out / "volume.tif", ph.volume, spacing=ph.spacing)
    write_labels_tiff(out / "truth.tif", ph.labels, spacing=ph.spacing)
    write_labels_tiff(out / "labels.tif", result.labels, spacing=ph.spacing)
    write_boxes_csv(out / "boxes.csv", result.boxes)
    metrics = evaluate_masks(result.labels, ph.labels)
    metrics.pop("per_slice", None)
    metrics["timing_seconds"] = {"phantom": round(t1 - t0, 2), "segment": round(t2 - t1, 2)}
    metrics["phantom_seed"] = seed
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shot = out / "screenshot.png"
    how = _screenshot(out, shot)
    m = metrics["per_slice_mean_nonempty"]
    print(f"segmented {slices} slices in {t2 - t1:.1f} s; dice {metrics['per_slice_mean']['dice']:.3f}"
          f" (per-slice mean), {m['dice']:.3f} on slices with an object, pooled "
          f"{metrics['pooled']['dice']:.3f}")
    print(f"wrote {out}/labels.tif, boxes.csv, metrics.json, screenshot.png ({how})")
    return 0


def _screenshot(out: Path, shot: Path) -> str:
    """Draw napari on a virtual display if possible, else a matplotlib figure of the same data."""
    xvfb = shutil.which("xvfb-run")
    if xvfb:
        cmd = [xvfb, "-a", sys.executable, "-m", "napari_roiseg.cli.demo", "--screenshot", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 and shot.exists():
            return "napari on a virtual display"
        print(f"napari screenshot failed ({proc.stderr.strip().splitlines()[-1:]}); "
              "drawing with matplotlib instead", file=sys.stderr)
    _matplotlib_figure(out, shot)
    return "matplotlib rendering; install xvfb for a napari screenshot"


def _best_slice(labels: np.ndarray) -> int:
    area = labels.reshape(len(labels), -1).sum(1)
    return int(np.argmax(area)) if area.any() else len(labels) // 2


def _matplotlib_figure(out: Path, shot: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.volumes import read_boxes_csv, read_volume

    vol = np.asarray(read_volume(out / "volume.tif").data)
    pred = np.asarray(read_volume(out / "labels.tif").data)
    truth = np.asarray(read_volume(out / "truth.tif").data)
    boxes = read_boxes_csv(out / "boxes.csv")
    z = _best_slice(truth)
    fig, ax = plt.subplots(figsize=(4, 7), dpi=100)
    ax.imshow(vol[z], cmap="gray")
    ax.contour(truth[z], levels=[0.5], colors="cyan", linewidths=1)
    ax.imshow(np.ma.masked_equal(pred[z], 0), cmap="autumn", alpha=0.5)
    for s, y1, x1, y2, x2, score in boxes[boxes[:, 0] == z][:3]:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime"))
        ax.text(x1, y1 - 2, f"{score:.2f}", color="lime", fontsize=7)
    ax.set_title(f"slice {z}: truth (cyan), mask (orange), boxes (green)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(shot)
    plt.close(fig)


def _open_viewer(volume: np.ndarray, truth: np.ndarray, spacing, show: bool):
    import napari

    from .._widgets import RoisegDock

    viewer = napari.Viewer(show=show, title="napari-roiseg demo")
    image = viewer.add_image(volume, name="hip phantom", scale=spacing)
    viewer.add_labels(truth, name="acetabulum ground truth", scale=spacing, opacity=0.4,
                      visible=False)
    widget = RoisegDock(viewer)  # the one dock: Segment -> Correct -> Fine-tune -> Review
    viewer.window.add_dock_widget(widget, name="ROI Seg (napari-roiseg)", area="right")
    return viewer, image, widget


def _point_dock_at_results(viewer: Any, image: Any) -> None:
    """The dock's mask and boxes are the model's result layers, never the ground truth (the
    first Labels layer in the viewer, which the dock would otherwise offer)."""
    from ..session import get_session

    session = get_session(viewer)
    for role, name in (("mask_layer", f"{image.name} mask"), ("boxes_layer", f"{image.name} boxes")):
        if name in viewer.layers:
            setattr(session, role, viewer.layers[name])


def _interactive(ph, model: Any, device: str) -> int:
    import napari

    from ..api import segment_volume

    viewer, image, _ = _open_viewer(ph.volume, ph.labels, ph.spacing, show=True)
    segment_volume(image, model=model, device=device, viewer=viewer)
    _point_dock_at_results(viewer, image)
    viewer.dims.set_point(0, _best_slice(ph.labels) * ph.spacing[0])
    napari.run()
    return 0


def _screenshot_main(out: Path) -> int:
    """Runs under xvfb-run: load the headless outputs into napari and grab the window."""
    from ..layers import add_result_layers
    from ..io.volumes import read_boxes_csv, read_volume

    vol = read_volume(out / "volume.tif")
    truth = np.asarray(read_volume(out / "truth.tif").data)
    pred = np.asarray(read_volume(out / "labels.tif").data)
    boxes = read_boxes_csv(out / "boxes.csv")
    viewer, image, widget = _open_viewer(np.asarray(vol.data), truth, vol.spacing, show=True)
    add_result_layers(viewer, image, pred, boxes)
    _point_dock_at_results(viewer, image)
    viewer.dims.set_point(0, _best_slice(truth) * vol.spacing[0])
    viewer.window._qt_window.resize(1400, 900)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    img = viewer.screenshot(canvas_only=False, flash=False)
    import imageio.v3 as iio

    iio.imwrite(out / "screenshot.png", img)
    viewer.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        sys.exit(_screenshot_main(Path(sys.argv[2])))
    sys.exit(run_demo())
