"""Burned-in scanner overlays for phantom v2: text, a depth ruler, a grey/colour bar, a logo.

Real B-mode frames exported from a scanner carry the display around (and on) the image: patient
and preset text, a depth ruler with ticks, the grey-map or colour bar, the maker's logo. They are
bright, sharp-edged and always at the same place in every frame of a sweep, so a detector must
learn to ignore them. Here each element is a small patch (values + mask) placed at a random frame
edge or corner; a placement is rejected when it would touch the label (dilated) or another overlay,
and an element that finds no free place in a few tries is left out. Every pixel of every element
lies in the outer 30 % of the frame along x or y.

Grayscale only: a colour bar is drawn as the luminance of a rainbow map (a non-monotone ramp).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["KINDS", "draw_overlays"]

KINDS = ("text", "ruler", "bar", "logo")
_TRIES = 12
_EDGE_BAND = 0.3  # overlays stay in this outer fraction of the frame (along x or y)
_GLYPH = (7, 5)  # rows, columns of a character cell (before scaling)
# An element: (values uint8 (h, w), mask bool (h, w), top-left (y0, x0) in the frame, details).
Element = tuple[np.ndarray, np.ndarray, tuple[int, int], dict[str, Any]]
Fov = tuple[int, int, int, int]


def draw_overlays(
    rng: np.random.Generator,
    shape: tuple[int, int],
    fov: Fov,
    spacing_mm: float,
    keep_clear: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw one frame's overlays.

    Parameters
    ----------
    shape
        Frame ``(H, W)``.
    fov
        The scan region ``(top, left, height, width)`` in the frame (the ruler follows its side
        and its depth in mm).
    spacing_mm
        Pixel size, for the ruler's 5 / 10 mm ticks.
    keep_clear
        ``bool (H, W)``: pixels no overlay may touch (the label of any frame).

    Returns ``values uint8 (H, W)``, ``mask bool (H, W)`` and one JSON-able dict per placed
    element: ``kind``, ``box`` ``[x1, y1, x2, y2]`` (x2, y2 exclusive) and the element's details.
    """
    height, width = shape
    values = np.zeros(shape, np.uint8)
    mask = np.zeros(shape, bool)
    blocked = ndi.binary_dilation(keep_clear, iterations=4)
    allowed = _edge_band(shape)
    placed: list[dict[str, Any]] = []
    n_text = int(rng.integers(1, 4))
    for kind in ("ruler", "bar", "logo") + ("text",) * n_text:
        for _ in range(_TRIES):
            patch, pmask, (y0, x0), info = _ELEMENTS[kind](rng, shape, fov, spacing_mm)
            h, w = pmask.shape
            if y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
                continue
            region = (slice(y0, y0 + h), slice(x0, x0 + w))
            grown = ndi.binary_dilation(pmask, iterations=2)
            clash = (grown & (blocked[region] | mask[region])).any()
            if clash or (pmask & ~allowed[region]).any():
                continue
            values[region][pmask] = patch[pmask]
            mask[region] |= pmask
            placed.append({"kind": kind, "box": [x0, y0, x0 + w, y0 + h], **info})
            break
    return values, mask, placed


def _edge_band(shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    return ((x < _EDGE_BAND * width) | (x >= (1 - _EDGE_BAND) * width)
            | (y < _EDGE_BAND * height) | (y >= (1 - _EDGE_BAND) * height))


def _corner(rng: np.random.Generator, shape: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """Top-left of an ``h x w`` patch at a random corner or the middle of the top/bottom edge."""
    height, width = shape
    pad_y, pad_x = (int(v) for v in rng.integers(1, 12, 2))
    where = rng.choice(["tl", "tr", "bl", "br", "tc", "bc"])
    y0 = pad_y if where[0] == "t" else height - h - pad_y
    x0 = {"l": pad_x, "r": width - w - pad_x, "c": (width - w) // 2}[where[1]]
    return y0, x0


def _text(
    rng: np.random.Generator, shape: tuple[int, int], fov: Fov, spacing_mm: float
) -> Element:
    """Lines of random glyphs (5 x 7 cells, 1-2 px each): presets, dates, measurements."""
    height, width = shape
    cell = 2 if min(shape) >= 500 and rng.random() < 0.5 else 1
    gh, gw = _GLYPH
    glyphs = rng.random((24, gh, gw)) < 0.45
    glyphs[:, :, 0] |= rng.random((24, gh)) < 0.6  # a stem most letters have
    n_lines = int(rng.integers(1, 5))
    max_chars = max(3, int(0.4 * width) // ((gw + 1) * cell))
    n_chars = int(rng.integers(3, min(16, max_chars) + 1))
    rows = []
    for _ in range(n_lines):
        line_len = int(rng.integers(2, n_chars + 1))
        codes = rng.integers(0, len(glyphs), n_chars)
        line = np.zeros((gh + 2, n_chars * (gw + 1)), bool)
        for i, c in enumerate(codes[:line_len]):
            if rng.random() > 0.15:  # some blanks between words
                line[:gh, i * (gw + 1):i * (gw + 1) + gw] = glyphs[c]
        rows.append(line)
    pmask = np.kron(np.vstack(rows), np.ones((cell, cell), bool))
    level = int(rng.integers(170, 256))
    patch = np.full(pmask.shape, level, np.uint8)
    return patch, pmask, _corner(rng, shape, *pmask.shape), {"lines": n_lines, "level": level}


def _ruler(
    rng: np.random.Generator, shape: tuple[int, int], fov: Fov, spacing_mm: float
) -> Element:
    """A depth scale beside the scan region: a line with ticks every 5 mm, longer every 10 mm."""
    top, left, fh, fw = fov
    height, width = shape
    major = max(4, int(rng.integers(6, 13)))
    pmask = np.zeros((fh, major), bool)
    line_x = int(rng.integers(0, 2)) * (major - 1)  # the line on either side of the ticks
    with_line = rng.random() < 0.7
    if with_line:
        pmask[:, line_x] = True
    ticks = np.arange(0, fh, 5.0 / spacing_mm).astype(int)
    for i, t in enumerate(ticks):
        length = major if i % 2 == 0 else major // 2
        cols = slice(0, length) if line_x == 0 else slice(major - length, major)
        pmask[t:t + 2, cols] = True
    side = rng.choice(["left", "right"])
    gap = int(rng.integers(2, 6))
    if side == "left":
        x0 = left - major - gap if left >= major + gap else left + gap
    else:
        x0 = left + fw + gap if left + fw + gap + major <= width else left + fw - major - gap
    level = int(rng.integers(150, 256))
    patch = np.full(pmask.shape, level, np.uint8)
    return patch, pmask, (top, x0), {"side": str(side), "level": level, "line": bool(with_line)}


def _bar(
    rng: np.random.Generator, shape: tuple[int, int], fov: Fov, spacing_mm: float
) -> Element:
    """A grey-map bar (linear ramp) or a colour bar's luminance, with a bright frame."""
    height, width = shape
    h = int(rng.uniform(0.15, 0.3) * height)
    w = int(rng.integers(6, 17))
    t = np.linspace(1.0, 0.0, h)[:, None]
    colour = rng.random() < 0.5
    if colour:  # luminance of a jet-like map: dark blue, bright cyan/yellow, mid red
        r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
        ramp = 0.30 * r + 0.59 * g + 0.11 * b
    else:
        ramp = t
    patch = np.repeat(np.rint(255 * ramp), w, axis=1).astype(np.uint8)
    patch[[0, -1], :] = patch[:, [0, -1]] = 230
    side = rng.choice(["left", "right"])
    pad = int(rng.integers(1, 10))
    x0 = pad if side == "left" else width - w - pad
    y0 = int(rng.uniform(0.0, 0.7) * (height - h))
    return patch, np.ones(patch.shape, bool), (y0, x0), {"side": str(side), "colour": colour}


def _logo(
    rng: np.random.Generator, shape: tuple[int, int], fov: Fov, spacing_mm: float
) -> Element:
    """The maker's logo: a bright ellipse with a dark letter-like hole."""
    h, w = int(rng.integers(12, 25)), int(rng.integers(20, 49))
    yy, xx = np.mgrid[0:h, 0:w]
    pmask = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1
    patch = np.full((h, w), int(rng.integers(180, 256)), np.uint8)
    hole = (np.abs(yy - h / 2) < h / 5) & (np.abs(xx - w / 2) < w / 4)
    patch[hole & (rng.random((h, w)) < 0.6)] = 40
    return patch, pmask, _corner(rng, shape, h, w), {"size": [h, w]}


_ELEMENTS = {"text": _text, "ruler": _ruler, "bar": _bar, "logo": _logo}
