"""Which slices most likely need a look: one review score per slice (numpy only).

Two steps, so that the costly part happens once, while segmenting:

* :func:`slice_stats` condenses one slice's model output (``iter_predict`` result: ``boxes``,
  ``scores``, ``mask``, ``probabilities``) into a short row of numbers (:data:`STAT_FIELDS`).
  It reads only the pixels inside the boxes' bounding rectangle, so it costs a few tens of
  microseconds per slice; ``segment.iter_segment`` fills ``VolumeSegmentation.stats`` with it.
  :func:`stats_from_layers` builds the same rows from a mask volume and box rows alone (what a
  Labels and a Shapes layer hold); ``entropy`` is then unknown (NaN) and simply not used.
* :func:`score_slices` turns the rows of a volume into :class:`ReviewScores`.

The score (documented in the README, section "Review queue and correction history")
------------------------------------------------------------------------------------
Five components per slice; a component that cannot be computed on a slice (no box, no
neighbour with a box, no probabilities) counts 0 there.

===========  ===============================================================================
entropy      model uncertainty: mean binary entropy (bits, 0..1) of the foreground
             probabilities inside the ROI boxes (slices with a box).
detection    RPN doubt: ``1 - top score + second score`` (second 0 with one box), 0..1: a
             weak best box, or two competing boxes (slices with a box).
box_jump     the top box disagrees with the neighbouring slices: centre distance in units of
             the box size ``sqrt(h * w)`` plus ``|log h ratio| + |log w ratio|``, against the
             previous slice's box, the next one's and their average, whichever fits best.
area_jump    the same for the mask area: ``|a - a_ref| / max(a, a_ref, 20 px)`` against the
             previous slice, the next one and their average, whichever fits best (0..1).
             Taking the best fit keeps smooth trends and the ends of the labelled run quiet.
presence     1 when the slice has a mask and both neighbours have none, or the reverse.
===========  ===============================================================================

Each component ``c`` is normalised robustly over the slices where it is defined:
``z = (c - median) / max(1.4826 * MAD, floor)``, negative values set to 0 and values capped at
:data:`Z_CAP`; the floor (:data:`COMPONENTS`) keeps a volume where every slice agrees (MAD 0)
from turning noise into alarms. The slice's score is the sum of its components' ``z``. Higher
means look first; 0 means nothing stands out. The queue is the slices by decreasing score (ties
by slice index). Every output is finite (no NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COMPONENTS", "STAT_FIELDS", "Z_CAP", "ReviewScores", "draw_scores", "empty_stats",
           "score_slices", "shapes_to_rows", "slice_stats", "stats_from_layers"]

STAT_FIELDS = ("n_boxes", "top_score", "second_score", "y1", "x1", "y2", "x2", "area", "entropy")
_F = {name: i for i, name in enumerate(STAT_FIELDS)}

# component -> (floor of its robust scale, what it measures)
COMPONENTS: dict[str, tuple[float, str]] = {
    "entropy": (0.05, "mean binary entropy of the probabilities inside the boxes"),
    "detection": (0.05, "1 - top RPN score + second score"),
    "box_jump": (0.10, "top box moves or resizes against the neighbouring slices"),
    "area_jump": (0.10, "mask area jumps against the neighbouring slices"),
    "presence": (0.20, "mask present between two empty slices, or the reverse"),
}
Z_CAP = 10.0
MIN_AREA = 20.0  # px: area changes are relative to at least this, so specks do not alarm
_MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------- per-slice rows


def empty_stats(n_slices: int) -> np.ndarray:
    """``(n_slices, len(STAT_FIELDS))`` float32 of NaN: rows of slices not segmented yet."""
    return np.full((int(n_slices), len(STAT_FIELDS)), np.nan, np.float32)


def slice_stats(result: dict[str, Any]) -> np.ndarray:
    """One slice's row of :data:`STAT_FIELDS` (float32) from an ``iter_predict`` result.

    ``boxes`` float[K, 4] ``x1, y1, x2, y2``; ``scores`` float[K]; ``mask`` uint8[H, W];
    ``probabilities`` float[H, W] (optional: ``entropy`` is NaN without it). The top box is the
    highest-scoring one; with no box its coordinates and both scores are NaN / 0.
    """
    row = np.full(len(STAT_FIELDS), np.nan, np.float32)
    boxes = np.asarray(result.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    scores = np.asarray(result.get("scores", np.zeros(0)), np.float32).reshape(-1)
    mask = result["mask"]
    row[_F["n_boxes"]] = len(boxes)
    row[_F["area"]] = np.count_nonzero(mask)
    if len(boxes) == 0:
        row[_F["top_score"]] = row[_F["second_score"]] = 0.0
        row[_F["entropy"]] = 0.0
        return row
    order = np.argsort(-scores, kind="stable")
    top = boxes[order[0]]
    row[_F["top_score"]] = scores[order[0]]
    row[_F["second_score"]] = scores[order[1]] if len(order) > 1 else 0.0
    row[_F["x1"]], row[_F["y1"]], row[_F["x2"]], row[_F["y2"]] = top
    prob = result.get("probabilities")
    if prob is not None:
        h, w = mask.shape[-2:]
        x1 = int(np.clip(np.floor(boxes[:, 0].min()), 0, w))
        y1 = int(np.clip(np.floor(boxes[:, 1].min()), 0, h))
        x2 = int(np.clip(np.ceil(boxes[:, 2].max()), 0, w))
        y2 = int(np.clip(np.ceil(boxes[:, 3].max()), 0, h))
        crop = np.asarray(prob[y1:y2, x1:x2], np.float32)
        # Probabilities are exactly 0 outside the ROIs (model contract): p > 0 is the ROI union.
        p = np.clip(crop[crop > 0], 1e-6, 1 - 1e-6)
        entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        row[_F["entropy"]] = float(entropy.mean()) if p.size else 0.0
    return row


def stats_from_layers(labels: np.ndarray, boxes: Any = None) -> np.ndarray:
    """Rows of :data:`STAT_FIELDS` from a mask volume ``(S, H, W)`` and box rows ``(N, 6)``
    ``slice, y1, x1, y2, x2, score`` (e.g. a Labels and a Shapes layer). ``entropy`` is NaN:
    without probabilities the entropy component is left out."""
    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    out = empty_stats(lab.shape[0])
    out[:, _F["area"]] = np.count_nonzero(lab.reshape(lab.shape[0], -1), axis=1)
    out[:, _F["n_boxes"]] = 0
    out[:, _F["top_score"]] = out[:, _F["second_score"]] = 0
    rows = np.asarray(boxes if boxes is not None else np.zeros((0, 6)), np.float32).reshape(-1, 6)
    for k in range(lab.shape[0]):
        mine = rows[rows[:, 0].round() == k]
        if not len(mine):
            continue
        mine = mine[np.argsort(-mine[:, 5], kind="stable")]
        out[k, _F["n_boxes"]] = len(mine)
        out[k, _F["top_score"]] = mine[0, 5]
        out[k, _F["second_score"]] = mine[1, 5] if len(mine) > 1 else 0.0
        out[k, [_F["y1"], _F["x1"], _F["y2"], _F["x2"]]] = mine[0, 1:5]
    return out


def shapes_to_rows(layer: Any) -> np.ndarray:
    """Box rows ``slice, y1, x1, y2, x2, score`` of a napari Shapes layer of 3D rectangles (the
    score from its ``score`` feature, else 1); 2D shapes are skipped. No napari import."""
    scores = (np.asarray(layer.features["score"], np.float32) if "score" in layer.features
              else np.ones(len(layer.data), np.float32))
    rows = []
    for verts, score in zip(layer.data, scores):
        v = np.asarray(verts)
        if v.shape[1] != 3:
            continue
        rows.append([round(float(v[0, 0])), v[:, 1].min(), v[:, 2].min(), v[:, 1].max(),
                     v[:, 2].max(), score])
    return np.asarray(rows, np.float32).reshape(-1, 6)



# --------------------------------------------------------------------------- components


def _best_fit(values: np.ndarray, dist) -> np.ndarray:
    """Per slice, the smallest ``dist(values, reference)`` over three references: the previous
    slice's row, the next slice's row and their average. ``values`` (S, D); references with NaN
    are skipped; NaN where no reference is available."""
    prev = np.full_like(values, np.nan)
    nxt = np.full_like(values, np.nan)
    prev[1:], nxt[:-1] = values[:-1], values[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.stack([dist(values, r) for r in (prev, nxt, (prev + nxt) / 2)])
    d[~np.isfinite(d)] = np.inf
    best = d.min(axis=0)
    best[~np.isfinite(best)] = np.nan
    return best


def _components(stats: np.ndarray) -> dict[str, np.ndarray]:
    """Raw component values (S,) per name; NaN where a component is undefined."""
    s = np.asarray(stats, np.float64)
    has_box = np.nan_to_num(s[:, _F["n_boxes"]]) > 0
    area = s[:, _F["area"]]
    comp: dict[str, np.ndarray] = {}
    comp["entropy"] = np.where(has_box, s[:, _F["entropy"]], np.nan)
    doubt = 1 - s[:, _F["top_score"]] + s[:, _F["second_score"]]
    comp["detection"] = np.where(has_box, np.clip(doubt, 0, 1), np.nan)

    y1, x1, y2, x2 = (s[:, _F[k]] for k in ("y1", "x1", "y2", "x2"))
    h, w = np.maximum(y2 - y1, 1), np.maximum(x2 - x1, 1)
    # centre y, centre x, log h, log w, box size sqrt(h w) (the size of the slice itself scales)
    geom = np.stack([(y1 + y2) / 2, (x1 + x2) / 2, np.log(h), np.log(w), np.sqrt(h * w)], axis=1)
    geom[~has_box] = np.nan

    def box_dist(v: np.ndarray, r: np.ndarray) -> np.ndarray:
        centre = np.hypot(v[:, 0] - r[:, 0], v[:, 1] - r[:, 1]) / v[:, 4]
        return centre + np.abs(v[:, 2] - r[:, 2]) + np.abs(v[:, 3] - r[:, 3])

    comp["box_jump"] = _best_fit(geom, box_dist)
    comp["area_jump"] = _best_fit(area[:, None], lambda v, r: (
        np.abs(v - r) / np.maximum(np.maximum(v, r), MIN_AREA))[:, 0])
    present = np.nan_to_num(area) > 0
    flip = np.zeros(len(s))
    if len(s) >= 3:
        flip[1:-1] = (present[:-2] == present[2:]) & (present[1:-1] != present[:-2])
    comp["presence"] = np.where(np.isnan(area), np.nan, flip)
    return comp


@dataclass
class ReviewScores:
    """Review scores of a volume's slices.

    ``score`` float (S,) (>= 0, finite); ``order`` int (S,): the queue, slices by decreasing
    score; ``components`` raw values and ``z`` their normalised contributions (finite; 0 where
    undefined), each name -> (S,).
    """

    score: np.ndarray
    order: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)
    z: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.score)

    def rank(self, k: int) -> int:
        """Position of slice ``k`` in the queue (1 = look first)."""
        return int(np.flatnonzero(self.order == int(k))[0]) + 1

    def reason(self, k: int) -> str:
        """The component that contributes most to slice ``k``'s score ("" when none does)."""
        if not self.z or self.score[k] <= 0:
            return ""
        return max(self.z, key=lambda name: self.z[name][k])


def score_slices(stats: np.ndarray) -> ReviewScores:
    """Score every slice from its :data:`STAT_FIELDS` row (see the module docstring).

    ``stats`` float (S, len(STAT_FIELDS)); rows of slices not segmented are NaN and score 0.
    """
    s = np.asarray(stats, np.float64)
    if s.ndim != 2 or s.shape[1] != len(STAT_FIELDS):
        raise ValueError(f"stats must be (slices, {len(STAT_FIELDS)}) rows of {STAT_FIELDS}, "
                         f"got shape {s.shape}")
    n = len(s)
    comp = _components(s) if n else {name: np.zeros(0) for name in COMPONENTS}
    z: dict[str, np.ndarray] = {}
    total = np.zeros(n)
    for name, (floor, _) in COMPONENTS.items():
        c = comp[name]
        defined = np.isfinite(c)
        zc = np.zeros(n)
        if defined.any():
            med = np.median(c[defined])
            mad = np.median(np.abs(c[defined] - med))
            zc[defined] = (c[defined] - med) / max(_MAD_TO_SIGMA * mad, floor)
        zc = np.clip(zc, 0, Z_CAP)
        z[name] = zc
        total += zc
        comp[name] = np.nan_to_num(c, nan=0.0)
    order = np.argsort(-total, kind="stable")
    return ReviewScores(total, order, comp, z)


# --------------------------------------------------------------------------- plot


_ZCOLOURS = {"entropy": "tab:blue", "detection": "tab:orange", "box_jump": "tab:green",
             "area_jump": "tab:red", "presence": "tab:purple"}


def draw_scores(figure: Any, scores: ReviewScores, current: int | None = None,
                marked: dict[int, str] | None = None, title: str | None = None) -> Any:
    """Draw the review score along the slice axis on a matplotlib ``Figure`` as stacked bars of
    the components; ``current`` slice as a vertical line, ``marked`` slices (slice -> "reviewed"
    / "corrected") as ticks under the axis. Returns the axes (the widget moves the line).
    Imports matplotlib only here."""
    figure.clear()
    ax = figure.add_subplot(1, 1, 1)
    x = np.arange(scores.n_slices)
    bottom = np.zeros(scores.n_slices)
    for name, colour in _ZCOLOURS.items():
        values = scores.z.get(name, np.zeros(scores.n_slices))
        ax.bar(x, values, bottom=bottom, width=1.0, color=colour, label=name, linewidth=0)
        bottom = bottom + values
    top = float(bottom.max()) if scores.n_slices else 1.0
    for k, state in (marked or {}).items():
        ax.plot([k], [-0.04 * max(top, 1)], marker="^", ms=4, ls="none",
                color="tab:green" if state == "corrected" else "0.4")
    ax.axvline(current if current is not None else -10, color="k", lw=1, ls="--")
    ax.set_xlim(-0.5, max(scores.n_slices, 1) - 0.5)
    ax.set_ylim(-0.08 * max(top, 1), max(top, 1) * 1.08)
    ax.set_xlabel("slice")
    ax.set_ylabel("review score")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False,
              borderaxespad=0.1)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return ax
