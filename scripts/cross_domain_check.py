"""Cross-domain check: fine-tune on 3 sweeps of an unseen phantom v2 style, test on 7 others,
against a U-Net trained from scratch on the same frames for the same wall time.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/cross_domain_check.py        # ~15 min, 2 cores

What a radiologist's first real scans look like to the model, made by the project itself: one
acquisition style (frame size, pixel size, depth, gain, speckle, overlays) drawn from
``--style-seed`` (never used to train or tune anything) with the Graf label (ilium + roof,
``--label``); 10 sweeps of that style that differ in anatomy (seeds ``--seeds``, first 3 to
fine-tune on, last 7 to test). Fine-tuning goes through the public API exactly as a script
would (``napari_roiseg.api.finetune`` on the 3 sweeps' frames as arrays: pixel size unknown),
with the API's defaults unless ``--steps`` / ``--lr`` say otherwise. The anchor, a plain U-Net
(the project's, Dice + CE loss, Adam 1e-3, flips), is trained from scratch on the same frames
until it has used the same wall time. Writes ``--report`` (JSON) and prints one line per model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def sweeps(style_seed: int, seeds: list[int], frames: int, label: str, size: tuple[int, int]):
    from sample_data.phantom_v2 import draw_style, make_phantom_v2

    style = draw_style(style_seed, shape=size)
    return style, [make_phantom_v2(s, n_slices=frames, label=label, style=style) for s in seeds]


def pooled(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    p, t = pred != 0, truth != 0
    tp = float((p & t).sum())
    return {"dice": 2 * tp / max(p.sum() + t.sum(), 1), "precision": tp / max(p.sum(), 1),
            "recall": tp / max(t.sum(), 1)}


def score(segment, test) -> dict:
    per_case, preds = [], []
    for ph in test:
        pred = segment(ph.volume)
        preds.append(pred)
        per_case.append(round(pooled(pred, ph.labels)["dice"], 4))
    truth = np.concatenate([ph.labels for ph in test])
    return {**{k: round(v, 4) for k, v in pooled(np.concatenate(preds), truth).items()},
            "per_case_dice": per_case}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint to start from (default: shipped)")
    p.add_argument("--style-seed", type=int, default=7001)
    p.add_argument("--seeds", default="7101-7110", help="10 sweep seeds: 3 to tune, 7 to test")
    p.add_argument("--frames", type=int, default=12, help="frames per sweep")
    p.add_argument("--size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    p.add_argument("--label", default="ilium_roof", choices=["roof", "ilium_roof"])
    p.add_argument("--steps", type=int, default=None, help="default: the API's")
    p.add_argument("--lr", type=float, default=None, help="default: the API's")
    p.add_argument("--tune-rois", action="store_true",
                   help="re-pick the ROI filter on the validation frames (finetune(tune_rois=True))")
    p.add_argument("--no-tune-rois", action="store_true", help="(the default; kept for old commands)")
    p.add_argument("--freeze-blocks", type=int, default=None, help="default: the API's")
    p.add_argument("--anchors", choices=["auto", "fit", "keep"], default=None,
                   help="refit the RPN anchors to the labelled boxes (default: the API's auto)")
    p.add_argument("--no-negatives", action="store_true",
                   help="train on the labelled frames only (default: the tune sweeps' frames "
                        "without the structure are passed as negatives, as an annotator marks "
                        "empty frames)")
    p.add_argument("--no-unet", action="store_true")
    p.add_argument("--report", default=str(ROOT / "docs" / "cross_domain.json"))
    args = p.parse_args()
    from napari_roiseg.api import finetune
    from napari_roiseg.segment import segment_array

    lo, hi = (int(v) for v in args.seeds.split("-"))
    seeds = list(range(lo, hi + 1))
    if len(seeds) < 4:
        raise SystemExit("--seeds needs at least 4 sweeps (3 to tune, the rest to test)")
    style, data = sweeps(args.style_seed, seeds, args.frames, args.label, tuple(args.size))
    tune, test = data[:3], data[3:]
    image = np.concatenate([ph.volume for ph in tune])
    labels = np.concatenate([ph.labels for ph in tune])
    labelled = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1)).tolist()
    options = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    if args.tune_rois:
        options["tune_rois"] = True
    if args.freeze_blocks is not None:
        options["freeze_blocks"] = args.freeze_blocks
    if args.anchors is not None:
        options["anchors"] = args.anchors
    empty = sorted(set(range(len(image))) - set(labelled))
    if not args.no_negatives:
        options["negatives"] = empty
    start = args.model

    before = score(lambda v: segment_array(v, start).labels, test)
    t0 = time.perf_counter()
    net = finetune(image, labels, slices=labelled, model=start, **options)
    tune_s = time.perf_counter() - t0
    after = score(lambda v: segment_array(v, net).labels, test)
    summary = getattr(net, "finetune_summary", {})
    report = {
        "command": "scripts/cross_domain_check.py " + " ".join(
            f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, (list, tuple))
                                         else str(v))
            for k, v in vars(args).items()
            if v is not None and k != "report" and not isinstance(v, bool)),
        "style": style.to_dict(), "label": args.label, "frames_per_sweep": args.frames,
        "tune_seeds": seeds[:3], "test_seeds": seeds[3:], "tune_frames": len(image),
        "tune_frames_labelled": len(labelled),
        "negatives": 0 if args.no_negatives else len(empty), "torch_threads": torch.get_num_threads(),
        "start_model": start or "shipped default",
        "finetune": {"seconds": round(tune_s, 1), "steps": summary.get("steps_done"),
                     "options": options or "API defaults", "config_reference": {
                         "pixel_spacing_mm": net.config.pixel_spacing_mm,
                         "frame_height_px": net.config.frame_height_px},
                     "anchor_sizes": list(net.config.anchor_sizes),
                     "roi_filter": summary.get("roi_filter"),
                     "validation_slices": summary.get("validation_slices")},
        "rpn_fcn_before": before, "rpn_fcn_after": after,
    }
    print(f"RPN-FCN before {before['dice']:.3f}, after fine-tuning ({tune_s:.0f} s) "
          f"{after['dice']:.3f} (P {after['precision']:.3f} R {after['recall']:.3f})", flush=True)
    if not args.no_unet:
        frames = labelled if args.no_negatives else list(range(len(image)))
        report["unet_same_time"] = train_unet(tune, frames, tune_s, test)
        u = report["unet_same_time"]
        print(f"U-Net from scratch, same {tune_s:.0f} s ({u['steps']} steps): {u['dice']:.3f}")
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.report}")


def train_unet(tune, frames, seconds: float, test) -> dict:
    """The project's U-Net, from scratch, Dice + CE, on the same frames, for ``seconds``."""
    from napari_roiseg.cli.train_job import LabelledVolume, train_model
    from napari_roiseg.segment import segment_array
    from src_model.config import get_preset
    from src_model.model import build_model
    from src_model.train import TrainConfig

    image = np.concatenate([ph.volume for ph in tune])[frames]
    labels = np.concatenate([ph.labels for ph in tune])[frames]
    torch.manual_seed(0)
    model = build_model(get_preset("fast", arch="unet", seg_loss="dice_ce"))
    deadline = time.perf_counter() + seconds
    cfg = TrainConfig(steps=100_000, batch_size=4, lr=1e-3, seed=0, lr_step=0)
    model, outcome = train_model([LabelledVolume("tune", image, labels)], model=model,
                                 train_config=cfg, negatives="all", augment=True,
                                 should_stop=lambda: time.perf_counter() > deadline)
    model.eval()
    return {**score(lambda v: segment_array(v, model).labels, test),
            "steps": outcome.steps_done, "seconds": round(seconds, 1)}


if __name__ == "__main__":
    main()
