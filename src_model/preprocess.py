"""Turn slices of any numeric dtype into what the model expects: float32 in [0, 1].

Statistics are computed once over the whole array passed in (a whole volume, not a batch), so every
slice of a volume is scaled the same way. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_slices", "ROBUST_PERCENTILES"]

# Robust range for non-uint8 data: a few saturated or dead pixels (common in exported ultrasound)
# must not squash the contrast of everything else.
ROBUST_PERCENTILES = (0.5, 99.5)

# Percentiles of more values than this are estimated on a fixed-stride subsample (exact enough,
# and a 256-slice volume does not need a full sort).
_MAX_STAT_VALUES = 4_000_000


def normalize_slices(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(N, H, W)`` array -> float32 array of the same shape in [0, 1].

    * ``uint8``: divided by 255 (ultrasound exports are already display-scaled).
    * ``bool``: 0 / 1.
    * other integers and floats: the 0.5 / 99.5 percentiles of the whole array map to 0 / 1,
      values outside are clipped; a constant array gives zeros.

    Raises
    ------
    ValueError
        Wrong number of dimensions (says which shape works), a non-numeric or complex dtype, or
        NaN / infinite values (says how many and how to fix them).
    """
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected one slice (H, W) or a stack of slices (N, H, W); got an array of shape "
            f"{arr.shape}. For RGB images convert to grayscale first (e.g. arr.mean(axis=-1)); for "
            "a single slice with a channel axis use arr[..., 0]"
        )
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"slices must be a real numeric array, got dtype {arr.dtype}")
    work = arr.astype(np.float32) if arr.dtype != np.float64 else arr
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(work)
        n_bad = int(bad.sum())
        if n_bad:
            raise ValueError(
                f"{n_bad} of {arr.size} values are NaN or infinite; replace them first, e.g. "
                "np.nan_to_num(arr, nan=0.0, posinf=arr[np.isfinite(arr)].max(), neginf=0.0)"
            )
    flat = work.reshape(-1)
    if flat.size > _MAX_STAT_VALUES:
        flat = flat[:: flat.size // _MAX_STAT_VALUES + 1]
    lo, hi = np.percentile(flat, ROBUST_PERCENTILES)
    if not hi > lo:
        # Near-constant data: fall back to the full range before giving up.
        lo, hi = float(work.min()), float(work.max())
        if not hi > lo:
            return np.zeros(arr.shape, dtype=np.float32)
    out = (work - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
