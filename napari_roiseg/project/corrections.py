"""Which slices were corrected, and how they split into training and validation slices.

* A slice whose labels differ from the model's prediction (foreground ``!= 0`` compared) was
  corrected (:func:`detect_corrected`); the user may also mark a slice ``corrected`` (right as
  it is), ``negative`` (no acetabulum: trained as an empty mask) or ``excluded`` (an accidental
  edit; not used) -- :class:`Corrections`.
* :func:`plan_slices` splits the corrected slices into training and validation so that no
  validation slice is a direct neighbour of a training slice (neighbouring slices are
  near-duplicates: validating on one would measure memory, not generalisation).

numpy only: no napari, Qt or torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MARKS", "CorrectionState", "Corrections", "SlicePlan", "correction_state",
           "detect_corrected", "format_slices",
           "parse_slices", "plan_slices"]

MARKS = ("corrected", "negative", "excluded")


# --------------------------------------------------------------------------- slice lists


def parse_slices(text: str) -> list[int]:
    """``"3, 7-9 12"`` -> ``[3, 7, 8, 9, 12]`` (sorted, unique); "", "auto", "none" -> ``[]``."""
    text = text.strip()
    if text.lower() in ("", "auto", "none"):
        return []
    out: set[int] = set()
    for part in re.split(r"[,\s;]+", text):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"cannot read {part!r} as a slice: write numbers and ranges such as "
                             "'3, 7-9, 12'")
        a, b = int(m[1]), int(m[2] or m[1])
        out.update(range(min(a, b), max(a, b) + 1))
    return sorted(out)


def format_slices(slices: Iterable[int]) -> str:
    """``[3, 7, 8, 9, 12]`` -> ``"3, 7-9, 12"`` (inverse of :func:`parse_slices`)."""
    s = sorted(set(int(k) for k in slices))
    parts, i = [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ", ".join(parts)


# --------------------------------------------------------------------------- corrections


def detect_corrected(labels: np.ndarray, prediction: np.ndarray) -> list[int]:
    """Slices where the foreground (``!= 0``) of ``labels`` differs from ``prediction``.

    Both are ``(S, H, W)``. Only foreground is compared, as training sees it: repainting a
    region with another label value is not a correction.
    """
    lab, pred = np.asarray(labels), np.asarray(prediction)
    if lab.shape != pred.shape or lab.ndim != 3:
        raise ValueError(f"labels {lab.shape} and prediction {pred.shape} must be volumes "
                         "(S, H, W) of the same shape")
    changed = ((lab != 0) != (pred != 0)).reshape(lab.shape[0], -1).any(axis=1)
    return np.flatnonzero(changed).tolist()


@dataclass
class Corrections:
    """Which slices of a volume carry reference labels: detected edits and explicit marks.

    ``marks`` maps a slice to ``"corrected"`` (use it although it is unchanged), ``"negative"``
    (no acetabulum: train it as an empty mask) or ``"excluded"`` (edited by accident: ignore).
    """

    n_slices: int
    detected: list[int] = field(default_factory=list)
    marks: dict[int, str] = field(default_factory=dict)

    def mark(self, k: int, kind: str | None) -> None:
        """Mark slice ``k`` as one of :data:`MARKS`, or remove its mark (``None``)."""
        if not 0 <= int(k) < self.n_slices:
            raise ValueError(f"slice {k} is outside the volume (0..{self.n_slices - 1})")
        if kind is None:
            self.marks.pop(int(k), None)
        elif kind in MARKS:
            self.marks[int(k)] = kind
        else:
            raise ValueError(f"unknown mark {kind!r}: use one of {', '.join(MARKS)} or None")

    @property
    def negatives(self) -> list[int]:
        return sorted(k for k, m in self.marks.items() if m == "negative")

    def slices(self) -> list[int]:
        """Slices that have reference labels (detected or marked, minus excluded), sorted."""
        use = set(self.detected) | {k for k, m in self.marks.items() if m != "excluded"}
        return sorted(use - {k for k, m in self.marks.items() if m == "excluded"})

    def status(self, k: int) -> str:
        """"negative", "corrected", "excluded" (marks), "edited" (detected) or ""."""
        return self.marks.get(int(k), "edited" if int(k) in set(self.detected) else "")

    def listed(self) -> list[int]:
        """Every slice worth listing: detected or marked (excluded ones included)."""
        return sorted(set(self.detected) | set(self.marks))

    def to_json(self) -> dict[str, Any]:
        return {"n_slices": self.n_slices, "detected": sorted(self.detected),
                "marks": {str(k): v for k, v in sorted(self.marks.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Corrections:
        return cls(int(data["n_slices"]), [int(k) for k in data.get("detected", [])],
                   {int(k): str(v) for k, v in data.get("marks", {}).items()})


# --------------------------------------------------------------------------- slice plans


@dataclass(frozen=True)
class SlicePlan:
    """Training and validation slices; ``unused`` are neighbours of validation slices left out."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    unused: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"{len(self.train)} train ({format_slices(self.train) or '-'}) · "
                f"{len(self.validation)} validation ({format_slices(self.validation) or '-'})"
                + (f" · {len(self.unused)} left out ({format_slices(self.unused)})"
                   if self.unused else ""))


def _clusters(slices: Sequence[int], gap: int) -> list[list[int]]:
    """Runs of sorted slices whose consecutive members are at most ``gap`` apart."""
    runs: list[list[int]] = []
    for k in sorted(slices):
        if runs and k - runs[-1][-1] <= gap:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix is spread out: middle, quartiles, eighths, ..."""
    order: list[int] = []
    denom = 2
    while len(order) < n and denom <= 4 * max(n, 1):
        for num in range(1, denom, 2):
            i = int(round(num / denom * (n - 1)))
            if i not in order:
                order.append(i)
        denom *= 2
    return order + [i for i in range(n) if i not in order]


def _auto_validation(slices: list[int], n_val: int, gap: int) -> list[int]:
    """Pick about ``n_val`` validation slices, preferring whole runs (no neighbour is lost),
    spread along z; a long run gives a block at its end (its next slice is left out)."""
    runs = _clusters(slices, gap)
    chosen: list[list[int]] = []
    need = n_val
    for i in _spread_order(len(runs)):
        if need <= 0:
            break
        if len(runs[i]) <= need and len(chosen) + 1 < len(runs):  # keep a run for training
            chosen.append(runs[i])
            need -= len(runs[i])
    taken = {k for run in chosen for k in run}
    for run in sorted((r for r in runs if r not in chosen), key=len, reverse=True):
        if need <= 0:
            break
        block = min(need, len(run) - 2)  # leave one neighbour out and at least one to train
        if block >= 1:
            taken.update(run[-block:])
            need -= block
    if not taken:  # only short runs (e.g. pairs): one whole run validates, the others train
        rest = [r for r in runs if r not in chosen]
        if len(rest) > 1:
            taken.update(min(rest, key=len))
    return sorted(taken)


def plan_slices(
    slices: Iterable[int],
    *,
    validation: Iterable[int] | None = None,
    train: Iterable[int] | None = None,
    fraction: float = 0.25,
    min_validation: int = 2,
    gap: int = 1,
) -> SlicePlan:
    """Split corrected ``slices`` into training and validation slices.

    Parameters
    ----------
    slices
        Slices with reference labels (``Corrections.slices()``).
    validation, train
        Explicit choices (subsets of ``slices``); None chooses automatically: about ``fraction``
        of the slices validate (none when fewer than 3 slices), spread along the volume, whole
        runs of adjacent slices preferred.
    gap
        A training slice must be more than ``gap`` slices away from every validation slice
        (1: never a direct neighbour). Slices that break this are left out (``unused``).
    """
    pool = sorted(set(int(k) for k in slices))
    known = set(pool)
    warnings: list[str] = []
    for name, chosen in (("validation", validation), ("training", train)):
        stray = sorted(set(chosen or ()) - known)
        if stray:
            raise ValueError(f"{name} slices {format_slices(stray)} have no corrected labels: "
                             "correct or mark them first, or choose among "
                             f"{format_slices(pool) or '(none yet)'}")
    if validation is None:
        n_val = 0 if len(pool) < 3 else max(1, int(round(fraction * len(pool))))
        val = _auto_validation(pool, n_val, gap) if n_val else []
    else:
        val = sorted(set(int(k) for k in validation))
    candidates = [k for k in (pool if train is None else sorted(set(train))) if k not in val]
    near = {k for k in candidates if any(abs(k - v) <= gap for v in val)}
    train_slices = [k for k in candidates if k not in near]
    if near and (train is not None or validation is not None):
        warnings.append(f"slices {format_slices(near)} are left out of training: they are direct "
                        "neighbours of validation slices (near-duplicates)")
    if not train_slices:
        warnings.append("no training slices: correct or mark slices first")
    if not val:
        warnings.append("no validation slices: training keeps the last weights, not the best, "
                        "and no dice is shown; correct at least 3 slices spread along the volume")
    elif len(val) < min_validation:
        warnings.append(f"only {len(val)} validation slice: its dice is noisy; correct more "
                        "slices spread along the volume")
    unused = sorted(near | (known - set(train_slices) - set(val))) if train is None else sorted(near)
    return SlicePlan(tuple(train_slices), tuple(val), tuple(unused), tuple(warnings))


@dataclass
class CorrectionState:
    """The Correct step's state, one per session, shared by every dock that shows the step."""

    corrections: Corrections = field(default_factory=lambda: Corrections(0))
    layer: Any = None  # the mask layer the reference belongs to
    reference: np.ndarray | None = None  # the prediction corrections are compared with
    reference_name: str = ""
    reference_saved: bool = False
    restored_from: Any = None  # the project whose saved corrections were brought back


def correction_state(session: Any) -> CorrectionState:
    """The Correct step's state of ``session`` (a ``session.Session``), made on first use."""
    return session.extras.setdefault("corrections", CorrectionState())
