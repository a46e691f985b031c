"""Whole-volume inference benchmark: prints one markdown table, every number from this run.

    .venv/bin/python scripts/bench_volume.py [--device auto|cpu|cuda] [--quick]
        [--slices 256] [--paper-slices 16] [--tv-slices 4] [--stream-slices 1024]
        [--repeats 2] [--slow-repeats 1]

Rows (each model runs in a fresh subprocess, so its peak memory is its own):

(a) whole-volume inference on phantom slices (``sample_data.phantom.make_phantom``, 367x192):
    the shipped fast default through ``napari_roiseg.segment.segment_array`` (ROI-conv
    ``head.roi_impl`` "dense" and "auto" when the model has that switch; the ROI refinement
    head computes its windows whatever the setting, so for it the two rows time the same code
    and their difference is the host's noise), the same model through
    a plain batched forward without the NMS pre-filter (the baseline of the ratios), the paper
    preset (random init) with its own proposals and with the default model's test ROIs (the
    ROI coverage a real run has; its untrained RPN proposes boxes everywhere), and torchvision's ``maskrcnn_resnet50_fpn`` /
    ``fasterrcnn_mobilenet_v3_large_fpn`` (``weights=None, weights_backbone=None, num_classes=2``;
    the gray slice repeated to 3 channels; their own default resize to min side 800, batch 1).
    Subsets (slices spread evenly over the volume) are timed where asked, stated in the row, and
    s/volume is extrapolated to the full volume.
    Fast-preset rows are the best of ``--repeats`` timings (the machine may be shared).
(b) ``roiseg segment`` end to end (TIFF read, model load, inference, labels TIFF + boxes CSV).
(c) streaming: a large uint8 volume in an uncompressed TIFF on disk, segmented through the same
    CLI path (memory-mapped input, labels written into a memory-mapped TIFF), at two lengths 4x
    apart; peak RSS vs the sizes of the volume and of its labels.

A benchmark, not a test: it asserts nothing. Timings on a shared machine are noisy; the load
average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPE = (367, 192)


# ---------------------------------------------------------------------- worker (one subprocess)


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``getrusage().ru_maxrss``: Linux carries
    the parent's RSS at fork over into a spawned child's ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(kind: str, device):
    import torch

    torch.manual_seed(0)
    if kind in ("fast", "fast_plain"):
        from napari_roiseg.segment import load_model

        return load_model()
    if kind in ("paper", "paper_rois"):
        from src_model.config import get_preset
        from src_model.model import build_model

        return build_model(get_preset("paper")).eval()
    from torchvision.models import detection

    builder = {"maskrcnn": detection.maskrcnn_resnet50_fpn,
               "fasterrcnn_mobilenet": detection.fasterrcnn_mobilenet_v3_large_fpn}[kind]
    return builder(weights=None, weights_backbone=None, num_classes=2).eval().to(device)


def _autocast(device):
    """float16 autocast on CUDA, as ``iter_predict`` runs the product's forward (nothing on the
    CPU), so every RPN-FCN row of a CUDA table runs at the same precision."""
    import torch

    return torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")


def _plain_forward(model, vol: np.ndarray, device, batch_size: int) -> None:
    """The baseline: batched forward with no NMS pre-filter, every output field to numpy."""
    import torch

    for start in range(0, len(vol), batch_size):
        x = torch.from_numpy(vol[start:start + batch_size].astype(np.float32) / 255.0)
        with torch.inference_mode(), _autocast(device):
            outputs = model(x[:, None].to(device))
        for out in outputs:
            {k: v.float().cpu().numpy() for k, v in out.items()}


def _torchvision_forward(model, vol: np.ndarray, device) -> None:
    import torch

    for k in range(len(vol)):
        x = torch.from_numpy(vol[k].astype(np.float32) / 255.0).to(device)
        with torch.inference_mode():
            out = model([x.expand(3, -1, -1)])
        {key: v.cpu() for key, v in out[0].items()}


def _default_model_rois(vol: np.ndarray) -> list[np.ndarray]:
    """The shipped default model's test ROIs per slice (its own score filter): the ROIs a real
    run feeds the ROI convolution, used to time the paper preset at a measured coverage."""
    from napari_roiseg.segment import load_model
    from src_model.predict import predict

    return [r["boxes"] for r in predict(load_model(), vol, batch_size=8, device="cpu")]


def _paper_forward_with_rois(model, vol: np.ndarray, rois: list[np.ndarray], device,
                             batch_size: int) -> list[float]:
    """RPN-FCN eval forward (backbone, RPN, ROI-conv head, outputs) with the ROIs given, not the
    RPN's own: an untrained paper preset proposes boxes all over the slice. Returns the fraction
    of fc6 cells inside the ROI union, per slice."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    from src_model.contract import eval_outputs, pad_to_multiple
    from src_model.roi_conv import boxes_to_pixel_mask

    coverage = []
    for start in range(0, len(vol), batch_size):
        x = torch.from_numpy(vol[start:start + batch_size].astype(np.float32) / 255.0)
        x = x[:, None].to(device)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        boxes = [torch.as_tensor(b, device=device).reshape(-1, 4)
                 for b in rois[start:start + batch_size]]
        with torch.inference_mode(), _autocast(device):
            padded = pad_to_multiple(x, model.size_divisible)
            features = model.backbone(padded)
            model.rpn(ImageList(padded, [size] * len(x)), {"0": features})  # timed, not used
            logits = model.head(features, size, boxes)
            region = boxes_to_pixel_mask(boxes, size).to(device)
            outputs = eval_outputs(logits, boxes, [torch.ones(len(b)) for b in boxes], region)
            for out in outputs:
                {k: v.float().cpu().numpy() for k, v in out.items()}
            mask = model.head.cell_mask(features, boxes)
        coverage += mask.flatten(1).float().mean(1).tolist()
    return coverage


def _worker_infer(job: dict) -> dict:
    import torch

    from src_model.device import resolve_device

    device = resolve_device(job["device"])
    full = np.load(job["volume"])
    # A subset is spread evenly over the volume (its first slices are empty: no ROIs there).
    vol = full[np.linspace(0, len(full) - 1, job["slices"]).round().astype(int)]
    model = _build(job["kind"], device)
    impl_set = None
    if job.get("impl") and hasattr(getattr(model, "head", None), "roi_impl"):
        model.head.roi_impl = job["impl"]
        impl_set = job["impl"]
    from napari_roiseg.segment import default_batch_size

    bs = job.get("batch_size") or default_batch_size(device)
    coverage: list[float] = []
    if job["kind"] in ("maskrcnn", "fasterrcnn_mobilenet"):
        def run(v):
            _torchvision_forward(model, v, device)
    elif job["kind"] == "paper_rois":
        model.to(device).eval()
        rois = _default_model_rois(vol)

        def run(v):
            coverage[:] = _paper_forward_with_rois(model, v, rois, device, bs)
    elif job["kind"] == "fast_plain":
        model.to(device).eval()

        def run(v):
            _plain_forward(model, v, device, bs)
    else:
        from napari_roiseg.segment import segment_array

        def run(v):
            segment_array(v, model, device=str(device), batch_size=bs)
    run(vol[: min(len(vol), bs if job["kind"] not in ("maskrcnn", "fasterrcnn_mobilenet") else 1)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dt = float("inf")
    for _ in range(job.get("repeats", 1)):  # the best of a few: the machine may be shared
        t0 = time.perf_counter()
        run(vol)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = min(dt, time.perf_counter() - t0)
    return {"ms_per_slice": 1000 * dt / len(vol), "seconds": dt, "slices": len(vol),
            "impl": impl_set, "batch_size": bs, "peak_rss_mib": _peak_rss_mib(),
            "cuda_peak_mib": (torch.cuda.max_memory_allocated() / 2**20
                              if device.type == "cuda" else None),
            "threads": torch.get_num_threads(),
            "roi_coverage": float(np.mean(coverage)) if coverage else None}


def _worker_cli(job: dict) -> dict:
    # torch and torchvision (whose ops import torch._dynamo: ~4 s together on 2 cores) are
    # imported before the clock starts: this row times the command's own work. The whole command
    # as a new process is timed separately.
    import torch
    import torchvision  # noqa: F401

    from napari_roiseg.cli import main

    rss_before = _rss_now_mib()
    t0 = time.perf_counter()
    code = main(["segment", job["tiff"], "--out", job["out"], "--device", job["device"],
                 "--quiet"])
    dt = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"roiseg segment exited with {code}")
    return {"code": code, "seconds": dt, "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": rss_before, "threads": torch.get_num_threads(),
            "labels_bytes": Path(job["out"], "labels.tif").stat().st_size}


def _run_worker(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- parent


def _machine(device: str) -> list[str]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"- date: {datetime.now().isoformat(timespec='seconds')}",
            (f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: "
             f"{torch.get_num_threads()}"),
            (f"- torch {torch.__version__}, torchvision "
             f"{__import__('torchvision').__version__}, Python {platform.python_version()}"),
            f"- GPU: {gpu}; device requested: {device}",
            f"- load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}"]


def _write_stream_volume(path: Path, n: int) -> None:
    """n slices of 512x512 uint8 (a 64-slice phantom tiled), written without holding them all."""
    import tifffile

    from sample_data.phantom import make_phantom

    tile = make_phantom(seed=7, n_slices=min(n, 64), shape=(512, 512)).volume
    out = tifffile.memmap(path, shape=(n, 512, 512), dtype=np.uint8, imagej=True,
                          metadata={"axes": "ZYX"})
    for start in range(0, n, len(tile)):
        stop = min(n, start + len(tile))
        out[start:stop] = tile[: stop - start]
    out.flush()
    del out


def _print_rows(rows: list, n: int, baseline: float | None) -> None:
    """Table (a): one row per timed model."""
    print(f"\n### (a) whole-volume inference, {n} phantom slices of {SHAPE[0]}x{SHAPE[1]}\n")
    print("| model | slices timed | ms/slice | s/volume ({n} slices) | time vs baseline | "
          "peak RSS MiB | peak CUDA MiB |".replace("{n}", str(n)))
    print("|---|---|---|---|---|---|---|")
    for label, timed, r in rows:
        if "error" in r:
            print(f"| {label} | {timed} | error: {r['error']} | | | | |")
            continue
        ms = r["ms_per_slice"]
        ratio = f"{ms / baseline:.2f}x" if baseline else "n/a"
        subset = "" if timed == n else " (subset; s/volume extrapolated)"
        cuda = f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] is not None else "-"
        print(f"| {label} | {timed}{subset} | {ms:.1f} | {ms * n / 1000:.2f} | {ratio} | "
              f"{r['peak_rss_mib']:.0f} | {cuda} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true",
                   help="defaults of 64 slices, paper 4, torchvision 2, stream 128")
    p.add_argument("--slices", type=int, default=None, help="phantom volume length (256)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: segment's own (2 on the CPU, 16 on a GPU)")
    p.add_argument("--paper-slices", type=int, default=None,
                   help="paper-preset subset timed (16)")
    p.add_argument("--tv-slices", type=int, default=None, help="torchvision subset timed (4)")
    p.add_argument("--stream-slices", type=int, default=None,
                   help="512x512 slices streamed (1024)")
    p.add_argument("--repeats", type=int, default=2,
                   help="time each fast-preset row this many times, report the best")
    p.add_argument("--slow-repeats", type=int, default=1,
                   help="the same for the paper-preset and torchvision rows (1; more on a GPU)")
    p.add_argument("--fast-only", action="store_true",
                   help="only the baseline and the fast-default rows of (a)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(_worker_cli(job) if job["kind"] == "cli" else _worker_infer(job)))
        return 0
    defaults = (64, 4, 2, 128) if args.quick else (256, 16, 4, 1024)
    for name, value in zip(("slices", "paper_slices", "tv_slices", "stream_slices"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    from napari_roiseg.io.volumes import write_volume_tiff
    from sample_data.phantom import make_phantom

    print("\n".join(_machine(args.device)), flush=True)
    with tempfile.TemporaryDirectory(prefix="roiseg-bench-") as tmp:
        tmp = Path(tmp)
        ph = make_phantom(seed=0, n_slices=args.slices)
        np.save(tmp / "vol.npy", ph.volume)
        write_volume_tiff(tmp / "vol.tif", ph.volume, spacing=ph.spacing)
        n = args.slices
        base = {"volume": str(tmp / "vol.npy"), "device": args.device,
                "batch_size": args.batch_size, "repeats": args.repeats}
        jobs = [(("baseline: fast default as before (plain forward, batch 8, NMS on all "
                  "proposals, dense ROI conv)"),
                 {"kind": "fast_plain", "slices": n, "impl": "dense", "batch_size": 8}),
                ("fast default, segment_array", {"kind": "fast", "slices": n, "impl": "dense"}),
                ("fast default, segment_array",
                 {"kind": "fast", "slices": n, "impl": "auto", "batch_size": 8}),
                ("fast default, segment_array", {"kind": "fast", "slices": n, "impl": "auto"}),
                ("paper preset (random init), segment_array",
                 {"kind": "paper", "slices": min(n, args.paper_slices), "impl": "dense",
                  "repeats": args.slow_repeats}),
                ("paper preset (random init), segment_array",
                 {"kind": "paper", "slices": min(n, args.paper_slices), "impl": "auto",
                  "repeats": args.slow_repeats}),
                ("paper preset (random init), the default model's ROIs",
                 {"kind": "paper_rois", "slices": min(n, args.paper_slices), "impl": "dense",
                  "repeats": args.slow_repeats}),
                ("paper preset (random init), the default model's ROIs",
                 {"kind": "paper_rois", "slices": min(n, args.paper_slices), "impl": "auto",
                  "repeats": args.slow_repeats}),
                ("torchvision maskrcnn_resnet50_fpn (random init, batch 1)",
                 {"kind": "maskrcnn", "slices": min(n, args.tv_slices), "repeats": args.slow_repeats}),
                ("torchvision fasterrcnn_mobilenet_v3_large_fpn (random init, batch 1)",
                 {"kind": "fasterrcnn_mobilenet", "slices": min(n, args.tv_slices),
                  "repeats": args.slow_repeats})]
        if args.fast_only:
            jobs = [(name, job) for name, job in jobs if job["kind"] in ("fast", "fast_plain")]
        rows, baseline, seen = [], None, set()
        for name, job in jobs:
            r = _run_worker({**base, **job})
            tv = job["kind"] in ("maskrcnn", "fasterrcnn_mobilenet")
            key = (name, r.get("impl"), r.get("batch_size"))
            if "impl" in job and r.get("impl") is None:
                if key in seen:
                    continue  # no roi_impl switch: "dense" and "auto" are the same run
                label = name + " (no roi_impl switch)"
            else:
                label = name + (f", roi_impl={r['impl']}" if r.get("impl") else "")
            seen.add(key)
            if job["kind"] == "fast_plain" and "error" not in r:
                baseline = r["ms_per_slice"]
            if r.get("batch_size") and not tv and job["kind"] != "fast_plain":
                label += f", batch {r['batch_size']}"
            if r.get("roi_coverage") is not None:
                label += f", ROI union {100 * r['roi_coverage']:.1f}% of fc6 cells"
            rows.append((label, job["slices"], r))
            print(f"  done: {label}: {r.get('ms_per_slice', r.get('error'))}", file=sys.stderr,
                  flush=True)
        if args.fast_only:
            _print_rows(rows, n, baseline)
            return 0
        cli = _run_worker({"kind": "cli", "tiff": str(tmp / "vol.tif"), "out": str(tmp / "seg"),
                           "device": args.device})
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "napari_roiseg.cli", "segment",
                               str(tmp / "vol.tif"), "--out", str(tmp / "seg2"), "--device",
                               args.device, "--quiet"], capture_output=True, cwd=REPO,
                              check=False)
        command_s = time.perf_counter() - t0 if proc.returncode == 0 else None
        # Two lengths, 4x apart: a bounded run's peak RSS does not grow with the length.
        streams = {}
        for length in (max(1, args.stream_slices // 4), args.stream_slices):
            _write_stream_volume(tmp / f"big{length}.tif", length)
            streams[length] = _run_worker({"kind": "cli", "tiff": str(tmp / f"big{length}.tif"),
                                           "out": str(tmp / f"bigseg{length}"),
                                           "device": args.device})
            (tmp / f"big{length}.tif").unlink()

    _print_rows(rows, n, baseline)
    paired = {r.get("impl"): r for label, _, r in rows
              if "error" not in r and r.get("roi_coverage") is not None}
    if "dense" in paired and "auto" in paired:
        d, a = paired["dense"]["ms_per_slice"], paired["auto"]["ms_per_slice"]
        print(f"\npaper preset end to end at the default model's ROI coverage "
              f"({100 * paired['auto']['roi_coverage']:.1f}% of fc6 cells): dense ROI conv "
              f"{d:.0f} ms/slice, roi_impl=auto {a:.0f} ms/slice: {d / a:.2f}x faster")
    print("\n### (b) `roiseg segment` end to end (TIFF read, model load, inference, labels TIFF + "
          "boxes CSV; in-process, torch and torchvision already imported)\n")
    if "error" in cli:
        print(f"error: {cli['error']}")
    else:
        print(f"{n} slices: {cli['seconds']:.2f} s ({1000 * cli['seconds'] / n:.1f} ms/slice, "
              f"first run in a fresh process), peak RSS {cli['peak_rss_mib']:.0f} MiB")
    if command_s is not None:
        print(f"the whole command as a new process (`python -m napari_roiseg.cli segment`, "
              f"Python start and imports included): {command_s:.2f} s")
    print("\n### (c) streaming 512x512 uint8 volumes (uncompressed TIFF on disk) through "
          "`roiseg segment`, at two lengths\n")
    print("| slices | input + labels MiB | s | ms/slice | RSS before MiB | peak RSS MiB | "
          "peak - before MiB |")
    print("|---|---|---|---|---|---|---|")
    for length, stream in streams.items():
        size = 2 * length * 512 * 512 / 2**20
        if "error" in stream:
            print(f"| {length} | {size:.0f} | error: {stream['error']} | | | | |")
            continue
        print(f"| {length} | {size:.0f} | {stream['seconds']:.1f} | "
              f"{1000 * stream['seconds'] / length:.1f} | {stream['rss_before_mib']:.0f} | "
              f"{stream['peak_rss_mib']:.0f} | "
              f"{stream['peak_rss_mib'] - stream['rss_before_mib']:.0f} |")
    print(f"\nload average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
