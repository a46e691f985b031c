"""Real data: fine-tune the default model on 20 HC18 fetal-head images, test on the other 40.

    .venv/bin/python scripts/hc18_finetune.py                       # ~5 min on a 2-core CPU

HC18 (van den Heuvel et al., PLoS ONE 2018, CC BY 4.0) is the only labelled real ultrasound we
have: a large object (the skull outline, filled) rather than the small acetabulum, so this measures
how the pipeline transfers to real speckle, not acetabulum accuracy. Images are resized to
--size (default 272x400, a third of 800x540 in area terms) and the RPN's anchor sizes are scaled up to
fit heads (--anchors; the anchor count per cell stays 9, so every trained weight is reused).
Prints dice before and after, and the time it took; writes docs/hc18_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_roiseg.cli.compare import evaluate_model
from napari_roiseg.segment import default_checkpoint
from napari_roiseg.cli.train_job import LabelledVolume, train_model
from sample_data.real_data import load_hc18
from src_model.checkpoint import load_checkpoint
from src_model.data import _resize
from src_model.model import build_model
from src_model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _stack(samples, size):
    imgs = np.stack([_resize(im, size, "bilinear") for _, im, _ in samples]).astype(np.uint8)
    masks = np.stack([_resize(m != 0, size, "nearest") for _, _, m in samples]).astype(np.uint8)
    return imgs, masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(default_checkpoint()))
    p.add_argument("--size", type=int, nargs=2, default=(272, 400), metavar=("H", "W"))
    p.add_argument("--anchors", default="64,128,256")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--report", default=str(ROOT / "docs" / "hc18_finetune.json"))
    args = p.parse_args()
    samples = sorted(load_hc18(), key=lambda s: s[0])
    train_s, test_s = samples[:20], samples[20:60]
    size = tuple(args.size)
    train = LabelledVolume("hc18-train", *_stack(train_s, size))
    test = LabelledVolume("hc18-test", *_stack(test_s, size))

    base, meta = load_checkpoint(args.model)
    anchors = tuple(int(a) for a in args.anchors.split(","))
    model = build_model(base.config.replace(anchor_sizes=anchors))
    model.load_state_dict(base.state_dict())  # same shapes: only the anchor geometry changes
    before = evaluate_model(model.eval(), [test])
    t0 = time.perf_counter()
    cfg = TrainConfig(steps=args.steps, batch_size=4, lr=args.lr, seed=0)
    model, outcome = train_model([train], model=model, train_config=cfg, negatives="none")
    seconds = time.perf_counter() - t0
    after = evaluate_model(model.eval(), [test])
    for m in (before, after):
        m.pop("per_slice", None)
    report = {
        "train_images": [s[0] for s in train_s], "test_images": len(test_s), "size": size,
        "anchor_sizes": anchors, "steps": args.steps, "lr": args.lr,
        "finetune_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
        "dice_before": before["per_slice_mean"]["dice"], "dice_after": after["per_slice_mean"]["dice"],
        "pooled_dice_before": before["pooled"]["dice"], "pooled_dice_after": after["pooled"]["dice"],
        "before": before, "after": after, "state": outcome.state,
    }
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"HC18 test dice (40 images, per-image mean / pooled): before "
          f"{report['dice_before']:.3f} / {report['pooled_dice_before']:.3f}, after "
          f"{report['dice_after']:.3f} / {report['pooled_dice_after']:.3f}; fine-tuning "
          f"{args.steps} steps took {seconds:.0f} s")


if __name__ == "__main__":
    main()
