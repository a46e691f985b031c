"""The ``roiseg`` command line: generate, segment, evaluate, train, compare, demo.

Every subcommand calls the same functions the widgets use. Errors end with a one-line message and
a non-zero exit status (use ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


class CliError(Exception):
    """An error whose message is meant for the user as is."""


def _cmd_generate(args: argparse.Namespace) -> int:
    from sample_data.phantom import write_phantom

    vol, lab = write_phantom(args.out, seed=args.seed, n_slices=args.slices,
                             shape=(args.height, args.width))
    print(f"wrote {vol} and {lab}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..batch_inputs import expand_inputs

    items, one_volume = expand_inputs(args.inputs)
    options = {"device": args.device, "batch_size": args.batch_size,
               "score_threshold": args.score_threshold, "top_k": args.top_k}
    if one_volume:  # one volume cannot be sharded: under torchrun, rank 0 segments it
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        return _segment_one(items[0].source, Path(args.out), args.model, args.quiet, options)
    from ..batch import run_items

    result = run_items(items, Path(args.out), model=args.model, resume=args.resume,
                       progress=not args.quiet, **options)
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("ok", "reused", "error")}
    print(f"{len(result.rows)} volumes: {counts['ok']} segmented, {counts['reused']} reused "
          f"(--resume), {counts['error']} failed; see {result.summary}")
    return min(result.failed, 125)  # the exit status counts the failed volumes


def _segment_one(source: str, out: Path, model: str | None, quiet: bool,
                 options: dict[str, object]) -> int:
    """Today's one-volume layout: ``OUT/labels.tif`` and ``OUT/boxes.csv``; errors raise."""
    from tqdm import tqdm

    from ..batch import segment_to_folder
    from ..segment import load_model
    from ..io.volumes import read_volume

    vol = read_volume(source)
    net = load_model(model)  # fail on a bad checkpoint before any output file is made
    with tqdm(total=vol.data.shape[0], desc="segment", unit="slice", disable=quiet) as bar:
        row = segment_to_folder(vol, net, out, on_progress=lambda p: bar.update(p[0] - bar.n),
                                **options)
    print(f"wrote {out / 'labels.tif'} ({row['slices_with_mask']} slices with a mask) and "
          f"{out / 'boxes.csv'} ({row['boxes']} boxes)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from src_model.metrics import evaluate_masks

    from ..io.volumes import read_volume

    pred = np.asarray(read_volume(args.pred).data)
    truth = np.asarray(read_volume(args.truth).data)
    if pred.shape != truth.shape:
        raise CliError(f"--pred has shape {pred.shape} but --truth has {truth.shape}; "
                       "both must be label volumes of the same size")
    metrics = evaluate_masks(pred, truth)
    if not args.per_slice:
        metrics.pop("per_slice", None)
    text = json.dumps(metrics, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text)
    return 0


def _cmd_train(argv: list[str]) -> int:
    from .train_job import run

    return run(argv)


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import merge_results, run_comparison

    if args.merge:
        if not args.out:
            raise CliError("--merge needs --out, the folder for the joined table")
        print(merge_results(args.merge, args.out))
        return 0
    run_comparison(train_seeds=args.train_seeds, test_seeds=args.test_seeds, slices=args.slices,
                   steps=args.steps, archs=args.archs, out=args.out, quiet=args.quiet,
                   losses=args.losses, val_seeds=args.val_seeds)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, headless=args.headless, seed=args.seed, slices=args.slices,
                    model=args.model, device=args.device)


def _cmd_report(args: argparse.Namespace) -> int:
    from ..api import export_review_report
    from ..io.volumes import read_boxes_csv, read_volume

    if not (Path(args.project) / "project.json").exists():
        raise CliError(f"{args.project} is not a napari-roiseg project folder (no project.json)")
    labels = read_volume(args.labels).data if args.labels else None
    boxes = read_boxes_csv(args.boxes) if args.boxes else None
    paths = export_review_report(args.out, args.project, labels, boxes,
                                 name=args.name or Path(args.project).name)
    print(f"wrote {paths['html']} and {len(paths) - 1} CSV tables")
    return 0


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            lo, hi = (int(t) for t in text.split("-"))
            return list(range(lo, hi + 1))
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as 1,2,3 or 1-8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roiseg",
        description="RPN-FCN segmentation of small structures in 3D ultrasound (napari-roiseg).")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a phantom hip volume and its labels as TIFF")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--slices", type=int, default=256)
    g.add_argument("--height", type=int, default=367)
    g.add_argument("--width", type=int, default=192)
    g.add_argument("--out", required=True, help="folder for volume.tif and labels.tif")
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser(
        "segment", help="segment volumes: writes labels.tif and boxes.csv per volume",
        description="One volume file or folder of frames: OUT/labels.tif and OUT/boxes.csv. "
        "Several inputs, a folder of volumes or a glob: OUT/<name>/labels.tif, boxes.csv and "
        "done.json per volume, and OUT/summary.csv; the exit status is the number of volumes "
        "that failed. Runs sharded under torchrun (one volume list, each volume on one rank).")
    s.add_argument("inputs", nargs="+", metavar="IN",
                   help="TIFF, DICOM or NIfTI volume, folder of frames, folder of volumes, or a "
                   "quoted glob such as 'study/*.tif'")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resume", action="store_true",
                   help="skip volumes whose outputs an earlier run completed (batch layout)")

    s.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--batch-size", type=int, default=None,
                   help="slices per forward pass (default: 2 on the CPU, 16 on a GPU)")
    s.add_argument("--score-threshold", type=float, default=None,
                   help="drop RPN boxes below this objectness (default: the model's own)")
    s.add_argument("--top-k", type=int, default=None, help="keep at most K boxes per slice")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_segment)

    e = sub.add_parser("evaluate", help="precision/recall/dice of a label volume against truth")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--per-slice", action="store_true", help="include per-slice values")
    e.add_argument("--json-out", default=None, help="also write the JSON to this file")
    e.set_defaults(func=_cmd_evaluate)

    # `roiseg train` forwards its arguments to napari_roiseg.cli.train_job (also run by torchrun).
    sub.add_parser("train", help="train a model (see `roiseg train --help`)", add_help=False)

    c = sub.add_parser("compare", help="the paper's Table 1 on phantom volumes")
    c.add_argument("--train-seeds", type=_seeds, default=_seeds("1-6"))
    c.add_argument("--test-seeds", type=_seeds, default=_seeds("100-102"))
    c.add_argument("--slices", type=int, default=64, help="slices per phantom volume")
    c.add_argument("--steps", type=int, default=300, help="training steps for every method")
    c.add_argument("--val-seeds", type=_seeds, default=_seeds("50-51"),
                   help="phantoms that pick each method's loss and ROI filter")
    c.add_argument("--archs", default="rpn_fcn_paper,rpn_fcn,fcn32s,fcn_nopool5,unet",
                   help="methods: rpn_fcn_paper, rpn_fcn (ROI refinement head), fcn32s, "
                        "fcn_nopool5, unet")
    c.add_argument("--losses", default="ce,dice_ce",
                   help="every method is trained with each; the best on validation is shown")
    c.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="only join the results of runs made in parallel (their --out folders)")
    c.add_argument("--out", default=None, help="folder for table.md and results.json")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_compare)

    d = sub.add_parser("demo", help="the main job: sample volume + default model in napari")
    d.add_argument("--out", default="roiseg-demo", help="folder for the outputs")
    d.add_argument("--headless", action="store_true", help="never open a window")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--slices", type=int, default=256)
    d.add_argument("--model", default=None)
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("report", help="review report of a project: HTML + CSV")
    r.add_argument("project", help="project folder (corrections, versions, history)")
    r.add_argument("--out", required=True, help="folder for review.html and the CSV tables")
    r.add_argument("--labels", default=None, help="the model's mask (labels.tif from "
                   "`roiseg segment`) to include the review queue")
    r.add_argument("--boxes", default=None, help="boxes.csv from `roiseg segment` (queue inputs)")
    r.add_argument("--name", default=None, help="volume name shown in the report")
    r.set_defaults(func=_cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        if argv and argv[0] == "train":
            return _cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("roiseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, the traceback only on request
        if debug:
            raise
        print(f"roiseg: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
