"""Batch segmentation benchmark: one ``roiseg segment`` over a folder vs a shell loop of single
calls, measured in the same run; prints one markdown table of ratios against the loop.

    .venv/bin/python scripts/bench_batch.py [--volumes 20] [--slices 64] [--device cpu]
        [--repeats 1] [--compress] [--work DIR]

Rows:

- ``loop``: ``for f in study/*.tif; do python -m napari_roiseg.cli segment "$f" --out ...; done``
  (what users did before: a torch import and a model load per volume);
- ``batch``: ``python -m napari_roiseg.cli segment study --out ...`` (one process, one torch
  import and one model load, volumes read one after the other).

The version of this script at commit e412abd also timed reading the next volume in a background
thread (prefetch); it was slower on 2 shared cores (README, "Batch"), and was removed.

Volumes are ``sample_data.phantom`` phantoms (367x192 slices), seeds 0..N-1. The model is a copy
of the shipped default taken at start, so every row runs the same weights. Labels of the loop
and of the batch are compared byte for byte. Also printed: the mean time to read one volume
(what overlapping reads with segmentation could save at most). A benchmark, not a test; the
load average is printed because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make_study(study: Path, volumes: int, slices: int, compress: bool) -> list[Path]:
    import tifffile

    from napari_roiseg.io.volumes import write_volume_tiff
    from sample_data.phantom import make_phantom

    study.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(volumes):
        ph = make_phantom(seed=seed, n_slices=slices)
        path = study / f"hip{seed:03d}.tif"
        if compress:  # reading then costs decompression: where prefetching could pay
            tifffile.imwrite(path, ph.volume, photometric="minisblack", compression="zlib")
        else:
            write_volume_tiff(path, ph.volume, ph.spacing)
        paths.append(path)
    return paths


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _read_seconds(paths: list[Path]) -> float:
    from napari_roiseg.io.volumes import read_volume

    start = time.perf_counter()
    for p in paths:
        read_volume(p)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="batch timings: best of this many")
    ap.add_argument("--compress", action="store_true",
                    help="write zlib-compressed TIFFs (reading costs more) instead of plain ones")
    ap.add_argument("--work", default=None, help="folder for volumes and outputs (default: temp)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    from napari_roiseg.segment import default_checkpoint

    model = work / "model.pt"
    shutil.copy(default_checkpoint(), model)
    paths = _make_study(work / "study", args.volumes, args.slices, args.compress)
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    cli = [sys.executable, "-m", "napari_roiseg.cli", "segment"]
    common = ["--model", str(model), "--device", args.device, "--quiet"]
    loop = ('for f in "$0"/*.tif; do n=$(basename "$f" .tif); '
            f'{" ".join(cli)} "$f" --out "$1/$n" {" ".join(common)} || exit 1; done')
    times = {"loop": _timed(["bash", "-c", loop, str(work / "study"), str(work / "loop")], env)}
    runs = [_timed([*cli, str(work / "study"), "--out", str(work / f"batch_{r}"), *common], env)
            for r in range(args.repeats)]
    times["batch"] = min(runs)
    same = all((work / "loop" / p.stem / "labels.tif").read_bytes()
               == (work / "batch_0" / p.stem / "labels.tif").read_bytes() for p in paths)
    n = args.volumes
    kind = "zlib-compressed" if args.compress else "uncompressed ImageJ"
    print(f"\n{n} phantom volumes of {args.slices} slices (367x192, {kind} TIFF), "
          f"device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f} at the end, {os.cpu_count()} CPUs\n")
    print("| run | total s | s / volume | speed-up vs loop |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.1f} | {t / n:.2f} | {times['loop'] / t:.2f}x |")
    print(f"\nreading one volume (read_volume, warm cache): {_read_seconds(paths) * 1000:.1f} ms")
    print(f"labels of the loop and of the batch identical byte for byte: {same}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
