"""The paper's Table 1 on phantom volumes: RPN-FCN (paper head and ROI refinement head) vs FCN-32s
vs FCN-noPool5 vs U-Net.

Every method gets the same training volumes, steps, batch size, optimiser and seed, and every loss
option (``--losses``); each is reported with the loss that scored best on the *validation*
volumes, and RPN-FCN rows with the test-time ROI filter and ROI margin picked there too
(:func:`tune_test_time`; "all proposals" is the paper's setting, also reported). The test volumes (other seeds) are never
seen in training or in any choice. Scores are the paper's (per-slice mean over all test slices),
the per-slice mean over slices with an object in truth or prediction, and the pooled (pixel) scores
the authors' code computed; inference ms/slice is timed on the test volumes in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# method -> (name in the table, ModelConfig overrides of the fast preset)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "rpn_fcn_paper": ("RPN-FCN, paper head", {"arch": "rpn_fcn", "decoder_channels": ()}),
    "rpn_fcn": ("RPN-FCN, ROI refinement head", {"arch": "rpn_fcn",
                                                  "decoder_channels": (64, 32, 16)}),
    "fcn32s": ("FCN-32s", {"arch": "fcn32s"}),
    "fcn_nopool5": ("FCN-noPool5", {"arch": "fcn_nopool5"}),
    "unet": ("U-Net", {"arch": "unet"}),
}


def evaluate_model(model, volumes, batch_size: int | None = None) -> dict[str, Any]:
    """Segment every test volume with ``model`` (at its pixel spacing, when the volume knows it)
    and score all slices together; volumes may differ in size."""
    from src_model.metrics import SegmentationEvaluator

    from ..segment import segment_array

    evaluator = SegmentationEvaluator()
    for v in volumes:
        evaluator.process(segment_array(v.volume, model, batch_size=batch_size,
                                        spacing=getattr(v, "spacing", None)).labels, v.labels)
    return evaluator.evaluate()


def _is_volume_list(images: Any) -> bool:
    """``images`` is a list of labelled volumes (objects with ``.volume`` and ``.labels``)."""
    return isinstance(images, (list, tuple)) and bool(images) and all(
        hasattr(v, "volume") and hasattr(v, "labels") for v in images)


def tune_test_rois(model, images: Any, truth: np.ndarray,
                   thresholds=(0.0, 0.3, 0.5, 0.8, 0.9), top_ks=(None, 10, 3, 1), segment=None):
    """Pick the test-time ROI filter (RPN score threshold, top-k) with the best *pooled* dice
    on validation slices ``images`` (raw, as ``segment_array`` takes them) against ``truth``,
    or on a list of labelled volumes (``truth`` None; :func:`_is_volume_list`).

    The paper feeds all post-NMS proposals to the ROI convolution; on a small object most of
    those are background, so the shipped model filters them. Pooled dice, not a per-slice mean:
    an empty slice predicted empty would otherwise reward a filter that keeps no box at all.
    ``segment(images, model, score_threshold, top_k) -> masks`` replaces ``segment_array`` for
    models fed another way (the ablation's 2.5D row). Returns ``(score_threshold, top_k,
    table)``; ``model.config`` is not changed.
    """
    from src_model.metrics import evaluate_masks

    from ..segment import segment_array

    def score(thr, k):
        if segment is not None:
            return evaluate_masks(segment(images, model, thr, k), truth)
        # Through the config, as apply_roi_filter will set it: top_k None is "all proposals"
        # here too (a None call argument would mean "the config's own top-k").
        config = model.config
        model.config = config.replace(test_score_threshold=thr, test_top_k=k)
        try:
            if _is_volume_list(images):
                return evaluate_model(model, images)
            return evaluate_masks(segment_array(images, model).labels, truth)
        finally:
            model.config = config

    table = []
    for thr in thresholds:
        for k in top_ks:
            m = score(thr, k)
            table.append({"score_threshold": thr, "top_k": k, "pooled_dice": m["pooled"]["dice"],
                          "dice": m["per_slice_mean"]["dice"]})
    best = max(table, key=lambda r: (r["pooled_dice"], r["dice"]))
    return best["score_threshold"], best["top_k"], table


def tune_roi_filter(model, images: Any, truth: np.ndarray,
                    thresholds=(0.0, 0.3, 0.5, 0.8, 0.9), top_ks=(None, 10, 3, 1),
                    single_objects=(False, True)) -> dict[str, Any]:
    """The test-time ROI filter with the best pooled dice on validation slices: score
    threshold x top-k (:func:`tune_test_rois`) x ``test_single_object`` (keep only the boxes
    overlapping the best one), jointly, since one structure per slice makes a lower threshold
    safe. Returns ``{"score_threshold", "top_k", "single_object", "table"}``; ``model.config``
    is left as it was."""
    config, table = model.config, []
    try:
        for single in single_objects:
            model.config = config.replace(test_single_object=bool(single))
            _, _, rows = tune_test_rois(model, images, truth, thresholds, top_ks)
            table += [{**row, "single_object": bool(single)} for row in rows]
    finally:
        model.config = config
    best = max(table, key=lambda r: (round(r["pooled_dice"], 4), r["dice"]))
    return {"score_threshold": best["score_threshold"], "top_k": best["top_k"],
            "single_object": best["single_object"], "table": table}


def apply_roi_filter(model, chosen: dict[str, Any]) -> None:
    """Set a :func:`tune_roi_filter` result as ``model.config``'s test ROI filter."""
    model.config = model.config.replace(
        test_score_threshold=chosen["score_threshold"], test_top_k=chosen["top_k"],
        test_single_object=chosen["single_object"])


def tune_test_time(model, images: Any, truth: np.ndarray | None) -> dict[str, Any]:
    """Tune the RPN-FCN test-time choices on validation slices and set them in ``model.config``:
    the ROI filter (:func:`tune_roi_filter`), then, with it, the ROI margin
    (:func:`tune_roi_margin`). Returns the choices, with the two validation tables under
    ``"validation"`` and ``"validation_margin"``.

    ``images`` is either one array of raw slices (``truth`` its labels) or a list of labelled
    volumes (``.volume``, ``.labels``, optional ``.spacing``; ``truth`` None), each segmented
    at its own size and pixel spacing exactly as inference does (:func:`evaluate_model`):
    the way to tune on volumes of several sizes, which padding them to one array would distort
    (black margins are not what the model sees at inference)."""
    chosen = tune_roi_filter(model, images, truth)
    apply_roi_filter(model, chosen)
    margin, margins = tune_roi_margin(model, images, truth)
    model.config = model.config.replace(test_roi_margin=margin)
    return {**{k: v for k, v in chosen.items() if k != "table"}, "test_roi_margin": margin,
            "validation": chosen["table"], "validation_margin": margins}


def tune_roi_margin(model, images: Any, truth: np.ndarray, margins=(0, 4, 8, 16)):
    """Pick ``test_roi_margin`` (px grown on each side of a test ROI before the head) with the
    best pooled dice on validation slices, with the model's current ROI filter (tune that first:
    :func:`tune_roi_filter`). A box a few pixels too tight cuts the structure's edge off the
    mask; a wider window costs head time in proportion to its area, so ties go to the smaller
    margin. Returns ``(margin, table)``; ``model.config`` is left as it was.
    """
    from src_model.metrics import evaluate_masks

    from ..segment import segment_array

    config, table = model.config, []
    try:
        for margin in margins:
            model.config = config.replace(test_roi_margin=int(margin))
            m = (evaluate_model(model, images) if _is_volume_list(images)
                 else evaluate_masks(segment_array(images, model).labels, truth))
            table.append({"test_roi_margin": int(margin), "pooled_dice": m["pooled"]["dice"],
                          "dice": m["per_slice_mean"]["dice"]})
    finally:
        model.config = config
    best = max(table, key=lambda r: (round(r["pooled_dice"], 4), -r["test_roi_margin"]))
    return best["test_roi_margin"], table


def run_comparison(
    train_seeds: Sequence[int],
    test_seeds: Sequence[int],
    slices: int = 64,
    steps: int = 300,
    archs: str | Sequence[str] = "rpn_fcn_paper,rpn_fcn,fcn32s,fcn_nopool5,unet",
    out: str | Path | None = None,
    quiet: bool = False,
    batch_size: int = 4,
    seed: int = 0,
    losses: str | Sequence[str] = "ce,dice_ce",
    val_seeds: Sequence[int] = (50, 51),
) -> list[dict[str, Any]]:
    """Train and test each method with each loss; print a Markdown table and return the rows
    (one per method: its best loss on validation; every run is in ``row["runs"]``)."""
    import torch
    from tqdm import tqdm

    from src_model.config import get_preset
    from src_model.model import build_model
    from src_model.train import TrainConfig

    from .train_job import load_source, show_progress, train_model, validation_arrays

    archs = [a for a in archs.split(",") if a] if isinstance(archs, str) else list(archs)
    losses = [x for x in losses.split(",") if x] if isinstance(losses, str) else list(losses)
    unknown = [a for a in archs if a not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    seen = set(train_seeds) | set(val_seeds)
    if seen & set(test_seeds):
        raise ValueError("test seeds overlap train or validation seeds: test volumes must never "
                         "be seen in training or in a choice")
    train = [load_source(f"phantom:{s}:{slices}") for s in train_seeds]
    val = [load_source(f"phantom:{s}:{slices}") for s in val_seeds]
    val_raw = validation_arrays(val, every=2, normalize=False)
    test = [load_source(f"phantom:{s}:{slices}") for s in test_seeds]
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    rows = []
    for arch in archs:
        name, overrides = METHODS[arch]
        runs = []
        for loss in losses:
            torch.manual_seed(seed)
            model = build_model(get_preset("fast", **overrides, seg_loss=loss))
            n_params = sum(p.numel() for p in model.parameters())
            bar = tqdm(total=steps, desc=f"{name} ({loss})", unit="step", disable=quiet)
            t0 = time.perf_counter()
            model, outcome = train_model(train, model=model, train_config=cfg,
                                         on_progress=lambda r: show_progress(bar, r))
            bar.close()
            train_s = time.perf_counter() - t0
            model.eval()
            run = {"seg_loss": loss, "params": n_params, "train_seconds": round(train_s, 1),
                   "state": outcome.state}
            if model.config.arch == "rpn_fcn":
                paper = _scores(model, test, val_raw)  # all post-NMS proposals, as the paper
                chosen = tune_test_time(model, *val_raw)
                run["all_proposals"] = paper
                run["roi_filter"] = {k: v for k, v in chosen.items()
                                     if not k.startswith("validation")}
            run.update(_scores(model, test, val_raw))
            runs.append(run)
        best = max(runs, key=lambda r: r["validation_pooled_dice"])
        rows.append({"arch": arch, "method": name, **best, "runs": runs})
    table = format_table(rows, train_seeds, test_seeds, slices, steps, batch_size)
    print(table)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.md").write_text(table + "\n")
        (folder / "results.json").write_text(json.dumps(
            {"train_seeds": list(train_seeds), "validation_seeds": list(val_seeds),
             "test_seeds": list(test_seeds), "slices": slices, "steps": steps,
             "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
             "rows": rows}, indent=1))
    return rows


def merge_results(folders: Sequence[str | Path], out: str | Path) -> str:
    """Join the ``results.json`` of comparison runs made in parallel (same seeds, slices, steps
    and batch size, other methods) into one ``table.md`` + ``results.json`` in ``out``."""
    reports = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    keys = ("train_seeds", "validation_seeds", "test_seeds", "slices", "steps", "batch_size")
    for rep in reports[1:]:
        differ = [k for k in keys if rep[k] != reports[0][k]]
        if differ:
            raise ValueError(f"cannot merge runs that differ in {', '.join(differ)}")
    order = list(METHODS)
    rows = sorted((r for rep in reports for r in rep["rows"]), key=lambda r: order.index(r["arch"]))
    first = reports[0]
    table = format_table(rows, first["train_seeds"], first["test_seeds"], first["slices"],
                         first["steps"], first["batch_size"])
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(table + "\n")
    merged = {**first, "rows": rows, "merged_from": [str(f) for f in folders],
              "torch_threads": [rep["torch_threads"] for rep in reports]}
    (folder / "results.json").write_text(json.dumps(merged, indent=1))
    return table


def _scores(model, test, val_raw) -> dict[str, Any]:
    """Test scores, inference ms/slice on the test volumes, and the validation pooled dice (what
    picks the loss)."""
    from src_model.metrics import evaluate_masks

    from ..segment import segment_array

    t0 = time.perf_counter()
    metrics = evaluate_model(model, test)
    ms = 1000 * (time.perf_counter() - t0) / sum(len(v.volume) for v in test)
    val = evaluate_masks(segment_array(val_raw[0], model).labels, val_raw[1])
    return {"per_slice_mean": metrics["per_slice_mean"],
            "per_slice_mean_nonempty": metrics["per_slice_mean_nonempty"],
            "pooled": metrics["pooled"], "ms_per_slice": round(ms, 2),
            "validation_pooled_dice": val["pooled"]["dice"]}


def format_table(rows, train_seeds, test_seeds, slices, steps, batch_size) -> str:
    """Markdown table: per-slice means (all slices / slices with an object), pooled scores,
    the loss each method was picked with, params, training and inference time."""
    head = (f"Train phantoms {list(train_seeds)}, test phantoms {list(test_seeds)}, {slices} slices "
            f"each; {steps} steps x {batch_size} slices, Adam 1e-3, fast-preset widths; each "
            "method with the loss (and, for RPN-FCN, the ROI filter) that scored best on "
            "validation phantoms.\n\n"
            "| Method | Loss | Precision | Recall | Dice | Dice (slices with object) "
            "| Pooled dice | Pooled precision | Pooled recall | Params | Train s | ms/slice |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m, ne, po = r["per_slice_mean"], r["per_slice_mean_nonempty"], r["pooled"]
        lines.append(f"| {r['method']} | {r['seg_loss']} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} | {m['dice']:.3f} | {ne['dice']:.3f} | "
                     f"{po['dice']:.3f} | {po['precision']:.3f} | {po['recall']:.3f} | "
                     f"{r['params'] / 1e6:.2f} M | {r['train_seconds']:.0f} | "
                     f"{r['ms_per_slice']:.1f} |")
        if "all_proposals" in r:
            a = r["all_proposals"]
            lines.append(f"| ... same model, all proposals (paper) | | "
                         f"{a['per_slice_mean']['precision']:.3f} | "
                         f"{a['per_slice_mean']['recall']:.3f} | {a['per_slice_mean']['dice']:.3f}"
                         f" | {a['per_slice_mean_nonempty']['dice']:.3f} | "
                         f"{a['pooled']['dice']:.3f} | {a['pooled']['precision']:.3f} | "
                         f"{a['pooled']['recall']:.3f} | | | {a['ms_per_slice']:.1f} |")
    return "\n".join(lines)
