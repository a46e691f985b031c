"""Ablation of the mask head on phantom volumes: what makes the masks timid, measured one cause
at a time, same budget, same held-out seeds.

    .venv/bin/python scripts/ablation_head.py                       # all rows, ~1 h on 2 cores
    .venv/bin/python scripts/ablation_head.py --rows paper_ce,refine_dice_ce --steps 200  # quick

Causes (issue 14): the score map's stride (paper head: stride 16 + one x16 transposed conv; refine
head: ROI-conv decoder down to stride 2), the loss (cross-entropy vs cross-entropy + soft Dice
inside the ROIs), the rule that picks the weights (per-slice mean dice, which an empty slice
predicted empty wins, vs pooled dice), and the 2.5D input (slices z-1, z, z+1 as VGG's three
channels instead of one slice repeated). Every row trains the fast preset's backbone and RPN
from the same seed on the same volumes for the same number of steps; validation (weight choice)
is on seeds 50-51 only; the table is on test seeds that nothing was tuned on (default 300-303).

Validation during training scored each model with all its post-NMS proposals (the preset's test
filter at the time the table was made); every row then had its test-time ROI filter tuned on the
validation seeds before the test, as the shipped model has.

Writes ``docs/ablation_head.json`` (every row: settings, seconds, validation history, test
metrics under both weight-selection rules) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_roiseg.cli.compare import evaluate_model, tune_test_rois
from napari_roiseg.cli.train_job import load_source, train_model, validation_arrays
from src_model.config import get_preset
from src_model.model import build_model, count_parameters
from src_model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# name -> ModelConfig overrides of the fast preset
ROWS = {
    "paper_ce": {"decoder_channels": (), "seg_loss": "ce"},
    "paper_dice_ce": {"decoder_channels": (), "seg_loss": "dice_ce"},
    "refine_ce": {"decoder_channels": (64, 32, 16), "seg_loss": "ce"},
    "refine_dice_ce": {"decoder_channels": (64, 32, 16), "seg_loss": "dice_ce"},
    "refine_s4_dice_ce": {"decoder_channels": (64, 32), "seg_loss": "dice_ce"},
    # 2.5D: slices z-1, z, z+1 as VGG's three channels. Validation during training scored all
    # proposals when the first rows were made (test_score_threshold None), so this row does too.
    "refine_ce_2p5d": {"decoder_channels": (64, 32, 16), "seg_loss": "ce",
                       "test_score_threshold": None, "_context": 1},
}


class ContextSlices(torch.utils.data.Dataset):
    """A ``SliceDataset`` whose items carry the neighbouring slices: ``Tensor[3, H, W]`` = slices
    z-1, z, z+1 (clamped at the volume's ends), all three augmented alike (the augmentation's
    flip, gamma, gain, speckle and shift act on an ``(H, W, 3)`` stack)."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from src_model.data import gt_box_from_mask

        v, s = self.base.index[i]
        vol, lab = self.base.volumes[v]
        z = [min(max(s + d, 0), len(vol) - 1) for d in (-1, 0, 1)]
        image = np.stack([np.asarray(vol[k], np.float32) / 255.0 for k in z], axis=-1)
        mask = np.asarray(lab[s]) != 0
        if self.base.augment is not None:
            rng = np.random.default_rng((self.base.seed, int(i), int(self.base._draws[i])))
            self.base._draws[i] += 1
            image, mask = self.base.augment(image, mask, rng)
        image = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32)
        return torch.from_numpy(image), {
            "boxes": torch.from_numpy(gt_box_from_mask(mask)),
            "masks": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))}


def segment_2p5d(model, volume: np.ndarray, every: int = 1, score_threshold=None, top_k=None,
                 batch: int = 8) -> np.ndarray:
    """Masks of every ``every``-th slice of a uint8 volume, each fed with its neighbours."""
    vol = volume.astype(np.float32) / 255.0
    index = np.arange(0, len(vol), every)
    out = np.zeros((len(index), *vol.shape[1:]), np.uint8)
    with torch.no_grad():
        for a in range(0, len(index), batch):
            zs = index[a:a + batch]
            x = np.stack([vol[np.clip([z - 1, z, z + 1], 0, len(vol) - 1)] for z in zs])
            res = model(torch.from_numpy(x), score_threshold=score_threshold, top_k=top_k)
            out[a:a + len(zs)] = np.stack([r["mask"].numpy() for r in res])
    return out


def run_row_2p5d(name: str, overrides: dict, train, val_vols, test, args) -> dict:
    """The 2.5D row: trained like the others but without in-training validation (the library's
    validation feeds single slices); its last weights are kept (the 2D refinement rows also kept
    their last step). The ROI filter is tuned on the validation volumes, then the test."""
    from src_model.data import SliceDataset
    from src_model.metrics import evaluate_masks

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=0)
    torch.manual_seed(0)
    model = build_model(get_preset("fast", **overrides))
    base = SliceDataset([(v.volume, v.labels) for v in train], negatives=0.25, augment=True,
                        seed=0)
    t0 = time.perf_counter()
    from src_model.generators import drain
    from src_model.train import train_iter

    outcome = drain(train_iter(model, ContextSlices(base), cfg),
                    lambda r: None if args.quiet or r.step % 50 else
                    print(f"  {name} step {r.step} {r.seconds:.0f}s", flush=True))
    seconds = time.perf_counter() - t0
    model.eval()

    def every_2nd(volumes, net, thr, k):  # the validation slices, each with its neighbours
        return np.concatenate([segment_2p5d(net, v.volume, 2, thr, k) for v in volumes])

    truth = np.concatenate([v.labels[::2] for v in val_vols])
    thr, k, _ = tune_test_rois(model, val_vols, truth, segment=every_2nd)
    pred = np.concatenate([segment_2p5d(model, v.volume, 1, thr, k) for v in test])
    m = _kept(evaluate_masks(pred, np.concatenate([v.labels for v in test])))
    return {"name": name, "overrides": {kk: list(v) if isinstance(v, tuple) else v
                                        for kk, v in overrides.items()},
            "params": count_parameters(model), "train_seconds": round(seconds, 1),
            "history": [], "pooled_rule": {"step": outcome.steps_done,
                                           "roi_filter": {"score_threshold": thr, "top_k": k},
                                           "test": m}}


def _seeds(text: str) -> list[int]:
    lo, hi = (int(t) for t in text.split("-"))
    return list(range(lo, hi + 1))


def run_row(name: str, overrides: dict, train, val, val_raw, test, args) -> dict:
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      eval_every=args.eval_every, seed=0)
    torch.manual_seed(0)
    model = build_model(get_preset("fast", **overrides))
    history, by_mean = [], {"dice": -1.0, "state": None, "step": None}

    def on_progress(record) -> None:
        if record.metrics:
            m = record.metrics
            history.append({"step": record.step, "pooled_dice": m["pooled"]["dice"],
                            "per_slice_mean_dice": m["per_slice_mean"]["dice"]})
            # The old rule, tracked alongside: best per-slice mean dice on validation.
            if record.state == "running" and m["per_slice_mean"]["dice"] > by_mean["dice"]:
                by_mean.update(dice=m["per_slice_mean"]["dice"], step=record.step,
                               state=copy.deepcopy(model.state_dict()))
        if not args.quiet and (record.step % 50 == 0 or record.metrics):
            print(f"  {name} step {record.step}/{record.total_steps} {record.seconds:.0f}s "
                  + " ".join(f"{k}={v:.3f}" for k, v in record.losses.items()), flush=True)

    t0 = time.perf_counter()
    model, outcome = train_model(train, model=model, train_config=cfg, validation=val,
                                 on_progress=on_progress)
    seconds = time.perf_counter() - t0
    model.eval()
    row = {"name": name, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in overrides.items()},
           "params": count_parameters(model), "train_seconds": round(seconds, 1),
           "history": history}
    row["pooled_rule"] = {"step": outcome.best_step, **_tuned_scores(model, val_raw, test)}
    if by_mean["state"] is not None:
        model.load_state_dict(by_mean["state"])
        row["per_slice_mean_rule"] = {"step": by_mean["step"],
                                      **_tuned_scores(model, val_raw, test)}
    return row


def _tuned_scores(model, val_raw, test) -> dict:
    """The ROI filter picked on validation (as the shipped model's is), then the test scores."""
    thr, k, _ = tune_test_rois(model, *val_raw)
    model.config = model.config.replace(test_score_threshold=thr, test_top_k=k)
    return {"roi_filter": {"score_threshold": thr, "top_k": k}, "test": _scores(model, test)}


def _scores(model, test) -> dict:
    return _kept(evaluate_model(model, test))


def _kept(metrics: dict) -> dict:
    """The summary of ``evaluate_masks`` the report keeps (no per-slice lists)."""
    keep = ("pooled", "per_slice_mean", "per_slice_mean_nonempty", "n_slices",
            "n_slices_truth_nonempty", "n_slices_pred_nonempty")
    return {k: metrics[k] for k in keep}


def table(rows: list[dict]) -> str:
    lines = ["| row | rule | step | pooled dice | precision | recall | dice, slices w/ object "
             "or prediction | per-slice mean dice | train s |", "|---" * 9 + "|"]
    for r in rows:
        for rule in ("pooled_rule", "per_slice_mean_rule"):
            if rule not in r:
                continue
            t = r[rule]["test"]
            p = t["pooled"]
            lines.append(
                f"| {r['name']} | {rule.replace('_rule', '')} | {r[rule]['step']} | "
                f"{p['dice']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | "
                f"{t['per_slice_mean_nonempty']['dice']:.3f} | {t['per_slice_mean']['dice']:.3f} "
                f"| {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="paper_ce,paper_dice_ce,refine_ce,refine_dice_ce")
    p.add_argument("--train-seeds", default="1-10")
    p.add_argument("--val-seeds", default="50-51")
    p.add_argument("--test-seeds", default="300-303")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "docs" / "ablation_head.json"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="only merge the rows of these reports (runs made in parallel) into --out")
    args = p.parse_args()
    if args.merge:
        reports = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = sorted((r for rep in reports for r in rep["rows"]),  # noqa: C414
                      key=lambda r: list(ROWS).index(r["name"]))
        merged = {**reports[0], "rows": rows,
                  "commands": [rep["command"] for rep in reports]}
        Path(args.out).write_text(json.dumps(merged, indent=1))
        print(table(rows))
        return
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    train = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.train_seeds)]
    val_vols = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.val_seeds)]
    val = validation_arrays(val_vols, every=2)
    val_raw = validation_arrays(val_vols, every=2, normalize=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = [load_source(f"phantom:{s}:{args.slices}") for s in _seeds(args.test_seeds)]
    out = Path(args.out)
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = [r for r in previous if r["name"] not in names]
    for name in names:
        print(f"row {name}: {ROWS[name]}", flush=True)
        overrides = {k: v for k, v in ROWS[name].items() if k != "_context"}
        if ROWS[name].get("_context"):
            rows.append(run_row_2p5d(name, overrides, train, val_vols, test, args))
        else:
            rows.append(run_row(name, overrides, train, val, val_raw, test, args))
        rows.sort(key=lambda r: list(ROWS).index(r["name"]))
        report = {"command": "scripts/ablation_head.py " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                      if k not in ("out", "quiet", "rows")),
                  "train": args.train_seeds, "validation": args.val_seeds,
                  "test": args.test_seeds, "slices": args.slices,
                  "torch_threads": torch.get_num_threads(), "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)  # each finished row survives a later crash
        print(table(rows), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
