"""The paper's Table 1 on phantom volumes: RPN-FCN vs FCN-32s vs FCN-noPool5 vs U-Net.

Every method gets the same training volumes, the same number of steps, batch size, optimiser and
seed; the test volumes (other seeds) are never seen in training. Scores are the paper's
(per-slice mean over all test slices) plus the per-slice mean over slices with an object in truth or
prediction, and the pooled (pixel) scores the authors' code computed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ARCH_NAMES = {"rpn_fcn": "RPN-FCN", "fcn32s": "FCN-32s", "fcn_nopool5": "FCN-noPool5",
              "unet": "U-Net"}


def evaluate_model(model, volumes, batch_size: int = 8) -> dict[str, Any]:
    """Segment every test volume with ``model`` and score all slices together."""
    from src_model.metrics import evaluate_masks

    from .segment import segment_array

    preds, truths = [], []
    for v in volumes:
        preds.append(segment_array(v.volume, model, batch_size=batch_size).labels)
        truths.append(v.labels)
    return evaluate_masks(np.concatenate(preds), np.concatenate(truths))


def run_comparison(
    train_seeds: Sequence[int],
    test_seeds: Sequence[int],
    slices: int = 64,
    steps: int = 300,
    archs: str | Sequence[str] = "rpn_fcn,fcn32s,fcn_nopool5,unet",
    out: str | Path | None = None,
    quiet: bool = False,
    batch_size: int = 4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train and test each architecture; print a Markdown table and return the rows."""
    import torch
    from tqdm import tqdm

    from src_model.config import get_preset
    from src_model.model import build_model
    from src_model.train import TrainConfig

    from .train_job import load_source, show_progress, train_model

    if isinstance(archs, str):
        archs = [a for a in archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCH_NAMES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; choose from {sorted(ARCH_NAMES)}")
    if set(train_seeds) & set(test_seeds):
        raise ValueError("train and test seeds overlap: test volumes must never be seen in training")
    train = [load_source(f"phantom:{s}:{slices}") for s in train_seeds]
    test = [load_source(f"phantom:{s}:{slices}") for s in test_seeds]
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    rows = []
    for arch in archs:
        torch.manual_seed(seed)
        model = build_model(get_preset("fast", arch=arch))
        n_params = sum(p.numel() for p in model.parameters())
        bar = tqdm(total=steps, desc=ARCH_NAMES[arch], unit="step", disable=quiet)
        t0 = time.perf_counter()
        model, outcome = train_model(train, model=model, train_config=cfg,
                                     on_progress=lambda r: show_progress(bar, r))
        bar.close()
        train_s = time.perf_counter() - t0
        metrics = evaluate_model(model.eval(), test)
        rows.append({"arch": arch, "method": ARCH_NAMES[arch], "params": n_params,
                     "train_seconds": round(train_s, 1), "state": outcome.state,
                     "per_slice_mean": metrics["per_slice_mean"],
                     "per_slice_mean_nonempty": metrics["per_slice_mean_nonempty"],
                     "pooled": metrics["pooled"]})
    table = format_table(rows, train_seeds, test_seeds, slices, steps, batch_size)
    print(table)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.md").write_text(table + "\n")
        (folder / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows, train_seeds, test_seeds, slices, steps, batch_size) -> str:
    """Markdown table: per-slice means (all slices / slices with an object) and pooled dice."""
    head = (f"Train phantoms {list(train_seeds)}, test phantoms {list(test_seeds)}, {slices} slices "
            f"each; {steps} steps x {batch_size} slices, Adam 1e-3, fast-preset widths.\n\n"
            "| Method | Precision | Recall | Dice | Dice (slices with object) | Pooled dice "
            "| Params | Train s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m, ne, po = r["per_slice_mean"], r["per_slice_mean_nonempty"], r["pooled"]
        lines.append(f"| {r['method']} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{m['dice']:.3f} | {ne['dice']:.3f} | {po['dice']:.3f} | "
                     f"{r['params'] / 1e6:.2f} M | {r['train_seconds']:.0f} |")
    return "\n".join(lines)
