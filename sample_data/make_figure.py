"""Draw ``docs/images/phantom_vs_real.png``: a phantom slice beside a real infant-hip image.

Run from the repository root: ``python -m sample_data.make_figure [--out PATH] [--seed N]``.
Left: the phantom (seed 0) through the middle of its labelled run, label outline in red.
Right: a real coronal infant-hip scan from the SPJ set (NHBS-Net, Apache-2.0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .phantom import make_phantom
from .real_data import load_spj_hip

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGE = "standard_ultrasound__standard_0"


def make_figure(out: Path, seed: int = 0, real_name: str = REAL_IMAGE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph = make_phantom(seed=seed)
    start, stop = ph.params["label_slices"]
    z = (start + stop) // 2
    real = dict(load_spj_hip())[real_name]
    dz, dy, dx = ph.spacing

    fig, axes = plt.subplots(1, 2, figsize=(9, 5.2), gridspec_kw={"width_ratios": [192 / 367, 1]})
    ax = axes[0]
    ax.imshow(ph.volume[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.contour(ph.labels[z], levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(f"phantom, seed {seed}, slice {z}\n(red: acetabulum label)", fontsize=9)
    ax.set_xlabel(f"{ph.volume.shape[2]} x {ph.volume.shape[1]} px, {dx} mm/px", fontsize=8)
    ax = axes[1]
    ax.imshow(real, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title("real infant hip (SPJ / NHBS-Net, Apache-2.0)", fontsize=9)
    ax.set_xlabel(f"{real_name}.png, {real.shape[1]} x {real.shape[0]} px", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out, dpi=110)


def save_figure(fig, out: Path, dpi: int) -> Path:
    """Lay out ``fig`` (a matplotlib Figure), write it to ``out`` (folders made), close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = REPO / "docs" / "images" / "phantom_vs_real.png"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default=REAL_IMAGE,
                        help="stem of an image in shared/data/spj-hip")
    args = parser.parse_args(argv)
    print(f"wrote {make_figure(args.out, args.seed, args.real)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
