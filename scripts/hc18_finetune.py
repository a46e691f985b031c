"""Real data: fine-tune the default model on 20 HC18 fetal-head images, test on the other 40.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/hc18_finetune.py   # ~25 min on one core of this CPU

HC18 (van den Heuvel et al., PLoS ONE 2018, CC BY 4.0) is the only labelled real ultrasound we
have: a large object (the skull outline, filled) rather than the small acetabulum, so this measures
how the pipeline transfers to real speckle, not acetabulum accuracy. Images are resized to
--size (default 272x400, a third of 800x540 in area terms). The RPN's anchors are fitted to the
training images' boxes as fine-tuning does (``--anchors auto``: ``adapt_config_anchors``; or a
list of sizes; the anchor count per cell stays 9, so every trained weight is reused).
``--val N`` of the 20 training images pick the weights (pooled dice every ``--eval-every`` steps),
the test-time ROI filter and the ROI margin; the 40 test images are used for nothing but the
final scores.
Prints dice before and after, and the time it took; writes docs/hc18_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from napari_roiseg.cli.compare import evaluate_model, tune_test_time
from napari_roiseg.segment import default_checkpoint
from napari_roiseg.cli.train_job import LabelledVolume, train_model
from sample_data.real_data import _resize, load_hc18
from src_model.anchor_fit import adapt_config_anchors, boxes_from_labels
from src_model.checkpoint import load_checkpoint, save_checkpoint
from src_model.model import build_model
from src_model.preprocess import normalize_slices
from src_model.resolution import has_reference
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
    p.add_argument("--anchors", default="auto",
                   help="'auto' (fit to the training boxes) or sizes, e.g. 64,128,256")
    p.add_argument("--steps", type=int, default=800,
                   help="800: the 400-step run's validation dice still rose at its end")
    p.add_argument("--val", type=int, default=4, help="training images held out for selection")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save", default=None, help="also write the fine-tuned checkpoint here")
    p.add_argument("--retune", default=None, metavar="CKPT",
                   help="skip training: take the weights --save wrote, redo the ROI choices "
                        "on the validation images and test again")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--report", default=str(ROOT / "docs" / "hc18_finetune.json"))
    args = p.parse_args()
    samples = sorted(load_hc18(), key=lambda s: s[0])
    train_s, test_s = samples[:20 - args.val], samples[20:60]
    val_s = samples[20 - args.val:20]
    size = tuple(args.size)
    train = LabelledVolume("hc18-train", *_stack(train_s, size))
    test = LabelledVolume("hc18-test", *_stack(test_s, size))

    base, meta = load_checkpoint(args.model)
    if args.anchors == "auto":
        config, anchor_info = adapt_config_anchors(base.config, boxes_from_labels(train.labels))
    else:
        config = base.config.replace(anchor_sizes=tuple(int(a) for a in args.anchors.split(",")))
        anchor_info = {"refit": False, "anchor_sizes": list(config.anchor_sizes)}
    model = build_model(config)
    model.load_state_dict(base.state_dict())  # same shapes: only the anchor geometry changes
    before = evaluate_model(model.eval(), [test])
    validation = val_raw = None
    if val_s:
        val_raw = _stack(val_s, size)
        validation = (normalize_slices(val_raw[0]), val_raw[1])  # as training validates
    t0 = time.perf_counter()
    cfg = TrainConfig(steps=args.steps, batch_size=4, lr=args.lr, seed=0,
                      eval_every=args.eval_every)
    if args.retune:  # the weights of an earlier run (its --save); only the choices are redone
        model, saved = load_checkpoint(args.retune)
        outcome = SimpleNamespace(best_step=saved.get("best_step"), state=saved.get("state"))
        if not has_reference(model.config):
            # weights from before the resolution reference: what train_model records now
            model.config = model.config.replace(frame_height_px=size[0])
    else:
        model, outcome = train_model([train], model=model, train_config=cfg, negatives="none",
                                     validation=validation)
    seconds = time.perf_counter() - t0
    model.eval()
    margin = roi_filter = None
    if val_raw is not None:  # the test-time ROI filter and margin, picked on validation images
        chosen = tune_test_time(model, *val_raw)
        margin = chosen.pop("test_roi_margin")
        roi_filter = {k: v for k, v in chosen.items() if not k.startswith("validation")}
    if args.save:
        save_checkpoint(args.save, model, {"description": "HC18 fine-tune (hc18_finetune.py)",
                                           "best_step": outcome.best_step,
                                           "state": outcome.state})
    after = evaluate_model(model, [test])
    # The same test images at their native 540 x 800: the model's reference (the training
    # frames' height, pixel size unknown) resamples them to its own size and maps masks back.
    native = LabelledVolume("hc18-test-native", np.stack([im for _, im, _ in test_s]),
                            np.stack([(m != 0).astype(np.uint8) for _, _, m in test_s]))
    after_native = evaluate_model(model, [native])
    for m in (before, after, after_native):
        m.pop("per_slice", None)
    report = {
        "train_images": [s[0] for s in train_s], "validation_images": [s[0] for s in val_s],
        "test_images": len(test_s), "size": size, "anchors": anchor_info,
        "anchor_sizes": list(model.config.anchor_sizes),
        "aspect_ratios": list(model.config.aspect_ratios), "steps": args.steps, "lr": args.lr,
        "best_step": outcome.best_step, "roi_filter": roi_filter, "test_roi_margin": margin,
        "finetune_seconds": None if args.retune else round(seconds, 1),
        "weights_from": args.retune, "torch_threads": torch.get_num_threads(),
        "dice_before": before["per_slice_mean"]["dice"], "dice_after": after["per_slice_mean"]["dice"],
        "pooled_dice_before": before["pooled"]["dice"], "pooled_dice_after": after["pooled"]["dice"],
        "pooled_dice_after_native_size": after_native["pooled"]["dice"],
        "dice_after_native_size": after_native["per_slice_mean"]["dice"],
        "before": before, "after": after, "after_native_size": after_native,
        "reference": {"pixel_spacing_mm": model.config.pixel_spacing_mm,
                      "frame_height_px": model.config.frame_height_px},
        "state": outcome.state,
    }
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"HC18 test dice (40 images, per-image mean / pooled): before "
          f"{report['dice_before']:.3f} / {report['pooled_dice_before']:.3f}, after "
          f"{report['dice_after']:.3f} / {report['pooled_dice_after']:.3f} "
          f"(native 540x800: {report['dice_after_native_size']:.3f} / "
          f"{report['pooled_dice_after_native_size']:.3f}); "
          + (f"weights of {args.retune}" if args.retune
             else f"fine-tuning {args.steps} steps took {seconds:.0f} s"))


if __name__ == "__main__":
    main()
