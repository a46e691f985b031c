"""Does a model put boxes on scanner overlays? Phantom v2 sweeps (text, depth ruler, grey/colour
bar, logo burned in) segmented at their pixel spacing; count the slices with a box on an overlay.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/overlay_check.py     # 500 slices, ~3 min

A box is "on an overlay" when its centre lies inside an overlay element's box or at least a
quarter of its area does; every box the model keeps counts (the ROIs that paint the mask), not
only the ones the Shapes layer shows. Seeds ``--seeds`` are used for nothing else. Also reports
the mask pixels painted on overlay pixels and pooled dice (roof label). Writes ``--report``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def on_overlay(box: np.ndarray, elements: list[dict]) -> str | None:
    """The kind of the overlay element ``box`` (x1, y1, x2, y2) sits on, or None."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max((x2 - x1) * (y2 - y1), 1e-6)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    for e in elements:
        ex1, ey1, ex2, ey2 = e["box"]
        inside = ex1 <= cx < ex2 and ey1 <= cy < ey2
        overlap = max(0.0, min(x2, ex2) - max(x1, ex1)) * max(0.0, min(y2, ey2) - max(y1, ey1))
        if inside or overlap >= 0.25 * area:
            return e["kind"]
    return None


def overlay_hits(boxes: np.ndarray, elements: list[dict]) -> list[dict]:
    """The rows of a result's ``boxes`` (``slice, y1, x1, y2, x2, score``) that sit on an overlay
    element (:func:`on_overlay`): ``{"slice", "kind", "score", "box_xyxy"}`` each."""
    hits = []
    for row in boxes:
        k, (y1, x1, y2, x2), score = int(row[0]), row[1:5], float(row[5])
        kind = on_overlay(np.array([x1, y1, x2, y2]), elements)
        if kind:
            hits.append({"slice": k, "kind": kind, "score": round(score, 3),
                         "box_xyxy": [round(float(v), 1) for v in (x1, y1, x2, y2)]})
    return hits


def check_sweeps(model, seeds, frames: int) -> dict:
    """Segment the phantom v2 sweeps ``seeds`` (``frames`` each, at their pixel spacing) with
    ``model``: ``{"hits"}`` (:func:`overlay_hits` rows with their ``seed``), ``"slices"``,
    ``"boxes"``, ``"mask_pixels_on_overlays"`` and ``"metrics"`` (roof label, no per-slice
    rows)."""
    from napari_roiseg.segment import segment_array
    from sample_data.phantom_v2 import make_phantom_v2
    from src_model.metrics import SegmentationEvaluator

    hits: list[dict] = []
    n_slices = n_boxes = painted = 0
    evaluator = SegmentationEvaluator()
    for seed in seeds:
        ph = make_phantom_v2(seed, n_slices=frames)
        result = segment_array(ph.volume, model, spacing=ph.spacing)
        evaluator.process(result.labels, ph.labels)
        painted += int(result.labels[:, ph.overlay_mask].sum())
        n_slices += len(ph.volume)
        n_boxes += len(result.boxes)
        hits += [{"seed": seed, **h} for h in overlay_hits(result.boxes, ph.style["overlays"])]
    metrics = evaluator.evaluate()
    metrics.pop("per_slice", None)
    return {"hits": hits, "slices": n_slices, "boxes": n_boxes,
            "mask_pixels_on_overlays": painted, "metrics": metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--seeds", default="8001-8025")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--report", default=str(ROOT / "docs" / "overlay_check.json"))
    args = p.parse_args()
    from napari_roiseg.segment import load_model

    model = load_model(args.model)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    t0 = time.perf_counter()
    found = check_sweeps(model, range(lo, hi + 1), args.frames)
    hits, n_slices, n_boxes = found["hits"], found["slices"], found["boxes"]
    painted, metrics = found["mask_pixels_on_overlays"], found["metrics"]
    slices_hit = len({(h["seed"], h["slice"]) for h in hits})
    report = {"model": args.model or "shipped default", "seeds": args.seeds,
              "frames": args.frames, "slices": n_slices, "boxes": n_boxes,
              "slices_with_a_box_on_an_overlay": slices_hit, "boxes_on_overlays": hits[:50],
              "mask_pixels_on_overlays": painted, "roof_metrics": metrics,
              "seconds": round(time.perf_counter() - t0, 1),
              "torch_threads": torch.get_num_threads()}
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"{slices_hit} of {n_slices} slices with a box on an overlay ({len(hits)} of {n_boxes} "
          f"boxes); {painted} mask pixels on overlays; roof pooled dice "
          f"{metrics['pooled']['dice']:.3f}; wrote {args.report}")


if __name__ == "__main__":
    main()
