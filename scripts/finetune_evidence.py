"""Evidence for fine-tuning on corrected slices: does correcting 10 slices help the other ones?

    .venv/bin/python scripts/finetune_evidence.py --model src_model/weights/fast_default.pt

On a phantom volume the model has not seen (seed 200, 256 slices), take the model's prediction,
"correct" 10 slices spread across the labelled run with the phantom's ground truth (what a
radiologist would paint), find them again with the widget's corrected-slice detection, split them
into training and validation slices exactly as the Fine-tune widget does, fine-tune a new version
in a project folder, re-segment the volume, and score the OTHER slices (never trained or
validated on) against the ground truth before and after: per-slice mean, pooled, and the mean
over slices that hold an object. Prints the wall times and saves the widget's live plot as a PNG.
Quick check of the script itself: ``--slices 24 --steps 3``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Before anything that could load OpenGL: see napari_roiseg.api.prepare_torch_import.
import torch  # noqa: F401  isort: skip
import torchvision  # noqa: F401  isort: skip

ROOT = Path(__file__).resolve().parents[1]


def spread_slices(start: int, stop: int, n: int) -> list[int]:
    """``n`` slices spread over ``[start, stop)``, away from its two ends (tiny labels there)."""
    points = np.linspace(start, stop - 1, n + 2)[1:-1]
    return sorted(set(int(round(p)) for p in points))


def table(before: dict, after: dict, n_object: int) -> str:
    rows = [("dice, per-slice mean", "per_slice_mean", "dice"),
            ("dice, pooled", "pooled", "dice"),
            (f"dice, slices with an object (n={n_object})", "object", "dice"),
            ("precision, per-slice mean", "per_slice_mean", "precision"),
            ("precision, pooled", "pooled", "precision"),
            ("recall, per-slice mean", "per_slice_mean", "recall"),
            ("recall, pooled", "pooled", "recall")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  before   after   change"]
    for name, group, metric in rows:
        b, a = before[group][metric], after[group][metric]
        lines.append(f"{name:<{width}}  {b:6.3f}  {a:6.3f}  {a - b:+7.3f}")
    return "\n".join(lines)


def scores(pred: np.ndarray, truth: np.ndarray, slices: list[int], with_object: list[int]) -> dict:
    from napari_roiseg.finetune import evaluate

    out = evaluate(pred, truth, slices)
    out["object"] = (evaluate(pred, truth, with_object)["per_slice_mean"] if with_object
                     else {"dice": float("nan"), "precision": float("nan"), "recall": float("nan")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint to start from (default: the shipped default model)")
    p.add_argument("--seed", type=int, default=200, help="phantom seed (unseen in training)")
    p.add_argument("--slices", type=int, default=256)
    p.add_argument("--corrected", type=int, default=10, help="slices to correct")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--project", help="project folder (default: a temporary one)")
    p.add_argument("--plot", default=str(ROOT / "docs" / "images" / "finetune_plot.png"))
    p.add_argument("--report", default=str(ROOT / "docs" / "finetune_evidence.json"))
    args = p.parse_args()

    from matplotlib.figure import Figure

    from napari_roiseg.finetune import (
        Corrections, FinetuneConfig, Project, detect_corrected, draw_history, drain,
        format_slices, iter_finetune, plan_slices)
    from napari_roiseg.segment import default_checkpoint, load_model, segment_array
    from sample_data.phantom import make_phantom

    t_all = time.perf_counter()
    ph = make_phantom(seed=args.seed, n_slices=args.slices)
    volume, truth = ph.volume, ph.labels
    model = load_model(args.model)  # None: the shipped default (says how to fix it if missing)
    source = args.model or str(default_checkpoint())
    print(f"phantom seed {args.seed}: {volume.shape}, labelled slices {ph.params['label_slices']}"
          f"; model {source}")

    t0 = time.perf_counter()
    prediction = segment_array(volume, model, device=args.device).labels
    t_predict = time.perf_counter() - t0

    # The "radiologist": paint the ground truth over the prediction on spread-out slices.
    corrected = spread_slices(*ph.params["label_slices"], args.corrected)
    labels = prediction.copy()
    labels[corrected] = truth[corrected]
    corrections = Corrections(volume.shape[0], detect_corrected(labels, prediction))
    for k in corrected:  # a slice the model already had right is marked explicitly
        if k not in corrections.detected:
            corrections.mark(k, "corrected")
    plan = plan_slices(corrections.slices())
    print(f"corrected slices {format_slices(corrected)} (detected: "
          f"{format_slices(corrections.detected) or 'none'})\nplan: {plan.describe()}")
    for warning in plan.warnings:
        print(f"warning: {warning}")

    folder = Path(args.project) if args.project else Path(tempfile.mkdtemp(prefix="roiseg-ft-"))
    project = Project(folder)
    project.bind_image(f"phantom seed {args.seed}", volume.shape)
    if project.current_version is None:
        project.add_version(model, {"parent": None, "source": source})
    project.save_corrections(labels, corrections, prediction)
    config = FinetuneConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            device=args.device)

    def show(record) -> None:
        if record.metrics or record.state != "running" or record.step % 10 == 0:
            loss = f"{sum(record.losses.values()):.4f}" if record.losses else "  -   "
            dice = record.metrics["pooled"]["dice"] if record.metrics else None
            print(f"  step {record.step:4d}/{record.total_steps}  loss {loss}"
                  + (f"  validation dice {dice:.3f}" if dice is not None else "")
                  + ("" if record.state == "running" else f"  [{record.state}]"), flush=True)

    t0 = time.perf_counter()
    result = drain(iter_finetune(volume, labels, plan.train, plan.validation, model, config,
                                 negatives=corrections.negatives, project=project), show)
    t_finetune = time.perf_counter() - t0
    t0 = time.perf_counter()
    after_pred = segment_array(volume, result.model, device=args.device).labels
    t_resegment = time.perf_counter() - t0

    others = [k for k in range(volume.shape[0]) if k not in set(corrected)]
    with_object = [k for k in others if truth[k].any()]
    before, after = (scores(pr, truth, others, with_object) for pr in (prediction, after_pred))
    print(f"\nversion {result.version} ({result.state}, {result.steps_done} steps) in {folder}")
    print(f"scores on the {len(others)} OTHER slices (not corrected), against the ground truth:")
    print(table(before, after, len(with_object)))
    print(f"\nwall time: prediction {t_predict:.1f} s, fine-tuning {t_finetune:.1f} s "
          f"({result.steps_done} steps x {config.batch_size} slices), re-segmentation "
          f"{t_resegment:.1f} s, total {time.perf_counter() - t_all:.1f} s "
          f"({torch.get_num_threads()} torch threads)")

    fig = Figure(figsize=(6.4, 4.6), dpi=120)
    draw_history(fig, result.history, title=(
        f"fine-tuning on {len(plan.train)} corrected slices, validated on "
        f"{len(plan.validation)}; other slices: pooled dice {before['pooled']['dice']:.3f} "
        f"→ {after['pooled']['dice']:.3f}"))
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot)
    print(f"live-plot figure: {args.plot}")
    keep = ("per_slice_mean", "pooled", "object")
    Path(args.report).write_text(json.dumps({
        "command": "scripts/finetune_evidence.py " + " ".join(sys.argv[1:]), "model": source,
        "seed": args.seed, "slices": args.slices, "corrected": corrected,
        "train_slices": list(plan.train), "validation_slices": list(plan.validation),
        "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
        "state": result.state, "steps_done": result.steps_done, "other_slices": len(others),
        "other_slices_with_object": len(with_object),
        "before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
        "seconds": {"predict": round(t_predict, 1), "finetune": round(t_finetune, 1),
                    "resegment": round(t_resegment, 1)},
        "torch_threads": torch.get_num_threads()}, indent=1))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
