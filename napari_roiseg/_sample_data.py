"""npe2 sample-data contribution: the infant-hip ultrasound phantom with its ground truth.

napari may import this at start-up, so it imports neither torch nor ``src_model.model``; the
phantom generator is numpy + scipy only and runs in a few seconds.
"""

from __future__ import annotations

from typing import Any

SAMPLE_SEED = 0
SAMPLE_SLICES = 256


def make_sample_hip() -> list[tuple[Any, dict[str, Any], str]]:
    """The phantom volume (seed 0, 256 slices) as an image layer and its acetabulum labels.

    Both layers carry the voxel spacing as ``scale`` (z, y, x) with ``units`` mm.
    """
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=SAMPLE_SEED, n_slices=SAMPLE_SLICES)
    common = {"scale": tuple(float(v) for v in ph.spacing), "units": ("mm", "mm", "mm")}
    image = {"name": f"hip phantom (seed {SAMPLE_SEED})", "contrast_limits": (0, 255), **common}
    return [
        (ph.volume, image, "image"),
        (ph.labels, {"name": "acetabulum ground truth", **common}, "labels"),
    ]
