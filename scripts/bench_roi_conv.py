"""Benchmark of the ROI convolution: dense-masked vs sparse (gathered) vs auto.

Prints one table, every number measured in this run:

* the paper's fc6 (512 -> 4096, 7x7, no padding) on the conv5_3 grid the paper preset's backbone
  gives for a 367x192 slice (computed from the backbone, not assumed), a 3x3 512 -> 512
  (padding 1) layer at the full 367x192 resolution, and the refinement head's three 3x3 decoder
  layers (strides 8, 4, 2) at their own grids;
* at 1 %, 5 %, 20 %, 50 % coverage (fraction of active output cells; random boxes placed until
  each image hits the target), batch 1 and 8;
* forward (no_grad) and forward+backward (input, weight and bias gradients), median of repeats,
  and the speed-up of sparse and auto over dense in the same row;
* one equality line per shape (max |sparse - dense| / max |dense|, outputs and gradients);
* the measured coverage of real ROIs: the shipped default model on phantom slices under its test
  ROI filter (and with all proposals), and the paper preset's untrained proposals.

The dense cost does not depend on the mask, so dense is timed once per (shape, batch) and shown
on every coverage row of it (``--dense-every-row`` times it per row).

Usage::

    python scripts/bench_roi_conv.py                 # full run (CPU: tens of minutes)
    python scripts/bench_roi_conv.py --quick         # smoke: channels / 8, one repeat
    python scripts/bench_roi_conv.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src_model.backbone import VGG16Backbone
from src_model.config import get_preset
from src_model.contract import pad_to_multiple
from src_model.roi_conv import (
    AUTO_SPARSE_BELOW,
    boxes_to_cell_mask,
    choose_impl,
    output_size,
    roi_conv2d,
)

SLICE = (367, 192)
COVERAGES = (0.01, 0.05, 0.20, 0.50)


def conv5_grid(cfg) -> tuple[int, int]:
    """Backbone output grid of a 367x192 slice under ``cfg`` (padded to the stride like the model
    does), computed by running the backbone on the meta device."""
    with torch.device("meta"):
        backbone = VGG16Backbone(cfg.width_divisor, cfg.conv1_padding, cfg.ceil_mode)
        image = pad_to_multiple(torch.empty(1, 1, *SLICE), int(backbone.geometry.stride))
        features = backbone(image)
    return int(features.shape[-2]), int(features.shape[-1])


def decoder_shapes(div: int) -> list[tuple]:
    """The refinement head's 3x3 ROI convolutions (``decoder_channels=(64, 32, 16)`` on the fast
    backbone, its default) at their grids for a 367x192 slice: (name, C_in, C_out, k, pad, grid)."""
    cfg = get_preset("fast", decoder_channels=(64, 32, 16))
    with torch.device("meta"):
        backbone = VGG16Backbone(cfg.width_divisor, cfg.conv1_padding, cfg.ceil_mode)
    skips = backbone.skip_geometry()
    padded = [-(-n // 16) * 16 for n in SLICE]
    out, previous = [], cfg.fc7_channels
    for i, channels in enumerate(cfg.decoder_channels):
        stride = 16 // 2 ** (i + 1)
        cin = (previous + skips[stride][0]) // div
        grid = (padded[0] // stride, padded[1] // stride)
        out.append((f"dec s{stride} {cin}->{channels // div} 3x3 on {grid[0]}x{grid[1]}", cin,
                    max(1, channels // div), 3, 1, grid))
        previous = channels
    return out


def head_rows(device, batches, coverages, repeats: int, warmup: int) -> None:
    """The fast preset's ROI refinement head (fc6, fc7, three decoder levels, score; random
    weights, eval mode) on a 367x192 slice: its window path (what the model runs) against
    ``refine_head_reference`` (every layer dense over the whole grid, then masked). One centred
    box per image covering the given fraction of the slice. The two paths alternate repeat by
    repeat; after each backward the parameters' gradients are set to None, as a training step's
    ``optimizer.zero_grad(set_to_none=True)`` does (before 2026-12-01 they accumulated across
    repeats, an extra read-add-write of every weight gradient that training never pays)."""
    from src_model.refine_head import RoiRefineHead, refine_head_reference

    cfg = get_preset("fast")
    backbone = VGG16Backbone(cfg.width_divisor, cfg.conv1_padding, cfg.ceil_mode).to(device)
    head = RoiRefineHead.from_config(cfg, backbone).to(device).eval()
    for prm in head.parameters():
        torch.nn.init.normal_(prm, std=0.05)
    print(f"# ROI refinement head (fast preset, decoder {cfg.decoder_channels}): window path vs "
          "full-grid dense reference")
    print(f"{'batch':>5} {'cover':>6} | {'fwd full':>9} {'window':>8} {'x':>6} | "
          f"{'f+b full':>9} {'window':>8} {'x':>6}")
    for batch in batches:
        images = pad_to_multiple(torch.rand(batch, 1, *SLICE, device=device), 16)
        with torch.no_grad():
            features, skips = backbone.forward_with_skips(images, head.skip_strides)
        for cov in coverages:
            side_h, side_w = SLICE[0] * cov ** 0.5, SLICE[1] * cov ** 0.5
            y0, x0 = (SLICE[0] - side_h) / 2, (SLICE[1] - side_w) / 2
            rois = [torch.tensor([[x0, y0, x0 + side_w, y0 + side_h]], device=device)] * batch

            def run(fn, backward: bool):
                leaves = [features.detach().requires_grad_(backward)] + [
                    skips[s].detach().requires_grad_(backward) for s in head.skip_strides]
                skip_map = dict(zip(head.skip_strides, leaves[1:]))
                with torch.set_grad_enabled(backward):
                    out = fn(leaves[0], skip_map)
                    if backward:
                        out.sum().backward()
                        # as a training step does (optimizer.zero_grad(set_to_none=True)): the
                        # next backward writes fresh gradients instead of adding into old ones
                        head.zero_grad(set_to_none=True)

            window = lambda f, sk: head(f, SLICE, rois, sk)  # noqa: E731
            full = lambda f, sk: refine_head_reference(head, f, SLICE, rois, sk)  # noqa: E731
            # the two paths alternate repeat by repeat, so a slow phase of the host hits both
            t = {}
            for bwd in (False, True):
                t.update(zip([("full", bwd), ("window", bwd)], timed(
                    functools.partial(run, full, bwd), functools.partial(run, window, bwd),
                    device=device, repeats=repeats, warmup=warmup)))
            print(f"{batch:>5} {cov:>6.1%} | {t['full', False]:>7.1f}ms {t['window', False]:>6.1f}ms "
                  f"{t['full', False] / t['window', False]:>6.2f} | {t['full', True]:>7.1f}ms "
                  f"{t['window', True]:>6.1f}ms {t['full', True] / t['window', True]:>6.2f}",
                  flush=True)


def coverage_mask(n: int, size: tuple[int, int], target: float, gen: torch.Generator) -> Tensor:
    """Union of random boxes per image covering ``round(target * cells)`` cells (at least one):
    boxes are placed at random with an area at most the number of cells still missing, so the
    union reaches the target exactly."""
    ho, wo = size
    want = max(1, round(target * ho * wo))
    mask = torch.zeros(n, 1, ho, wo, dtype=torch.bool)
    for i in range(n):
        m = mask[i, 0]
        for _ in range(100000):
            missing = want - int(m.sum())
            if missing <= 0:
                break
            bh = int(torch.randint(1, min(ho, missing) + 1, (1,), generator=gen))
            bw = int(torch.randint(1, min(wo, max(1, missing // bh)) + 1, (1,), generator=gen))
            r = int(torch.randint(0, ho - bh + 1, (1,), generator=gen))
            c = int(torch.randint(0, wo - bw + 1, (1,), generator=gen))
            m[r : r + bh, c : c + bw] = True
    return mask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(*fns, device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Median wall time in ms of each of ``fns``, called in turn each repeat (with several, a
    slow phase of the host hits them all alike)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


class Layer:
    def __init__(self, name, cin, cout, k, pad, in_size, batch, device, gen):
        self.name, self.k, self.pad = name, k, pad
        self.x = torch.randn(batch, cin, *in_size, generator=gen).to(device)
        self.w = (torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5).to(device)
        self.b = torch.randn(cout, generator=gen).to(device)
        self.out_size = (in_size[0] + 2 * pad - k + 1, in_size[1] + 2 * pad - k + 1)

    def forward(self, mask, impl):
        with torch.no_grad():
            return roi_conv2d(self.x, self.w, self.b, mask, padding=self.pad, impl=impl)

    def forward_backward(self, mask, impl, dtype=None):
        leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True)
                  for t in (self.x, self.w, self.b)]
        out = roi_conv2d(*leaves, mask, padding=self.pad, impl=impl)
        out.sum().backward()
        return out.detach(), [t.grad for t in leaves]


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.abs().max().clamp_min(1e-30))


def equality_line(layer: Layer, mask: Tensor) -> str:
    """Sparse vs dense in float32, and each of them vs the dense-masked layer in float64 (the
    reference: two float32 sums of thousands of terms in different orders differ by more than
    either differs from the exact value)."""
    runs = {impl: layer.forward_backward(mask, impl) for impl in ("sparse", "dense")}
    exact = layer.forward_backward(mask, "dense", torch.float64)

    def diffs(a, b) -> str:
        d = [rel_diff(a[0], b[0])] + [rel_diff(x, y) for x, y in zip(a[1], b[1])]
        return "/".join(f"{v:.1e}" for v in d)

    out_s = runs["sparse"][0]
    zeros = int(torch.count_nonzero(out_s[~mask.expand_as(out_s)]))
    return (f"  equality {layer.name} (batch {mask.shape[0]}, {mask.float().mean():.0%} cover), "
            f"max rel diff out/grad input/weight/bias: sparse vs dense "
            f"{diffs(runs['sparse'], runs['dense'])}; vs float64: sparse "
            f"{diffs(runs['sparse'], exact)}, dense {diffs(runs['dense'], exact)}; "
            f"nonzeros outside mask: {zeros}")


def real_roi_coverage(device: torch.device, n_slices: int, paper: bool) -> list[str]:
    """Fraction of fc6 cells inside the ROI union per phantom slice, for real proposals."""
    from napari_roiseg.segment import load_model
    from sample_data.phantom import make_phantom
    from src_model.model import build_model
    from src_model.preprocess import normalize_slices

    volume = make_phantom(seed=0, n_slices=n_slices).volume
    images = torch.from_numpy(normalize_slices(volume))[:, None].to(device)
    lines = []
    runs = [("default model, its test ROI filter", load_model(), {}),
            ("default model, all post-NMS proposals", load_model(),
             {"score_threshold": 0.0, "top_k": 10**9})]
    if paper:
        torch.manual_seed(0)
        runs.append(("paper preset, untrained, all proposals", build_model(get_preset("paper")),
                     {"score_threshold": 0.0, "top_k": 10**9}))
    for label, model, kw in runs:
        model = model.to(device).eval()
        grid = model.head.geometry
        size = output_size(conv5_grid(model.config), model.head.fc6)
        fractions = []
        with torch.no_grad():
            for i in range(0, len(images), 8):
                batch = images[i : i + 8]
                outputs = model(batch, **kw)
                rois = [o["boxes"] for o in outputs]
                mask = boxes_to_cell_mask(rois, size, grid.stride, grid.offset)
                fractions += mask.flatten(1).float().mean(1).tolist()
        f = np.array(fractions)
        lines.append(f"  {label}: fc6 grid {tuple(size)}, {len(f)} slices: mean {f.mean():.1%}, "
                     f"median {np.median(f):.1%}, max {f.max():.1%}, slices with no ROI "
                     f"{(f == 0).mean():.0%}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: channels / 8, 1 repeat, no warm-up, 8 phantom slices")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, CUDA 10)")
    ap.add_argument("--channel-divisor", type=int, default=None,
                    help="divide all channel counts (default 1; --quick: 8)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls (default 1)")
    ap.add_argument("--layers", nargs="+", default=["fc6", "3x3", "dec8", "dec4", "dec2"],
                    choices=("fc6", "3x3", "dec8", "dec4", "dec2"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--coverages", type=float, nargs="+", default=list(COVERAGES))
    ap.add_argument("--dense-every-row", action="store_true")
    ap.add_argument("--phantom-slices", type=int, default=None)
    ap.add_argument("--no-real-rois", action="store_true")
    ap.add_argument("--head", action="store_true",
                    help="also time the whole ROI refinement head: window path vs full grid")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    div = args.channel_divisor or (8 if args.quick else 1)
    repeats = args.repeats or (1 if args.quick else (10 if device.type == "cuda" else 3))
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    slices = args.phantom_slices or (8 if args.quick else 48)

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(f"# ROI conv benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# torch {torch.__version__}, device {device}, CPU {cpu}, GPU {gpu}, "
          f"threads {torch.get_num_threads()}")
    print(f"# repeats {repeats} (median), warm-up {warmup}, channels / {div}, auto = sparse below "
          f"{AUTO_SPARSE_BELOW:.0%} coverage" + ("  [QUICK SMOKE RUN: not a timing]" if args.quick
                                                 else ""))
    grid = conv5_grid(get_preset("paper"))
    shapes = [
        (f"fc6 {512 // div}->{4096 // div} 7x7 p0 on {grid[0]}x{grid[1]}", 512 // div,
         4096 // div, 7, 0, grid),
        (f"3x3 {512 // div}->{512 // div} p1 on {SLICE[0]}x{SLICE[1]}", 512 // div, 512 // div,
         3, 1, SLICE),
    ]
    shapes += decoder_shapes(div)
    keys = ("fc6", "3x3", "dec8", "dec4", "dec2")
    shapes = [sh for sh, key in zip(shapes, keys) if key in args.layers]
    gen = torch.Generator().manual_seed(0)
    header = (f"{'layer':<34} {'batch':>5} {'cover':>6} {'auto->':>7} | {'fwd dense':>10} "
              f"{'sparse':>9} {'auto':>9} {'sp x':>6} {'auto x':>6} | {'f+b dense':>10} "
              f"{'sparse':>9} {'auto':>9} {'sp x':>6} {'auto x':>6}")
    print(header)
    print("-" * len(header))
    equality = []
    for name, cin, cout, k, pad, size in shapes:
        for batch in args.batches:
            layer = Layer(name, cin, cout, k, pad, size, batch, device, gen)
            dense_f = dense_fb = None
            for cov in args.coverages:
                mask = coverage_mask(batch, layer.out_size, cov, gen).to(device)
                def time_impl(impl: str, layer=layer, mask=mask) -> tuple[float, float]:
                    fwd = functools.partial(layer.forward, mask, impl)
                    fwd_bwd = functools.partial(layer.forward_backward, mask, impl)
                    return (timed(fwd, device=device, repeats=repeats, warmup=warmup)[0],
                            timed(fwd_bwd, device=device, repeats=repeats, warmup=warmup)[0])

                if dense_f is None or args.dense_every_row:
                    dense_f, dense_fb = time_impl("dense")
                sp_f, sp_fb = time_impl("sparse")
                au_f, au_fb = time_impl("auto")
                actual = float(mask.float().mean())
                print(f"{name:<34} {batch:>5} {actual:>6.1%} {choose_impl('auto', mask):>7} | "
                      f"{dense_f:>8.1f}ms {sp_f:>7.1f}ms {au_f:>7.1f}ms {dense_f / sp_f:>6.2f} "
                      f"{dense_f / au_f:>6.2f} | {dense_fb:>8.1f}ms {sp_fb:>7.1f}ms "
                      f"{au_fb:>7.1f}ms {dense_fb / sp_fb:>6.2f} {dense_fb / au_fb:>6.2f}",
                      flush=True)
            if batch == args.batches[0]:
                mask = coverage_mask(batch, layer.out_size, 0.2, gen).to(device)
                equality.append(equality_line(layer, mask))
    print("# equality (sparse vs dense, float32"
          + (", TF32 off" if device.type == "cuda" else "") + ")")
    print("\n".join(equality))
    if args.head:
        head_rows(device, args.batches, args.coverages, repeats, warmup)
    if not args.no_real_rois:
        print(f"# ROI-union coverage of real proposals on fc6 ({slices} phantom slices, seed 0)")
        for line in real_roi_coverage(device, slices, paper=True):
            print(line, flush=True)


if __name__ == "__main__":
    main()
