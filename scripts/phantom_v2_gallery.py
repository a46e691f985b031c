"""Draw ``docs/images/phantom_v2_gallery.png``: one frame of phantom v2 for each of 8 seeds.

Run from the repository root: ``python scripts/phantom_v2_gallery.py [--out PATH] [--seeds N]``.
Each panel is the middle frame of the labelled run of an 8-frame sweep, at the seed's own frame
size, with the ``ilium_roof`` label outlined in red and the overlay mask in cyan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sample_data.make_figure import save_figure  # noqa: E402
from sample_data.phantom_v2 import make_phantom_v2  # noqa: E402


def make_gallery(out: Path, seeds: range) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(seeds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, seed in zip(axes.flat, seeds):
        ph = make_phantom_v2(seed, n_slices=8, label="ilium_roof")
        present = ph.labels.any(axis=(1, 2)).nonzero()[0]
        z = int(present[len(present) // 2])
        ax.imshow(ph.volume[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.contour(ph.labels[z], levels=[0.5], colors="red", linewidths=0.7)
        ax.contour(ph.overlay_mask, levels=[0.5], colors="cyan", linewidths=0.4)
        h, w = ph.volume.shape[1:]
        st = ph.style
        ax.set_title(f"seed {seed}: {w}x{h} px, {st['spacing_mm']:.3f} mm/px\n"
                     f"gain {st['gain_db']:+.0f} dB, DR {st['dynamic_range_db']:.0f} dB, "
                     f"label {100 * ph.labels[z].mean():.2f} %", fontsize=7)
    fig.suptitle("phantom v2 (red: ilium + roof label, cyan: burned-in overlays)", fontsize=9)
    return save_figure(fig, out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = REPO / "docs" / "images" / "phantom_v2_gallery.png"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1")
    args = parser.parse_args(argv)
    print(f"wrote {make_gallery(args.out, range(args.seeds))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
