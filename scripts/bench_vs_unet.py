"""Inference time per slice: the shipped RPN-FCN (ROI refinement head) vs the U-Net baseline.

    .venv/bin/python scripts/bench_vs_unet.py [--slices 64] [--repeats 5] [--model CKPT]

Both run through ``napari_roiseg.segment.segment_array`` (the path the widgets, the API and the
CLI use) on the same phantom slices (seed 7, 367x192), in one process, interleaved repeat by
repeat so a busy moment of a shared machine hits both alike; the table gives the median and the
ratio. The U-Net is the fast preset's (base 16 channels, depth 4), randomly initialised: its cost
does not depend on its weights. The RPN-FCN is the trained shipped model, whose cost does (the
RPN decides how much of the slice the ROI convolutions cover), under its own test ROI filter.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from napari_roiseg.segment import load_model, segment_array
from sample_data.phantom import make_phantom
from src_model.config import get_preset
from src_model.model import build_model, count_parameters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default=None, help="RPN-FCN checkpoint (default: the shipped one)")
    args = p.parse_args()
    volume = make_phantom(seed=7, n_slices=args.slices).volume
    torch.manual_seed(0)
    models = {"RPN-FCN (shipped, ROI refinement head)": load_model(args.model),
              "U-Net (fast preset)": build_model(get_preset("fast", arch="unet")).eval()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up: oneDNN builds its kernels on first use
        segment_array(volume[:4], model)
    for _ in range(args.repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            segment_array(volume, model)
            times[name].append(1000 * (time.perf_counter() - t0) / len(volume))
    base = statistics.median(times["U-Net (fast preset)"])
    print(f"# {args.slices} phantom slices of 367x192, {args.repeats} interleaved repeats, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| model | params | ms/slice (median) | min-max | vs U-Net |\n|---|---|---|---|---|")
    for name, model in models.items():
        med = statistics.median(times[name])
        print(f"| {name} | {count_parameters(model) / 1e6:.2f} M | {med:.1f} | "
              f"{min(times[name]):.1f}-{max(times[name]):.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
