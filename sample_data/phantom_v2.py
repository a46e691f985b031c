"""Phantom v2: the infant-hip phantom, domain-randomised towards what real hip sweeps show.

Same anatomy and image formation as :mod:`sample_data.phantom` (its renderer is reused, not
copied), with the acquisition drawn per seed as a :class:`PhantomStyle`:

* frame ``H x W`` of 256-800 px (``W >= 0.75 H``), the scan region (field of view) inside it with
  black margins (top 0-12 %, bottom 0-5 %, sides up to 25 % together), imaging 40-70 mm deep and
  at least 36 mm wide; the square pixel size follows (about 0.05-0.3 mm) and the anatomy keeps its
  size in mm, so it spans more or fewer pixels;
* femoral head centre 18-26 mm deep, at 55-68 % of the scan width; ilium echo 0.7-1.8 mm thick
  (v1: 0.7-0.9 mm);
* gain -10..+6 dB, dynamic range 45-80 dB, net attenuation 0-2.5 dB/cm, a TGC curve of five
  knots of +-4 dB, speckle grains of 0.2-0.5 x 0.4-1.0 mm (axial x lateral; the transmit
  frequency), display blur sigma 0-1.5 px, display noise 0.5-4 gray levels;
* 0.1-0.5 mm between frames: ``n_slices`` of 2-40 is a sweep, more a volume;
* burned-in overlays (:mod:`sample_data.overlays`): text, a depth ruler, a grey or colour bar, a
  logo, at random edges, identical in every frame and never on the label.

Labels: ``"roof"`` is v1's bony acetabular roof; ``"ilium_roof"`` adds the ilium line over
9-16 mm left of the bony rim, so ilium + roof form the one band labelled in the Graf standard
plane. Both come from the same render: for one seed the images and overlays are identical and
only the label differs. Everything is drawn from ``numpy.random.SeedSequence(seed)``: one stream
for the style, one for the anatomy and speckle, one for the overlays.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .overlays import draw_overlays
from .phantom import DEFAULT_SHAPE, SPACING, Phantom, _draw_params, _render_volume

__all__ = ["LABELS", "PhantomStyle", "PhantomV2", "draw_style", "make_phantom_v2"]

LABELS = ("roof", "ilium_roof")
SIZE_RANGE = (256, 800)  # frame height and width, px
_DESIGN_MM = SPACING[1]  # the v1 design's pixel size: its anatomy is in pixels of this size
_MIN_FOV_WIDTH_MM = 36.0  # room for the ilium left of the head and the head itself


@dataclass(frozen=True)
class PhantomStyle:
    """The acquisition of one phantom v2 (lengths in mm unless the name says px).

    ``fov`` is the scan region ``(top, left, height, width)`` in frame pixels; ``tgc_db`` the TGC
    curve's gains at five equally spaced depths (linear between them); ``speckle_mm`` the speckle
    grain (axial, lateral).
    """

    shape: tuple[int, int]
    fov: tuple[int, int, int, int]
    spacing_mm: float
    slice_mm: float
    head_depth_mm: float
    head_x_frac: float
    ilium_label_mm: float
    ilium_thickness_mm: float
    gain_db: float
    dynamic_range_db: float
    attenuation_db_per_cm: float
    tgc_db: tuple[float, ...]
    speckle_mm: tuple[float, float]
    blur_px: float
    noise_sigma: float

    def __post_init__(self) -> None:
        height, width = self.shape
        top, left, fov_h, fov_w = self.fov
        if min(top, left) < 0 or fov_h < 32 or fov_w < 32 or top + fov_h > height \
                or left + fov_w > width:
            raise ValueError(f"fov {self.fov} (top, left, height, width) must be at least 32 x 32 "
                             f"px and lie inside the frame {self.shape}")
        if self.spacing_mm <= 0 or self.slice_mm <= 0 or self.dynamic_range_db <= 0:
            raise ValueError("spacing_mm, slice_mm and dynamic_range_db must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (tuples become lists)."""
        return _json_ready(dataclasses.asdict(self))


@dataclass(frozen=True, eq=False)
class PhantomV2(Phantom):
    """A :class:`~sample_data.phantom.Phantom` (``volume``, ``labels`` ``(S, H, W)``, ``params``,
    ``spacing`` ``(z, y, x)`` mm; unpacks as ``volume, labels``) plus

    overlay_mask : numpy.ndarray
        ``bool (H, W)``: the burned-in overlay pixels, the same in every frame; never on a label.
    style : dict
        JSON-able: the drawn :class:`PhantomStyle`, ``label`` and ``overlays`` (one dict per
        placed element: ``kind``, ``box`` ``[x1, y1, x2, y2]``, details).
    """

    overlay_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    style: dict[str, Any] = field(default_factory=dict)


def draw_style(seed: int = 0, *, shape: tuple[int, int] | None = None) -> PhantomStyle:
    """The acquisition ``make_phantom_v2(seed)`` uses; ``shape`` fixes the frame size."""
    rng = np.random.default_rng(_streams(seed)[0])
    u = rng.uniform
    if shape is None:
        height = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
        width = int(rng.integers(max(SIZE_RANGE[0], math.ceil(0.75 * height)), SIZE_RANGE[1] + 1))
    else:
        height, width = (int(v) for v in shape)
        if min(height, width) < 128:
            raise ValueError(f"shape must be at least (128, 128) pixels, got {tuple(shape)}")
    top, bottom = int(u(0.0, 0.12) * height), int(u(0.0, 0.05) * height)
    fov_h = height - top - bottom
    spacing = max(u(40.0, 70.0) / fov_h, _MIN_FOV_WIDTH_MM / width)
    narrowest = max(math.ceil(0.75 * width), math.ceil(_MIN_FOV_WIDTH_MM / spacing))
    fov_w = min(max(round(u(_MIN_FOV_WIDTH_MM, 55.0) / spacing), narrowest), width)
    left = int(rng.integers(0, width - fov_w + 1))
    return PhantomStyle(
        shape=(height, width),
        fov=(top, left, fov_h, fov_w),
        spacing_mm=float(spacing),
        slice_mm=float(u(0.1, 0.5)),
        head_depth_mm=float(u(18.0, 26.0)),
        head_x_frac=float(u(0.55, 0.68)),
        ilium_label_mm=float(u(9.0, 16.0)),
        ilium_thickness_mm=float(u(0.7, 1.8)),
        gain_db=float(u(-10.0, 6.0)),
        dynamic_range_db=float(u(45.0, 80.0)),
        attenuation_db_per_cm=float(u(0.0, 2.5)),
        tgc_db=tuple(float(v) for v in u(-4.0, 4.0, 5)),
        speckle_mm=(float(u(0.2, 0.5)), float(u(0.4, 1.0))),
        blur_px=float(u(0.0, 1.5)),
        noise_sigma=float(u(0.5, 4.0)),
    )


def make_phantom_v2(
    seed: int = 0,
    *,
    n_slices: int = 24,
    label: str = "roof",
    overlays: bool = True,
    shape: tuple[int, int] | None = None,
    style: PhantomStyle | None = None,
) -> PhantomV2:
    """A domain-randomised phantom sweep or volume, deterministic from ``seed``.

    Parameters
    ----------
    n_slices
        Frames S >= 1 (1: one image; 2-40: a sweep; more: a volume). The labelled run covers
        45-65 % of them (at least one frame).
    label
        ``"roof"`` (the acetabular roof, as v1) or ``"ilium_roof"`` (ilium line + roof, one band).
    overlays
        Burn scanner overlays into the frames (``overlay_mask`` is empty without them).
    shape
        Frame ``(H, W)``, at least 128 x 128; default drawn from the seed (256-800 px).
    style
        The whole acquisition (e.g. ``dataclasses.replace(draw_style(seed), gain_db=0.0)``);
        default ``draw_style(seed, shape=shape)``.
    """
    if label not in LABELS:
        raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}")
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1 (one frame, a sweep of 2-40 or a volume), "
                         f"got {n_slices}")
    st = draw_style(seed, shape=shape) if style is None else style
    top, left, fov_h, fov_w = st.fov
    rng = np.random.default_rng(_streams(seed)[1])
    k = _DESIGN_MM / st.spacing_mm
    p = _draw_params(rng, n_slices, fov_h, fov_w, scale=k)
    p.update(_style_overrides(st, p))
    # the bony rim's leftmost position over all frames; the labelled ilium stays inside the scan
    rim_x = (p["head_x"] - p["drift_x"] - p["head_radius"] * (1 + p["drift_radius"])
             - p["cartilage_gap"])
    ilium_px = float(np.clip(st.ilium_label_mm / st.spacing_mm, 0.0, rim_x - 3.0))
    knots = np.linspace(0, fov_h - 1, len(st.tgc_db))
    tgc = np.interp(np.arange(fov_h), knots, st.tgc_db)
    image, lab = _render_volume(p, rng, n_slices, fov_h, fov_w, tgc_db=tgc, blur_px=st.blur_px,
                                ilium_label_length=max(ilium_px, 1.0))

    height, width = st.shape
    volume = np.zeros((n_slices, height, width), np.uint8)
    labels = np.zeros((n_slices, height, width), np.uint8)
    window = (slice(None), slice(top, top + fov_h), slice(left, left + fov_w))
    volume[window] = image
    labels[window] = (lab == 1) if label == "roof" else (lab > 0)
    overlay_mask = np.zeros((height, width), bool)
    placed: list[dict[str, Any]] = []
    if overlays:
        # Both labels' pixels are kept clear, so the frames do not depend on ``label``.
        keep_clear = np.zeros((height, width), bool)
        keep_clear[window[1:]] = (lab > 0).any(axis=0)
        values, overlay_mask, placed = draw_overlays(
            np.random.default_rng(_streams(seed)[2]), (height, width), st.fov, st.spacing_mm,
            keep_clear)
        volume[:, overlay_mask] = values[overlay_mask]
    p.update(ilium_label_px=ilium_px, fov=list(st.fov))
    info = {**st.to_dict(), "label": label, "overlays": _json_ready(placed)}
    spacing = (st.slice_mm, st.spacing_mm, st.spacing_mm)
    return PhantomV2(volume, labels, _json_ready(p), spacing, overlay_mask, info)


def _style_overrides(st: PhantomStyle, p: dict[str, Any]) -> dict[str, Any]:
    """v1's anatomy drawn for this scale, moved to the style's depths and imaging values."""
    fov_h = st.fov[2]
    design_h = DEFAULT_SHAPE[0] * p["scale"]  # v1 draws skin/fat depths as fractions of height
    return {
        "head_y": st.head_depth_mm / st.spacing_mm,
        "head_x": st.head_x_frac * st.fov[3],
        "ilium_thickness": st.ilium_thickness_mm / st.spacing_mm,
        "skin_depth": p["skin_depth"] * design_h / fov_h,
        "fat_depth": p["fat_depth"] * design_h / fov_h,
        "gain_db": st.gain_db,
        "dynamic_range_db": st.dynamic_range_db,
        "attenuation_db": st.attenuation_db_per_cm * fov_h * st.spacing_mm / 10.0,
        "noise_sigma": st.noise_sigma,
        "speckle_grain": [max(1, round(v / st.spacing_mm)) for v in st.speckle_mm],
    }


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams: style, anatomy + speckle, overlays."""
    return np.random.SeedSequence(seed).spawn(3)


def _json_ready(value: Any) -> Any:
    """``value`` with tuples as lists and numpy scalars as Python numbers (for ``json.dumps``)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
