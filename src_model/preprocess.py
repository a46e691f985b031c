"""Turn slices of any numeric dtype into what the model expects: float32 in [0, 1].

Statistics are computed once over the whole array passed in (a whole volume, not a batch), so every
slice of a volume is scaled the same way. numpy, and scipy.ndimage for the connected regions of
:func:`_clipped_tissue` (imported there, when a still clip needs it).
"""

from __future__ import annotations

import numpy as np

from .mmap_pages import release_slices

__all__ = ["burned_in", "imaged_area", "intensity_range", "normalize_slices", "ROBUST_PERCENTILES"]

# Robust range for non-uint8 data: a few saturated or dead pixels (common in exported ultrasound)
# must not squash the contrast of everything else.
ROBUST_PERCENTILES = (0.5, 99.5)

# Percentiles of more values than this are estimated on a fixed-stride subsample (exact enough,
# and a 256-slice volume does not need a full sort).
_MAX_STAT_VALUES = 4_000_000
# Values scanned at a time when measuring the range (a few slices; bounds memory for huge volumes).
_CHUNK_VALUES = 2_000_000


def _check_shape(arr: np.ndarray) -> None:
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected one slice (H, W) or a stack of slices (N, H, W); got an array of shape "
            f"{arr.shape}. For RGB images convert to grayscale first (e.g. arr.mean(axis=-1)); for "
            "a single slice with a channel axis use arr[..., 0]"
        )


def intensity_range(arr: np.ndarray) -> tuple[float, float] | None:
    """The ``(lo, hi)`` that :func:`normalize_slices` maps to 0 / 1 for this whole array.

    None for ``uint8`` and ``bool`` (fixed scaling, nothing to measure). Otherwise the robust
    0.5 / 99.5 percentiles over the imaged area (:func:`imaged_area`: burned-in text, rulers,
    bars and black borders do not squash the tissue's range); the full range for near-constant
    data, ``lo == hi`` when constant.
    Reads the array slice by slice, so a memory-mapped volume is never copied whole. Raises the
    same ``ValueError`` as :func:`normalize_slices` for wrong shapes, dtypes and non-finite values.
    """
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    _check_shape(arr)
    if arr.dtype in (np.bool_, np.uint8):
        return None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"slices must be a real numeric array, got dtype {arr.dtype}")
    stack = arr if arr.ndim == 3 else arr[None]
    area = imaged_area(stack)
    # One pass over chunks of slices: non-finite count, min / max, and the fixed-stride sample
    # of the imaged pixels (the same elements as ``arr[:, area].reshape(-1)[::step]``, or
    # ``arr.reshape(-1)[::step]`` when the area is everything). Each chunk's pages of a
    # memory-mapped volume are released after use, so the scan never holds the whole file.
    per_slice = int(np.prod(stack.shape[1:])) if area is None else int(area.sum())
    n_values = per_slice * stack.shape[0]
    step = n_values // _MAX_STAT_VALUES + 1 if n_values > _MAX_STAT_VALUES else 1
    chunk = max(1, _CHUNK_VALUES // max(per_slice, 1))
    is_float = np.issubdtype(arr.dtype, np.floating)
    n_bad, samples, lo_all, hi_all = 0, [], np.inf, -np.inf
    for start in range(0, stack.shape[0], chunk):
        part = np.asarray(stack[start : start + chunk])
        if is_float:
            n_bad += int((~np.isfinite(part)).sum())
        if not n_bad and part.size:
            lo_all, hi_all = min(lo_all, float(part.min())), max(hi_all, float(part.max()))
            first = (-start * per_slice) % step
            values = part.reshape(-1) if area is None else part[:, area].reshape(-1)
            samples.append(np.asarray(values[first::step], dtype=np.float64))
        release_slices(stack, start, start + chunk)
    if n_bad:
        raise ValueError(
            f"{n_bad} of {arr.size} values are NaN or infinite; replace them first, e.g. "
            "np.nan_to_num(arr, nan=0.0, posinf=arr[np.isfinite(arr)].max(), neginf=0.0)"
        )
    flat = np.concatenate(samples) if samples else np.zeros(0, np.float64)
    lo, hi = (float(v) for v in np.percentile(flat, ROBUST_PERCENTILES))
    if not hi > lo:
        # Near-constant data: fall back to the full range (constant data: lo == hi).
        lo, hi = lo_all, hi_all
    return lo, hi


def imaged_area(stack: np.ndarray, frames: int = 8) -> np.ndarray | None:
    """``bool (H, W)``: the pixels of a ``(S, H, W)`` stack that show tissue, or None for all.

    Scanner overlays (text, depth ruler, grey bar, logo) and the black margins around the scan
    region are the same in every frame, while speckle changes from frame to frame: with 3 or
    more frames the imaged area is the pixels that differ between up to ``frames`` evenly
    spaced frames. With fewer frames, or a stack that hardly changes (under 20 % of the pixels
    vary), it is the pixels above the stack's minimum (the black border and blank margins out).
    None when that would leave under 20 % of the pixels (nothing to exclude with confidence).
    """
    s, h, w = stack.shape
    if h * w == 0:
        return None
    varying = _varying(_frame_sample(stack, frames))
    if varying is not None:
        return None if varying.all() else varying
    first = np.asarray(stack[0])
    finite = np.isfinite(first)
    if not finite.all():
        return None  # the NaN check reports these
    above = first > first.min()
    return None if above.mean() < 0.2 or above.all() else above


# How much the tissue changes between the sampled frames: the median over the tissue's varying
# pixels (those above a tenth of the range, so a dark background flickering by a grey level does
# not count) of their max - min, against the range. Moving phantom sweeps: 9-25 % (3 consecutive
# slices 9 %); a probe held still, uint8: 1 grey level with noise of sigma 0.3, 3 with sigma 1,
# 8 with sigma 3, 14 with sigma 5 (0.4 / 1.2 / 3.1-3.5 / 5.5-6 % of the range).
# At most one step of an integer image (or 1/_STILL of the range): nearly still; tissue repeats
# its value over the frames by chance and a static pixel is no evidence of an overlay.
_STILL = 200
# Under _SLOW of the range: a still clip, in which a bright echo clipped at the maximum stays the
# same in every frame (:func:`_clipped_tissue`); a moving sweep's clipped tissue moves.
_SLOW = 0.075


def burned_in(stack: np.ndarray, frames: int = 8, percentile: float = 95.0,
              static_percentile: float = 50.0, dim_frames: int = 8) -> np.ndarray | None:
    """``uint8 (H, W)`` map of a ``(S, H, W)`` stack: 0 dark, 1 bright tissue, 2 burned in
    (scanner text, depth ruler, bars, logo: the same in every frame while the tissue changes).
    Or None when the stack cannot tell: under 3 frames, under 5 % of the pixels varying (a
    still or repeated stack; sectors leave wide black margins, so the bar is lower than
    :func:`imaged_area`'s), a nearly still clip (the tissue's median change between frames one
    grey level, or at most 1/200 of the range: noise alone, under which tissue repeats its value
    by chance), a boolean stack, or nothing burned in. In a still clip (median change under
    7.5 % of the range) a bright echo clipped at the maximum in every frame is tissue, not
    overlay, when its rim reaches the maximum now and then (:func:`_clipped_tissue`).

    Read from up to ``frames`` evenly spaced frames (cheap on a memory-mapped volume). Bright
    tissue: a varying pixel whose maximum over them reaches the ``percentile`` of the varying
    pixels' maxima. Burned in: a static pixel (equal in every frame) at least as bright as the
    ``static_percentile`` of those maxima and above the sample's minimum. Speckle leaves no
    tissue pixel exactly equal over frames of a sweep, so the level only keeps out the
    background: black margins, an acoustic shadow of exact zeros, a dark noise floor. A level
    of 50, not 95, also catches depth rulers and text drawn darker than the brightest tissue
    (phantom v2 draws rulers at 150-166 of 255, the tissue's 95th percentile is ~150-170:
    ``scripts/overlay_rule_sweep.py``). That needs ``dim_frames`` sampled frames: in a short,
    smooth clip a tissue pixel can repeat its value in 3-6 frames by chance (a review's test:
    up to half of 40-px tissue boxes dropped at 3 frames), so with fewer frames only static
    pixels reaching ``percentile`` count, the earlier rule. The segmentation engine drops a
    proposal whose salient (bright or burned-in) pixels are mostly burned in
    (:func:`src_model.rpn.drop_burned_in`).
    """
    if stack.ndim != 3 or stack.shape[1] * stack.shape[2] == 0 or stack.dtype == bool:
        return None
    few = _frame_sample(stack, frames)
    varying = _varying(few, min_fraction=0.05)
    if varying is None or varying.all():
        return None
    high, low = few.max(axis=0), few.min(axis=0)
    top = high.astype(np.float64)  # 2D: exact for integers up to 2**53, no overflow
    if not np.isfinite(top).all():
        return None  # the NaN check reports these
    maxima = top[varying]
    lo, hi = float(low[varying].min()), float(maxima.max())
    tissue = varying & (top > lo + 0.1 * (hi - lo))
    change = float(np.median(top[tissue] - low[tissue])) if tissue.any() else 0.0
    step = 1.0 if np.issubdtype(few.dtype, np.integer) else 0.0
    if change <= max(step, (hi - lo) / _STILL):
        return None  # a nearly still clip: a pixel that does not change is no evidence
    level = static_percentile if len(few) >= dim_frames else max(static_percentile, percentile)
    floor = float(np.percentile(maxima, level))
    burned = ~varying & (top >= floor) & (top > low.min())
    if change < _SLOW * (hi - lo):
        burned &= ~_clipped_tissue(burned, varying, high)
    if not burned.any():
        return None
    bright = (top >= np.percentile(maxima, percentile)) | burned
    return bright.astype(np.uint8) + burned.astype(np.uint8)


def _clipped_tissue(static: np.ndarray, varying: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The parts of ``static`` that are tissue clipped at the display's maximum, not overlay
    (``high``: each pixel's maximum over the frames, in the stack's own dtype).

    In a still clip a bright echo (bone) clipped at the sample's maximum value is the same in
    every frame, like an overlay; it is told apart by its rim: pixels beside it that vary and
    reach that maximum in some frames (the echo's edge, clipped now and then by the noise). An
    overlay drawn at the maximum borders tissue or margin that does not reach it. A connected
    (8-neighbour) static region at the maximum with such a rim is tissue. (Not used on moving
    sweeps, where clipped tissue moves and an overlay's neighbours can reach the maximum.)"""
    ceiling = high.max()
    at_ceiling = static & (high == ceiling)
    rim = varying & (high == ceiling)
    if not at_ceiling.any() or not rim.any():
        return np.zeros_like(static)
    from scipy import ndimage as ndi

    eight = np.ones((3, 3), bool)
    parts, _ = ndi.label(at_ceiling, structure=eight)
    touching = np.unique(parts[at_ceiling & ndi.binary_dilation(rim, structure=eight)])
    return np.isin(parts, touching[touching > 0])


def _frame_sample(stack: np.ndarray, frames: int) -> np.ndarray | None:
    """Up to ``frames`` evenly spaced frames of a stack of 3 or more, ``(k, H, W)``; None for
    fewer frames. Read once: a memory-mapped volume pages in only these."""
    s = stack.shape[0]
    if s < 3:
        return None
    picks = np.unique(np.linspace(0, s - 1, min(frames, s)).round().astype(int))
    return np.stack([np.asarray(stack[k]) for k in picks])


def _varying(few: np.ndarray | None, min_fraction: float = 0.2) -> np.ndarray | None:
    """Pixels that differ between the frames of a :func:`_frame_sample`, when at least
    ``min_fraction`` of them do; None otherwise (or without a sample)."""
    if few is None:
        return None
    with np.errstate(invalid="ignore"):
        varying = few.max(axis=0) != few.min(axis=0)
    return varying if varying.mean() >= min_fraction else None


def normalize_slices(arr: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``(H, W)`` or ``(N, H, W)`` array -> float32 array of the same shape in [0, 1].

    * ``uint8``: divided by 255 (ultrasound exports are already display-scaled).
    * ``bool``: 0 / 1.
    * other integers and floats: ``value_range`` (default: :func:`intensity_range` of this array,
      i.e. its 0.5 / 99.5 percentiles) maps to 0 / 1, values outside are clipped; a constant
      array gives zeros. Pass the range of the whole volume to normalise it batch by batch
      exactly as it would be normalised at once.

    Raises
    ------
    ValueError
        Wrong number of dimensions (says which shape works), a non-numeric or complex dtype, or
        NaN / infinite values (says how many and how to fix them).
    """
    arr = np.asarray(arr)
    _check_shape(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if value_range is None:
        value_range = intensity_range(arr)
    lo, hi = value_range
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    work = arr.astype(np.float32) if arr.dtype != np.float64 else arr
    out = (work - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
