"""Evidence for the review queue: deliberately broken slices rise to the top.

    .venv/bin/python scripts/review_evidence.py            # -> docs/review_evidence.json
    xvfb-run -a .venv/bin/python scripts/review_evidence.py --screenshot   # + the screenshot

A phantom volume (``sample_data.phantom.make_phantom``, 256 slices of 367x192 by default) is
segmented with the shipped default model (``segment.segment_array``, which fills the per-slice
review rows). On four slices inside the labelled run the model's output is then degraded the way
real failures look -- the box (and its mask) shifted by one box width, the mask blanked (box
lost), a spurious blob added to the mask, the probabilities pulled toward 0.5 -- and the queue
is recomputed. The script prints each degraded slice's rank among all slices and the top of the
queue, and writes the numbers to ``docs/review_evidence.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def degrade(kind: str, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of one slice's ``iter_predict`` result with a typical failure put in."""
    r = {k: np.array(v, copy=True) for k, v in result.items()}
    if kind == "shift":  # the detector picked the wrong place: box and mask move together
        dx = int(round(float(r["boxes"][0, 2] - r["boxes"][0, 0]))) + 4
        r["boxes"][:, [0, 2]] += dx
        r["mask"] = np.roll(r["mask"], dx, axis=1)
        r["probabilities"] = np.roll(r["probabilities"], dx, axis=1)
    elif kind == "blank":  # missed: no box, no mask
        r["boxes"], r["scores"] = r["boxes"][:0], r["scores"][:0]
        r["mask"][:] = 0
        r["probabilities"][:] = 0
    elif kind == "blob":  # a spurious blob beside the real mask
        h, w = r["mask"].shape
        x1, y1, x2, y2 = r["boxes"][0]
        cy, cx = int(min(h - 10, y2 + 14)), int(np.clip((x1 + x2) / 2, 10, w - 10))
        yy, xx = np.ogrid[:h, :w]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 8 ** 2
        r["mask"][disk] = 1
        r["probabilities"][disk] = 0.9
    elif kind == "unsure":  # the model hesitates: probabilities pulled toward 0.5
        p = r["probabilities"]
        inside = p > 0
        p[inside] = 0.5 + 0.15 * (p[inside] - 0.5)
    else:
        raise ValueError(kind)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "docs" / "review_evidence.json"))
    p.add_argument("--screenshot", nargs="?", const=str(ROOT / "docs" / "images" /
                                                        "review_widget.png"), default=None,
                   help="also save napari with the Review widget docked (needs a display: "
                   "xvfb-run -a)")
    args = p.parse_args()

    from napari_roiseg.review import score_slices, slice_stats
    from napari_roiseg.segment import load_model, segment_array
    from sample_data.phantom import make_phantom
    from src_model.predict import predict

    ph = make_phantom(seed=args.seed, n_slices=args.slices)
    net = load_model(None)
    t0 = time.perf_counter()
    seg = segment_array(ph.volume, net, device="cpu", batch_size=8)
    seconds = time.perf_counter() - t0
    with_mask = np.flatnonzero(seg.labels.any(axis=(1, 2)))
    run = with_mask[(with_mask > with_mask.min() + 3) & (with_mask < with_mask.max() - 3)]
    kinds = ("shift", "blank", "blob", "unsure")
    chosen = [int(run[int(round(f * (len(run) - 1)))]) for f in (0.2, 0.4, 0.6, 0.8)]

    clean = score_slices(seg.stats)
    stats = seg.stats.copy()
    results = predict(net, ph.volume[chosen], device="cpu")  # uint8: same scaling as the run
    for k, kind, res in zip(chosen, kinds, results):
        assert np.allclose(slice_stats(res), seg.stats[k], equal_nan=True, atol=1e-4), k
        stats[k] = slice_stats(degrade(kind, res))
    scores = score_slices(stats)

    n = len(stats)
    rows = []
    print(f"{n} slices, {len(with_mask)} with a mask; segmentation {seconds:.1f} s")
    print(f"{'slice':>5} {'degradation':<11} {'rank':>4} {'score':>6}  reason   "
          f"(before: rank, score)")
    for k, kind in zip(chosen, kinds):
        row = {"slice": k, "degradation": kind, "rank": scores.rank(k),
               "score": round(float(scores.score[k]), 3), "reason": scores.reason(k),
               "rank_before": clean.rank(k), "score_before": round(float(clean.score[k]), 3)}
        rows.append(row)
        print(f"{k:>5} {kind:<11} {row['rank']:>4} {row['score']:>6.2f}  {row['reason']:<9}"
              f"({row['rank_before']}, {row['score_before']:.2f})")
    top = [{"slice": int(k), "score": round(float(scores.score[k]), 3),
            "reason": scores.reason(int(k)), "degraded": int(k) in chosen}
           for k in scores.order[:10]]
    print("top of the queue:", ", ".join(f"{t['slice']}{'*' if t['degraded'] else ''}"
                                         f" ({t['score']:.1f} {t['reason']})" for t in top))
    worst = max(r["rank"] for r in rows)
    print(f"all {len(rows)} degraded slices are within the top {worst} of {n} slices")
    out = {"phantom": {"seed": args.seed, "slices": n, "shape": list(ph.volume.shape[1:])},
           "model": "shipped default (src_model/weights/fast_default.pt)",
           "slices_with_mask": len(with_mask), "degraded": rows,
           "worst_rank": worst, "top10": top,
           "clean_top10": [int(k) for k in clean.order[:10]]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.screenshot:
        labels = seg.labels.copy()
        for k, kind, res in zip(chosen, kinds, results):
            labels[k] = degrade(kind, res)["mask"]
        screenshot(ph, labels, stats, seg.boxes, Path(args.screenshot))


def screenshot(ph, labels, stats, boxes, path: Path) -> None:
    """napari with the phantom, the (degraded) result and the Review widget docked."""
    import tempfile

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_roiseg._widgets.review_widget import ReviewWidget
    from napari_roiseg.layers import STATS_KEY, add_boxes_layer, filter_boxes

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    image = viewer.add_image(ph.volume, name="hip phantom", scale=ph.spacing)
    layer = viewer.add_labels(labels, name="hip phantom mask", scale=ph.spacing,
                              metadata={STATS_KEY: stats})
    add_boxes_layer(viewer, filter_boxes(boxes), image_layer=image, name="hip phantom boxes")
    widget = ReviewWidget(viewer, project=Path(tempfile.mkdtemp()) / "hip.roiseg")
    viewer.window.add_dock_widget(widget, name="Review queue", area="right")
    widget.select(image, layer)
    scores = widget.refresh_scores()
    widget.go_to(int(scores.order[0]))
    widget.mark_current("reviewed")
    widget.step(1)
    for _ in range(20):
        QApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {path}")
    viewer.close()


if __name__ == "__main__":
    main()
