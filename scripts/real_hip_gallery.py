"""What a model does on real infant hips with no fine-tuning: every standard-plane frame of the SPJ
set in ``../shared/data/spj-hip`` (51 real 256x256 frames, 26 rated standard; no masks), segmented
one by one, the mask outlined in red and the kept boxes in yellow.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/real_hip_gallery.py   # ~30 s

Writes ``--out`` (PNG) and ``--report`` (JSON: per frame the number of boxes, their best score and
the mask's area). There is no ground truth: the picture shows where the model looks, not how
well it does; ``scripts/cross_domain_check.py`` and HC18 (``scripts/hc18_finetune.py``) measure.
Frame size is all the model knows of the resolution here (``spacing=None``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--prefix", default="standard", help="frames whose name starts with this")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "real_hip_zero_shot.png"))
    p.add_argument("--report", default=str(ROOT / "docs" / "real_hip_zero_shot.json"))
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_roiseg.api import segment_volume
    from napari_roiseg.segment import load_model
    from sample_data.real_data import load_spj_hip

    model = load_model(args.model)
    frames = [(n, im) for n, im in load_spj_hip() if n.startswith(args.prefix)]
    frames.sort(key=lambda f: int(f[0].rsplit("_", 1)[-1]))
    cols = 6
    rows = -(-len(frames) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    per_frame = []
    for ax, (name, image) in zip(axes.flat, frames):
        mask, boxes = segment_volume(image, model=model, device="cpu", spacing=None)
        ax.imshow(image, cmap="gray")
        if mask.any():
            ax.contour(mask, [0.5], colors="r", linewidths=0.8)
        for _, y1, x1, y2, x2, _score in boxes:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="y", lw=0.6))
        ax.set_title(f"{name.rsplit('_', 1)[-1]}: {len(boxes)} box(es)", fontsize=7)
        per_frame.append({"frame": name, "boxes": len(boxes),
                          "best_score": round(float(boxes[:, 5].max()), 3) if len(boxes) else None,
                          "mask_pixels": int(mask.sum())})
    fig.tight_layout()
    fig.savefig(args.out, dpi=50)
    with_mask = sum(f["mask_pixels"] > 0 for f in per_frame)
    report = {"model": args.model or "shipped default", "frames": len(per_frame),
              "frames_with_a_mask": with_mask, "per_frame": per_frame}
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"{with_mask} of {len(per_frame)} frames with a mask; wrote {args.out}, {args.report}")


if __name__ == "__main__":
    main()
