"""Train the shipped default model (fast preset) on phantom volumes and write it into the package.

    .venv/bin/python scripts/make_default_model.py            # ~1 h on a 2-core CPU

Writes src_model/weights/fast_default.pt (weights, config and metadata, atomically) and
docs/default_model.json (training settings, held-out test metrics, timings). The fast preset is
the ROI refinement head with cross-entropy (chosen by scripts/ablation_head.py). Train (1-10),
validation (50-51: picks the weights by pooled dice and the test-time ROI filter) and test
(100-107) phantoms have disjoint seeds, so the reported scores are on volumes nothing was tuned
on. The best weights so far are saved to runs/<out name>_partial.pt at every validation.

With ``--v2-seeds`` phantom v2 sweeps (``sample_data.phantom_v2``: frame sizes 256-800 px, pixel
sizes 0.05-0.3 mm, gain / TGC / speckle / blur varied, scanner overlays burned in) join the
training set, resampled to the model's 0.15 mm as inference resamples them; v2 validation sweeps
join the validation (padded to one size) and v2 test sweeps are scored on their own
(``test_v2`` in the report). ``--init`` continues from a checkpoint instead of starting afresh.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import torch

from napari_roiseg.cli.compare import evaluate_model, tune_test_time
from napari_roiseg.cli.train_job import LabelledVolume, load_source, train_model
from napari_roiseg.segment import default_checkpoint
from src_model.checkpoint import save_checkpoint
from src_model.config import ModelConfig, get_preset
from src_model.model import build_model
from src_model.preprocess import normalize_slices
from src_model.resolution import has_reference, model_size, resample_pair
from src_model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = default_checkpoint()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-seeds", default="1-10")
    p.add_argument("--val-seeds", default="50-51")
    p.add_argument("--test-seeds", default="100-107")
    p.add_argument("--slices", type=int, default=128)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=1800)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--out", default=str(SHIPPED))
    p.add_argument("--report", default=None,
                   help="JSON report (default: docs/default_model.json for the shipped --out, "
                        "else the --out path with .json, so an experiment never overwrites the "
                        "shipped model's report)")
    p.add_argument("--tune-only", action="store_true",
                   help="skip training: re-tune the ROI filter of --out and re-test it")
    p.add_argument("--init", default=None, help="start from this checkpoint (e.g. the v1 default)")
    p.add_argument("--v2-seeds", default=None,
                   help="also train on phantom v2 sweeps (domain-randomised: sizes, spacings, "
                        "overlays), e.g. 1-40; resampled to the model's 0.15 mm like inference")
    p.add_argument("--v2-frames", type=int, default=24)
    p.add_argument("--v2-label", choices=("roof", "ilium_roof"), default="roof",
                   help="phantom v2 label: the roof alone (the v1 phantom's) or ilium + roof as "
                        "one band (the Graf plane structure real hip labels draw)")
    p.add_argument("--v2-val-seeds", default="50-53")
    p.add_argument("--v2-test-seeds", default="100-107")
    p.add_argument("--train-only", choices=("all", "rpn", "heads"), default="all",
                   help="train only these parts of an --init model, the rest keeps its weights: "
                        "'rpn' (region proposals only: masks of the kept detections unchanged), "
                        "'heads' (RPN and mask head on the frozen backbone)")
    args = p.parse_args()
    if args.report is None:
        shipped = Path(args.out).resolve() == SHIPPED.resolve()
        args.report = str(ROOT / "docs" / "default_model.json" if shipped
                          else Path(args.out).with_suffix(".json"))
    train = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.train_seeds)]
    test = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.test_seeds)]
    # Validation on held-out training-distribution volumes, never on the test seeds.
    val_volumes = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.val_seeds)]
    v2 = lambda seeds: [load_source(f"phantom2:{s}:{args.v2_frames}:{args.v2_label}")  # noqa: E731
                        for s in _seeds(seeds)]
    test_v2 = v2(args.v2_test_seeds) if args.v2_seeds else []
    if args.v2_seeds:
        if not args.tune_only:  # re-tuning needs the v2 validation and test sweeps only
            train += v2(args.v2_seeds)
        val_volumes += v2(args.v2_val_seeds)
    if args.tune_only:
        from src_model.checkpoint import load_checkpoint

        model, old = load_checkpoint(args.out)
        meta = {k: old[k] for k in ("description", "training", "data", "made_by") if k in old}
        if not has_reference(model.config):
            # weights from before the resolution reference: the phantoms' own, as training
            # (train_model) records it now
            model.config = model.config.replace(pixel_spacing_mm=float(train[0].spacing[-1]))
        return _finish(args, model, meta, tuning_volumes(val_volumes), test, test_v2)
    # Validation at the model's 0.15 mm, frames of other sizes padded (black) to one size.
    val_raw = padded_validation(val_volumes, float(train[0].spacing[-1]), every=4)
    val = (normalize_slices(val_raw[0]), val_raw[1])
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      lr_step=args.lr_step, eval_every=args.eval_every, seed=0)
    torch.manual_seed(0)
    if args.init:
        from src_model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(args.init)
        frozen = freeze_except(model, args.train_only)
        print(f"training {args.train_only}: {frozen} parameters frozen", flush=True)
    else:
        model = build_model(get_preset("fast", pixel_spacing_mm=float(train[0].spacing[-1])))
    t0 = time.perf_counter()

    partial = ROOT / "runs" / f"{Path(args.out).stem}_partial.pt"  # one per --out

    def show(r):
        if r.step % 50 == 0 or r.metrics or r.state != "running":
            extra = f" val pooled dice {r.metrics['pooled']['dice']:.3f}" if r.metrics else ""
            print(f"step {r.step}/{r.total_steps} {r.seconds:.0f}s "
                  + " ".join(f"{k}={v:.3f}" for k, v in r.losses.items()) + extra, flush=True)
        if r.metrics and r.best_step == r.step and r.step > 0:  # a new best: keep it on disk
            partial.parent.mkdir(exist_ok=True)
            save_checkpoint(partial, model, {"description": "best weights so far",
                                             "step": r.step})

    # SIGTERM/SIGINT end training cleanly: the best weights so far are kept, tested and saved.
    stop = {"flag": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(flag=True))
    model, outcome = train_model(train, model=model, train_config=cfg, validation=val,
                                 on_progress=show, should_stop=lambda: stop["flag"])
    train_s = time.perf_counter() - t0
    meta = {
        "description": "napari-roiseg default model: fast preset trained on phantom volumes",
        "training": {**cfg.to_dict(), "state": outcome.state, "steps_done": outcome.steps_done,
                     "best_step": outcome.best_step,
                     "seconds": round(train_s, 1)},
        "data": {"train": [v.name for v in train], "init": args.init,
                 "trained_parts": args.train_only,
                 "validation": [f"{v.name} every 4th slice" for v in val_volumes],
                 "negatives": 0.25, "augment": True},
        "made_by": "scripts/make_default_model.py",
    }
    _finish(args, model, meta, tuning_volumes(val_volumes), test, test_v2)


def freeze_except(model, parts: str) -> int:
    """Freeze every parameter outside ``parts`` ("all": none, "rpn": the region proposal network
    trains, "heads": RPN and mask head train); returns the number of parameters frozen."""
    keep = {"all": ("",), "rpn": ("rpn.",), "heads": ("rpn.", "head.")}[parts]
    frozen = 0
    for name, param in model.named_parameters():
        if not name.startswith(keep):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def _seeds(text: str) -> range:
    lo, hi = (int(t) for t in text.split("-"))
    return range(lo, hi + 1)


def tuning_volumes(volumes, every: int = 2) -> list[LabelledVolume]:
    """Every ``every``-th slice of each validation volume, kept at its own size and pixel
    spacing: the test-time ROI filter and margin are tuned on these as inference sees them
    (resampled to the model's pixel size, never padded: padded black margins once pulled the
    filter to a 0.9 score threshold that cost real-size validation 0.01 (v1) and 0.04 (v2)
    pooled dice; docs/phantom_v2_pretraining.json, session_24)."""
    return [LabelledVolume(f"{v.name} every {every}", v.volume[::every], v.labels[::every],
                           v.spacing) for v in volumes]


def padded_validation(volumes, spacing_mm: float, every: int):
    """Every ``every``-th slice of ``volumes`` resampled to ``spacing_mm`` pixels by the rule
    inference uses (``src_model.resolution.model_size``) and padded with black at the bottom /
    right to one size: ``(raw uint8, truth)``."""
    import numpy as np

    reference = ModelConfig(pixel_spacing_mm=spacing_mm)
    parts = []
    for v in volumes:
        size = model_size(reference, v.volume.shape, v.spacing)
        parts.append(resample_pair(v.volume[::every], v.labels[::every], size))
    height = max(p[0].shape[1] for p in parts)
    width = max(p[0].shape[2] for p in parts)
    raw = np.zeros((sum(len(p[0]) for p in parts), height, width), np.uint8)
    truth = np.zeros_like(raw)
    k = 0
    for vol, lab in parts:
        n, h, w = vol.shape
        raw[k:k + n, :h, :w], truth[k:k + n, :h, :w] = vol, lab
        k += n
    return raw, truth


def _finish(args, model, meta, val, test, test_v2=()) -> None:
    """Tune the test-time ROI filter and margin on the validation volumes ``val``, test on
    held-out volumes, save."""
    model.eval()
    chosen = tune_test_time(model, val, None)
    tables = {k: chosen.pop(k) for k in ("validation", "validation_margin")}
    meta["roi_filter"] = {"chosen": chosen, "tuned_on": [v.name for v in val], **tables}
    t1 = time.perf_counter()
    metrics = evaluate_model(model, test)
    eval_s = time.perf_counter() - t1
    metrics.pop("per_slice", None)
    meta["test"] = {"volumes": [v.name for v in test], "metrics": metrics}
    if test_v2:  # phantom v2 sweeps, each at its own pixel spacing (resampled by the engine)
        m2 = evaluate_model(model, test_v2)
        m2.pop("per_slice", None)
        meta["test_v2"] = {"volumes": [v.name for v in test_v2], "metrics": m2}
    save_checkpoint(args.out, model, meta)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps({**meta, "eval_seconds": round(eval_s, 1),
                                             "torch_threads": torch.get_num_threads()}, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
