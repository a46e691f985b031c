"""A seeded phantom of 3D infant-hip ultrasound (coronal hip plane) with acetabulum labels.

The slice geometry follows the coronal (Graf) view as it is acquired, transducer at the top:
skin, subcutis and the gluteal muscles as bands with fibre-like streaks; the ilium as a bright,
roughly horizontal line on the left at about the depth of the femoral head centre, which bends
down into the bony acetabular roof around the hypoechoic femoral head; a joint capsule arching over
the head; the bony femoral metaphysis below it; acoustic shadow under every bone surface.

Image formation is a linear echo-amplitude map times fully developed speckle (the magnitude of a
spatially correlated complex Gaussian field, i.e. Rayleigh distributed), log-compressed to a
dynamic range with depth attenuation / TGC, overall gain and additive display noise. All of those,
and the anatomy, vary per seed; everything is drawn from one ``numpy.random.Generator``.

Label: the acetabulum is the band of the bony roof echo (from the bend of the ilium down along the
head) in a contiguous run of slices in the middle of the volume, where its length and thickness
swell and taper smoothly along z. The label is exactly the bright roof band drawn in the image, so
a model can learn it; the ilium and metaphysis are equally bright distractors that are not labelled.
With the default shape the label covers about 0.5 % of the pixels of a labelled slice and about
0.3 % of the whole volume (the paper: 0.3 % of its dataset).

What this is not: a physically simulated 3D scan. The in-plane anatomy drifts smoothly along z but
is not the section of a consistent 3D model, there is no beam refraction or reverberation, and no
ossification centre in the head.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Phantom", "make_phantom", "write_phantom", "DEFAULT_SHAPE", "SPACING"]

DEFAULT_SHAPE: tuple[int, int] = (367, 192)  # the paper's slice size (height, width)
# Voxel size (z, y, x) in mm: a 55 x 29 mm slice (typical infant-hip depth setting) and a 51 mm
# sweep for 256 slices.
SPACING: tuple[float, float, float] = (0.2, 0.15, 0.15)
_CHUNK = 32  # slices rendered at once (bounded temporaries); part of the seed -> image mapping


@dataclass(frozen=True, eq=False)
class Phantom:
    """One phantom volume.

    Attributes
    ----------
    volume : numpy.ndarray
        ``uint8 (S, H, W)``, the B-mode slices in napari axis order (z, y, x).
    labels : numpy.ndarray
        ``uint8 (S, H, W)``, 1 on the acetabulum (bony roof), 0 elsewhere.
    params : dict
        The drawn parameters (anatomy in pixels, imaging in dB) and ``label_slices`` ``[start,
        stop)``: the run of slices that carry a label. JSON-able.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.

    Unpacks as ``volume, labels = make_phantom(...)``.
    """

    volume: np.ndarray
    labels: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] = SPACING

    def __iter__(self):
        return iter((self.volume, self.labels))


def make_phantom(
    seed: int = 0, n_slices: int = 256, shape: tuple[int, int] = DEFAULT_SHAPE
) -> Phantom:
    """Generate the phantom volume and its acetabulum labels, deterministically from ``seed``.

    Parameters
    ----------
    seed
        Any non-negative integer; the same seed (with the same ``n_slices`` and ``shape``) gives
        identical arrays.
    n_slices
        Number of slices S (>= 1). The labelled run covers 45-65 % of them, in the middle.
    shape
        Slice size ``(H, W)``, at least 32 x 32. Anatomy scales with the size; the default is the
        paper's 367 x 192.
    """
    height, width = (int(v) for v in shape)
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if height < 32 or width < 32:
        raise ValueError(f"shape must be at least (32, 32) pixels, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    p = _draw_params(rng, n_slices, height, width)
    volume, labels = _render_volume(p, rng, n_slices, height, width)
    return Phantom(volume, labels, p, SPACING)


def _render_volume(
    p: dict[str, Any], rng: np.random.Generator, n: int, height: int, width: int, **render_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the per-slice anatomy and texture fields for ``p``, then render all slices in chunks.

    ``render_kw`` goes to :func:`_render` (phantom v2's extras; none for ``make_phantom``).
    """
    per_slice = _slice_params(p, rng, n)
    fields = _texture_fields(rng, p, height, width)
    volume = np.empty((n, height, width), np.uint8)
    labels = np.empty((n, height, width), np.uint8)
    for z0 in range(0, n, _CHUNK):
        z1 = min(z0 + _CHUNK, n)
        chunk = {k: v[z0:z1, None, None] for k, v in per_slice.items()}
        volume[z0:z1], labels[z0:z1] = _render(p, chunk, fields, rng, **render_kw)
    return volume, labels


def write_phantom(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    n_slices: int = 256,
    shape: tuple[int, int] = DEFAULT_SHAPE,
) -> tuple[Path, Path]:
    """Write ``volume.tif`` and ``labels.tif`` (ImageJ TIFF with the mm spacing) into ``out_dir``.

    Each file is written to a temporary name in the same folder and renamed, so a reader never
    sees a half-written file. Returns ``(volume_path, labels_path)``.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(seed=seed, n_slices=n_slices, shape=shape)
    paths = folder / "volume.tif", folder / "labels.tif"
    for path, data in zip(paths, (ph.volume, ph.labels)):
        _write_imagej_atomic(path, data, ph.spacing)
    return paths


def _write_imagej_atomic(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> None:
    import tifffile

    dz, dy, dx = spacing
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)  # only the unique name is wanted: tifffile's own open() gives umask permissions
    try:
        tifffile.imwrite(
            tmp, data, imagej=True, resolution=(1.0 / dx, 1.0 / dy),  # TIFF order: x, then y
            metadata={"spacing": dz, "unit": "mm", "axes": "ZYX"},
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# parameters


def _draw_params(
    rng: np.random.Generator, n: int, height: int, width: int, scale: float | None = None
) -> dict[str, Any]:
    """Per-volume scalars. Lengths are in pixels of this shape, scaled from the 367 x 192 design
    (``scale``: pixels per design pixel; by default the largest that fits the shape)."""
    k = min(height / DEFAULT_SHAPE[0], width / DEFAULT_SHAPE[1]) if scale is None else scale
    u = rng.uniform
    run_frac, run_centre = u(0.45, 0.65), u(0.42, 0.58)
    start = int(round(n * (run_centre - run_frac / 2)))
    stop = int(round(n * (run_centre + run_frac / 2)))
    if n >= 3:  # keep empty slices at both ends
        start, stop = max(start, 1), min(stop, n - 1)
    start = min(max(start, 0), n - 1)
    stop = min(max(stop, start + 1), n)
    p = {
        "scale": k,
        "head_radius": k * u(46.0, 58.0),
        "cartilage_gap": k * u(5.0, 8.0),
        "roof_thickness": max(2.5, k * u(8.5, 10.5)),
        "ilium_thickness": max(2.0, k * u(4.5, 6.0)),
        "head_x": width * u(0.58, 0.66),
        "head_y": height * u(0.50, 0.57),
        "roof_angle_deg": u(45.0, 58.0),
        "ilium_slope": u(-0.08, 0.05),
        "skin_depth": height * u(0.015, 0.025),
        "fat_depth": height * u(0.07, 0.11),
        "n_fibres": int(rng.integers(10, 17)),
        "muscle_amplitude": u(0.0025, 0.004),
        "septa_gain": u(4.0, 7.0),
        "fibre_shear": u(-0.12, 0.04),
        "gain_db": u(-6.0, 2.0),
        "dynamic_range_db": u(58.0, 68.0),
        "attenuation_db": u(4.0, 10.0),  # net of TGC, over the full depth
        "shadow_db": u(12.0, 18.0),
        "noise_sigma": u(1.0, 3.0),  # gray levels
        "speckle_grain": [int(rng.integers(2, 4)), int(rng.integers(4, 7))],  # (y, x) pixels
        "drift_x": k * u(3.0, 8.0),
        "drift_y": k * u(3.0, 6.0),
        "drift_radius": u(0.03, 0.08),
        "label_slices": [start, stop],
        "shape": [height, width],
        "n_slices": n,
    }
    return {key: (float(v) if isinstance(v, float) else v) for key, v in p.items()}


def _smooth_curve(rng: np.random.Generator, n: int) -> np.ndarray:
    """A slow random curve over the slices, in [-1, 1] (three sinusoids, 0.3-1.5 cycles)."""
    t = (np.arange(n) + 0.5) / n
    freq = rng.uniform(0.3, 1.5, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform(0.5, 1.0, 3)
    c = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)
    return c / amp.sum()


def _slice_params(p: dict[str, Any], rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-slice anatomy: smooth drifts along z and the label envelope over the labelled run."""
    z = np.arange(n)
    start, stop = p["label_slices"]
    inside = (z >= start) & (z < stop)
    env = np.where(inside, np.sin(np.pi * (z - start + 0.5) / (stop - start)), 0.0)
    radius = p["head_radius"] * (1 + p["drift_radius"] * _smooth_curve(rng, n))
    out = {
        "hx": p["head_x"] + p["drift_x"] * _smooth_curve(rng, n),
        "hy": p["head_y"] + p["drift_y"] * _smooth_curve(rng, n),
        "radius": radius,
        "roof_angle": np.where(inside, np.deg2rad(p["roof_angle_deg"]) * (0.35 + 0.65 * env), 0.0),
        "roof_thickness": np.where(inside, p["roof_thickness"] * (0.65 + 0.35 * env), 0.0),
        "fat_depth": p["fat_depth"] + 2 * p["scale"] * _smooth_curve(rng, n),
        # texture blend angle: turns slowly so neighbouring slices share their fibres
        "texture_angle": np.pi * (0.8 * (z + 0.5) / n + 0.2 * _smooth_curve(rng, n)),
    }
    return {key: v.astype(np.float32) for key, v in out.items()}


def _texture_fields(
    rng: np.random.Generator, p: dict[str, Any], height: int, width: int
) -> dict[str, np.ndarray]:
    """2D fields drawn once per volume and blended per slice (so neighbouring slices agree).

    ``grain1``/``grain2``: unit-variance, laterally stretched noise (the muscle texture);
    ``lines1``/``lines2``: long bright fascicle septa of the gluteal muscles; ``coarse``: slow
    echogenicity variation.
    """
    k = p["scale"]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def grain() -> np.ndarray:
        g = ndi.gaussian_filter(rng.standard_normal((height, width)), (1.0 * k + 0.3, 25 * k + 1))
        warped_y = yy + p["fibre_shear"] * (xx - width / 2)
        g = ndi.map_coordinates(g, [warped_y, xx], order=1, mode="reflect")
        return ((g - g.mean()) / g.std()).astype(np.float32)

    top = p["fat_depth"]
    bottom = p["head_y"] - p["head_radius"] - p["cartilage_gap"] - 5 * k

    def lines() -> np.ndarray:
        out = np.zeros((height, width), np.float32)
        xc = (xx - width / 2) / width
        for _ in range(p["n_fibres"]):
            y0 = rng.uniform(top, bottom)
            # deeper septa tilt more: they fan out towards the trochanter
            depth = (y0 - top) / max(bottom - top, 1.0)
            slope = p["fibre_shear"] * (0.5 + depth) + rng.normal(0, 0.03)
            bow = rng.normal(0, 0.15) * width * xc**2
            wave = rng.uniform(1, 4) * k * np.sin(
                2 * np.pi * xc * rng.uniform(0.5, 2) + rng.uniform(0, 2 * np.pi))
            yc = y0 + slope * width * xc + bow + wave
            x0, length = rng.uniform(-0.4, 0.6) * width, rng.uniform(0.5, 1.4) * width
            ends = _ramp(xx - x0, 0.15 * width) * _ramp(x0 + length - xx, 0.15 * width)
            out += rng.lognormal(0, 0.4) * _gauss(yy - yc, rng.uniform(0.8, 1.8) * k + 0.3) * ends
        return out

    g1, g2, l1, l2 = grain(), grain(), lines(), lines()
    coarse = ndi.gaussian_filter(rng.standard_normal((height, width)), 12 * k + 1)
    coarse = (coarse / coarse.std()).astype(np.float32)
    return {"grain1": g1, "grain2": g2, "lines1": l1, "lines2": l2, "coarse": coarse}


# --------------------------------------------------------------------------------------------
# rendering


def _gauss(d: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * np.square(d / sigma))


def _ramp(v: np.ndarray, width: float) -> np.ndarray:
    """0 below 0, 1 above ``width``, linear between (a soft window edge)."""
    return np.clip(v / width, 0, 1)


def _render(
    p: dict[str, Any],
    s: dict[str, np.ndarray],
    f: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    ilium_label_length: float = 0.0,
    tgc_db: np.ndarray | None = None,
    blur_px: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a chunk of slices; ``s`` holds per-slice float32 values shaped (n, 1, 1).

    Labels are 1 on the roof. The keywords are phantom v2's and change nothing at their defaults:
    ``ilium_label_length > 0`` also marks the ilium line over that many pixels left of the rim
    with 2 (on slices with a roof, so roof + ilium form one band); ``tgc_db`` (H,) is added to the
    depth gain profile; ``blur_px`` is the sigma of a display blur of the log image.
    """
    height, width = f["coarse"].shape
    k = p["scale"]
    rad = math.radians
    y = np.arange(height, dtype=np.float32)[None, :, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    hx, hy, radius = s["hx"], s["hy"], s["radius"]
    roof_r = radius + np.float32(p["cartilage_gap"])  # inner surface of the bony roof

    # --- soft tissue: linear echo amplitude, 1.0 = top of the display (0 dB) ---
    a = s["texture_angle"]
    w1, w2 = np.cos(a), np.sin(a)  # w1^2 + w2^2 = 1: the blend keeps the statistics
    grain = np.maximum(w1 * f["grain1"] + w2 * f["grain2"] - 0.8, 0) ** 1.5
    septa = w1 * w1 * f["lines1"] + w2 * w2 * f["lines2"]
    m_amp = p["muscle_amplitude"]
    muscle_bottom = hy - roof_r - 10 * k
    # below the gluteal muscles the tissue is hypoechoic and plain
    deep = _ramp(y - muscle_bottom - 25 * k, 40 * k)
    tissue = m_amp * ((1 - 0.3 * deep) * (1 + 3 * (1 - deep) * grain) * (1 + 0.3 * f["coarse"])
                      + p["septa_gain"] * (1 - deep) * septa)
    tissue = np.where(y < s["fat_depth"], 0.5 * m_amp * (1 + 3 * grain), tissue)
    skin = np.where(y < 2 * k + 1, np.float32(0.026), np.float32(0.006))  # bright entry echo
    tissue = np.where(y < p["skin_depth"], skin, tissue)
    along = 0.6 + 0.4 * w1 * f["coarse"]  # the fascia's brightness varies along it
    wavy = s["fat_depth"] + 3 * k * np.sin(x / (0.3 * width))
    tissue += 0.03 * along * _gauss(y - wavy, 1.0 * k + 0.3)

    dx, dy = x - hx, y - hy
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, -dx)  # angle around the head centre from its leftmost point, + downwards
    theta = np.where(phi >= 0, np.float32(np.pi), np.float32(-np.pi)) - phi  # usual angle, y down

    # femoral head and the cartilaginous roof around it: hypoechoic (speckle only, no fibres)
    in_head = 0.5 - 0.5 * np.tanh((r - radius - 0.6 * p["cartilage_gap"]) / (3 * k + 0.5))
    tissue = tissue * (1 - in_head) + (0.5 * m_amp * (1 + 0.3 * f["coarse"])) * in_head
    cap_r = roof_r + p["roof_thickness"] + 3 * k
    cap_win = _ramp(theta + rad(125), 0.5) * _ramp(rad(-10) - theta, 0.5)
    tissue += 0.05 * _gauss(r - cap_r, 2.0 * k + 0.3) * cap_win
    labrum_x = hx - roof_r * math.cos(rad(35)) + 2 * k  # a faint echogenic labrum at the rim
    labrum_y = hy - roof_r * math.sin(rad(35))
    tissue += 0.012 * _gauss(np.hypot(x - labrum_x, (y - labrum_y) * 1.5), 4 * k + 1)

    # --- bone surfaces: ilium, acetabular roof (the label), femoral metaphysis ---
    t_il = p["ilium_thickness"]
    rim_x = hx - roof_r
    # the ilium runs into a rounded bend (the bony rim) that turns down into the roof
    bend = 12 * k + 2
    rise = 0.5 * bend * (1 - _ramp(x - rim_x + bend, bend) ** 2)
    ilium_y = hy + p["ilium_slope"] * (x - rim_x) - rise
    ilium = _gauss(y - ilium_y, 0.3 * t_il) * _ramp(rim_x - x + 2, 2)
    t_roof, phi_max = s["roof_thickness"], s["roof_angle"]
    d_roof = r - roof_r
    in_arc = _ramp(phi_max - phi + 0.04, 0.08) * _ramp(phi + 0.08, 0.08)
    roof = _gauss(d_roof - 0.35 * t_roof, 0.3 * np.maximum(t_roof, 1e-3)) * in_arc
    roof = np.where(t_roof > 0, roof, 0)
    labels = (d_roof >= 0) & (d_roof < t_roof) & (phi >= 0) & (phi <= phi_max)
    if ilium_label_length > 0:
        on_ilium = ((np.abs(y - ilium_y) < 0.5 * t_il) & (x <= rim_x)
                    & (x >= rim_x - ilium_label_length) & (t_roof > 0))
        labels = np.where(labels, 1, np.where(on_ilium, 2, 0))
    meta_win = _ramp(theta - rad(35), 0.2) * _ramp(rad(100) - theta, 0.2)
    metaphysis = _gauss(r - radius - 0.3 * p["cartilage_gap"] - 0.5 * t_il, 0.35 * t_il) * meta_win

    # acoustic shadow: every pixel deeper than a bone surface in its column, past the echo itself
    hard = np.minimum(ilium + roof + metaphysis, 1.0)
    behind = np.maximum.accumulate(hard, axis=1)
    shift = max(1, int(round(0.6 * t_il)))
    behind = np.concatenate([np.zeros_like(behind[:, :shift]), behind[:, :-shift]], axis=1)
    tissue *= 1 - (1 - 10 ** (-p["shadow_db"] / 20)) * behind
    tissue += 0.0007  # noise floor / reverberation: shadows are dark, not black
    # bone echoes are added after the shadow: a surface is not hidden by its own shadow
    amp = tissue + 0.3 * (ilium + roof) + 0.12 * metaphysis

    # --- speckle (Rayleigh envelope of a correlated complex Gaussian), log compression ---
    gy, gx = p["speckle_grain"]
    re, im = rng.standard_normal((2, *amp.shape), dtype=np.float32)
    re = ndi.uniform_filter(re, (1, gy, gx))  # a box PSF: speckle grains of about gy x gx px
    im = ndi.uniform_filter(im, (1, gy, gx))
    power = (re * re + im * im) * np.float32(0.5 * gy * gx)  # mean power 1
    # incoherent smoothing (as compounding / display filtering does) fills the deepest nulls
    power = ndi.uniform_filter(power, (1, 2, 3))
    depth_db = (-p["attenuation_db"] * y / height + 1.5 * np.sin(2 * np.pi * y / height * 1.3)
                + p["gain_db"])
    if tgc_db is not None:
        depth_db = depth_db + np.asarray(tgc_db, np.float32)[None, :, None]
    db = 10 * np.log10(amp * amp * power + 1e-12) + depth_db
    if blur_px > 0:
        db = ndi.gaussian_filter(db, (0, blur_px, blur_px))
    dr = p["dynamic_range_db"]
    gray = (db + dr) * np.float32(255 / dr)
    gray += p["noise_sigma"] * rng.standard_normal(gray.shape, dtype=np.float32)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8), labels.astype(np.uint8)
