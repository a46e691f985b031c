"""Correction history, the locked evaluation set and the gate a new model version must pass.

Kept in the project folder beside the versions (every write atomic: temporary file + rename)::

    <project>/history/history.json           records, review marks, locked set, metrics, gate log
    <project>/history/records/cNNNN.npz       one correction: the model's mask and boxes, the fix
    <project>/history/locked.npz              the locked set: its image slices (normalised as
                                              inference does) and frozen reference masks

* A **correction record** keeps, for one slice, the model's original output (mask + box rows
  ``slice, y1, x1, y2, x2, score``), the annotator's fix, the model version that produced the
  output, who and when, and how much had to change (dice / precision / recall of the prediction
  against the fix; both empty scores 1.0, as in ``src_model.metrics``).
* The **locked set** is a set of corrected slices frozen at one point. By default it is the
  held-out (validation) part of ``corrections.plan_slices`` of the corrections at that time, so no
  locked slice is a training slice or a direct neighbour of one. Afterwards fine-tuning (the
  Fine-tune widget and ``api.finetune(project=...)``) plans with :func:`locked_plan`: the locked
  slices and their neighbours are used neither to train nor to pick the best weights, so the
  gate's score on them is a true held-out test.
* Every version is scored on the locked set (per-slice mean dice / precision / recall, cached).
  The **gate**: a candidate becomes current only if ``dice(candidate) >= dice(current) -
  tolerance`` (default :data:`DEFAULT_TOLERANCE`); the user may override a rejection, and the
  override (who, when, why) is logged with the decision.

No napari or Qt; torch only inside :func:`evaluate_model`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import getpass
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corrections import SlicePlan, format_slices, plan_slices
from .locking import SharedJson, claim_numbered_file
from .project import Project

__all__ = ["DEFAULT_TOLERANCE", "CorrectionHistory", "GateDecision", "evaluate_model",
           "locked_plan", "locked_slices", "mask_scores", "route_new_version"]

HISTORY_FORMAT = "napari-roiseg-history/1"
DEFAULT_TOLERANCE = 0.02
REVIEW_STATES = ("reviewed", "corrected")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in containers without a passwd entry
        return "unknown"


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    from ..io.writers import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, precision and recall of one slice's ``pred`` against ``truth`` (foreground ``!= 0``;
    both empty: 1.0 each)."""
    from src_model.metrics import confusion_per_slice, scores_from_counts

    s = scores_from_counts(*confusion_per_slice(pred, truth))
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in s.items()}


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on ``candidate`` against ``current`` (dice on the locked set)."""

    candidate: str
    current: str | None
    candidate_dice: float
    current_dice: float | None
    candidate_precision: float
    current_precision: float | None
    tolerance: float
    passed: bool  # the rule alone
    accepted: bool  # what happened: passed, or overridden
    override: dict[str, str] | None = None  # who, when, why
    when: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.current_dice is None else self.candidate_dice - self.current_dice

    def describe(self) -> str:
        cur = (f"{self.current} {self.current_dice:.3f}" if self.current_dice is not None
               else "no current version")
        verdict = ("accepted" if self.passed else
                   "accepted by override" if self.accepted else "rejected")
        return (f"{self.candidate}: locked-set dice {self.candidate_dice:.3f} vs {cur} "
                f"(tolerance {self.tolerance:.3f}) — {verdict}")


class CorrectionHistory:
    """The correction history, review marks, locked set and gate log of a project folder."""

    def __init__(self, project: Project | str | os.PathLike) -> None:
        self.project = project if isinstance(project, Project) else Project(project)
        self.folder = self.project.folder / "history"
        self.records_dir = self.folder / "records"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._file = self.folder / "history.json"
        self._json = SharedJson(self._file, self.project.lock, self._new_state, None,
                                "move it away to start a new history")
        self._json.read()  # raises on an unreadable file

    @staticmethod
    def _new_state() -> dict[str, Any]:
        return {"format": HISTORY_FORMAT, "records": [], "review": {}, "locked": None,
                "version_metrics": {}, "gate": []}

    @property
    def state(self) -> dict[str, Any]:
        """``history.json`` as it is on disk now (read-only: change it with :meth:`_update`)."""
        return self._json.read()

    def _update(self, change: Any) -> Any:
        """Apply ``change(state)`` to ``history.json`` as it is on disk now and write it back
        (under the project folder's lock), so that no other object's changes are lost."""
        return self._json.update(change)

    # ---------------------------------------------------------------- corrections

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every correction record (plain data, oldest first)."""
        return copy.deepcopy(self.state["records"])

    def record(self, k: int, prediction: np.ndarray, correction: np.ndarray,
               boxes: np.ndarray | None = None, *, version: str | None = None,
               who: str | None = None) -> dict[str, Any]:
        """Store slice ``k``'s model output (``prediction`` (H, W), ``boxes`` rows (K, 6)) and the
        annotator's ``correction`` (H, W); returns the record (with its dice, precision, recall).
        ``version`` defaults to the project's current version."""
        pred = (np.asarray(prediction) != 0).astype(np.uint8)
        fix = (np.asarray(correction) != 0).astype(np.uint8)
        if pred.shape != fix.shape or pred.ndim != 2:
            raise ValueError(f"prediction {pred.shape} and correction {fix.shape} must be one "
                             "slice (H, W) each, of the same shape")
        rows = np.zeros((0, 6), np.float32) if boxes is None else np.asarray(boxes, np.float32)
        with self.project.lock:
            rid = self._reserve_record_id()
        try:
            _save_npz_atomic(self.records_dir / f"{rid}.npz", prediction=pred, correction=fix,
                             boxes=rows.reshape(-1, 6))
        except BaseException:
            (self.records_dir / f"{rid}.npz").unlink(missing_ok=True)
            raise
        entry = {"id": rid, "slice": int(k), "version": version or self.project.current_version,
                 "who": who or _user(), "when": _now(), "prediction_area": int(pred.sum()),
                 "correction_area": int(fix.sum()), "n_boxes": len(rows),
                 **mask_scores(pred, fix)}

        def add(state: dict[str, Any]) -> None:
            state["records"].append(entry)
            state["review"][str(int(k))] = {"state": "corrected", "when": entry["when"],
                                            "version": entry["version"]}

        self._update(add)
        return entry

    def _reserve_record_id(self) -> str:
        """The next free record id (one more than the largest in the history or on disk), its
        file claimed (``project.claim_numbered_file``) so that no other writer takes it."""
        return claim_numbered_file(self.records_dir, "c", ".npz", 4,
                                   [r.get("id", "") for r in self.state["records"]], 1)

    def load_record(self, rid: str) -> dict[str, np.ndarray]:
        """``prediction``, ``correction`` (H, W) uint8 and ``boxes`` (K, 6) of record ``rid``."""
        with np.load(self.records_dir / f"{rid}.npz") as data:
            return {name: data[name] for name in data.files}

    def latest_by_slice(self) -> dict[int, dict[str, Any]]:
        """The newest record of each corrected slice."""
        return {int(r["slice"]): dict(r) for r in self.state["records"]}

    # ---------------------------------------------------------------- review marks

    @property
    def marks(self) -> dict[int, str]:
        """Slice -> "reviewed" (looked at, fine) or "corrected"."""
        return {int(k): v["state"] for k, v in self.state["review"].items()}

    def mark(self, k: int, state: str | None) -> None:
        """Mark slice ``k`` as one of :data:`REVIEW_STATES` (None removes the mark)."""
        if state is not None and state not in REVIEW_STATES:
            raise ValueError(f"unknown review mark {state!r}: use one of {REVIEW_STATES} or None")
        entry = (None if state is None else
                 {"state": state, "when": _now(), "version": self.project.current_version})

        def change(saved: dict[str, Any]) -> None:
            if entry is None:
                saved["review"].pop(str(int(k)), None)
            else:
                saved["review"][str(int(k))] = entry

        self._update(change)

    # ---------------------------------------------------------------- locked set

    @property
    def locked(self) -> list[int]:
        """The locked slices (empty until :meth:`lock`)."""
        return list((self.state.get("locked") or {}).get("slices", []))

    def lock(self, image: np.ndarray, labels: Mapping[int, np.ndarray] | np.ndarray,
             slices: Iterable[int] | None = None, *, corrected: Iterable[int] = (),
             who: str | None = None) -> list[int]:
        """Freeze the locked set: ``slices``, or by default the held-out slices of
        ``plan_slices(corrected)``. ``image`` is the whole volume (S, H, W) (normalised here
        as inference does); ``labels`` the reference masks (a volume or slice -> mask)."""
        from src_model.preprocess import intensity_range, normalize_slices

        if slices is None:
            slices = plan_slices(corrected).validation
            if not slices:
                raise ValueError("no slices to lock: correct at least 3 slices spread along the "
                                 "volume (the locked set is the held-out part of them), or "
                                 "name the slices to lock")
        index = sorted(set(int(k) for k in slices))
        volume = np.asarray(image)
        images = normalize_slices(np.asarray(volume[index]), intensity_range(volume))
        truth = np.stack([(np.asarray(labels[k]) != 0).astype(np.uint8) for k in index])
        locked = {"slices": index, "when": _now(), "who": who or _user(),
                  "id": f"{_now()}:{format_slices(index)}:{uuid.uuid4().hex[:8]}"}

        def change(state: dict[str, Any]) -> None:
            state["locked"] = locked
            state["version_metrics"] = {}  # scores on an older locked set no longer compare

        with self.project.lock:  # the arrays and the JSON change together
            _save_npz_atomic(self.folder / "locked.npz", slices=np.asarray(index), images=images,
                             truth=truth)
            self._update(change)
        return index

    def locked_data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images float32 (n, H, W) in [0, 1], truth uint8 (n, H, W))`` of the locked set."""
        if not self.locked:
            raise ValueError("no locked set yet: lock one first (Review widget: 'Lock held-out "
                             "set', or CorrectionHistory.lock)")
        with self.project.lock, np.load(self.folder / "locked.npz") as data:
            return data["images"], data["truth"]

    # ---------------------------------------------------------------- versions and gate

    def version_metrics(self, name: str, model: Any = None, device: str = "auto") -> dict[str, Any]:
        """Locked-set scores of version ``name`` (computed once, then cached): ``dice``,
        ``precision``, ``recall`` (pooled), ``per_slice_dice`` and ``n``."""
        cached = self.state["version_metrics"].get(name)
        if cached is not None:
            return copy.deepcopy(cached)
        with self.project.lock:  # the locked set these scores belong to
            locked_id = (self.state.get("locked") or {}).get("id")
            images, truth = self.locked_data()
        net = model if model is not None else self.project.load_version(name)
        metrics = evaluate_model(net, images, truth, device=device)
        metrics["when"] = _now()

        def store(state: dict[str, Any]) -> None:
            if (state.get("locked") or {}).get("id") == locked_id:  # not re-locked meanwhile
                state["version_metrics"][name] = metrics

        self._update(store)
        return metrics

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """Every gate decision (plain data, oldest first)."""
        return copy.deepcopy(self.state["gate"])

    def gate(self, candidate: str, current: str | None = None, *, candidate_model: Any = None,
             current_model: Any = None, tolerance: float = DEFAULT_TOLERANCE,
             override: str | None = None, who: str | None = None,
             device: str = "auto") -> GateDecision:
        """Decide whether ``candidate`` replaces ``current`` (default: the project's current
        version, or the candidate's parent when the candidate is current already), log the
        decision, and make the winner current.

        ``override``: the reason for accepting a candidate the rule rejects (required text; it
        is logged with ``who`` and the time). Models may be passed to avoid reloading them.
        """
        versions = self.project.versions
        if candidate not in versions:
            raise ValueError(f"version {candidate!r} is not in the project; it has "
                             f"{', '.join(versions) or 'no versions'}")
        if current is None:
            current = self.project.current_version
            if current == candidate:
                current = versions[candidate].get("parent")
        cand = self.version_metrics(candidate, candidate_model, device)
        cur = self.version_metrics(current, current_model, device) if current else None
        passed = cur is None or cand["dice"] >= cur["dice"] - tolerance
        note = None
        if not passed and override is not None:
            if not override.strip():
                raise ValueError("an override needs a reason: say why this version should be "
                                 "used although its locked-set dice is lower")
            note = {"who": who or _user(), "when": _now(), "why": override.strip()}
        decision = GateDecision(
            candidate, current, cand["dice"], cur["dice"] if cur else None, cand["precision"],
            cur["precision"] if cur else None, float(tolerance), bool(passed),
            bool(passed or note is not None), note, _now())
        winner = candidate if decision.accepted else current
        with self.project.lock:
            self._update(lambda state: state["gate"].append(asdict(decision)))
            now = self.project.current_version
            # Another writer may have made a third version current while the models were being
            # scored: leave that choice alone (the decision is logged either way).
            if winner is not None and winner != now and now in (candidate, current, None):
                self.project.set_current(winner)
        return decision


def evaluate_model(model: Any, images: np.ndarray, truth: np.ndarray,
                   device: str = "auto") -> dict[str, Any]:
    """Pooled dice / precision / recall (all pixels of the set together, so empty slices cannot
    win it) of ``model`` on normalised ``images`` (n, H, W) against ``truth``; plus
    ``per_slice_dice`` and ``n``. Training picks its weights by the same pooled dice."""
    from src_model.metrics import evaluate_masks
    from src_model.predict import predict

    from ..segment import default_batch_size

    results = predict(model, images, batch_size=default_batch_size(device), device=device,
                      normalize=False)
    pred = np.stack([r["mask"] for r in results])
    m = evaluate_masks(pred, truth)
    pooled = m["pooled"]
    return {"dice": float(pooled["dice"]), "precision": float(pooled["precision"]),
            "recall": float(pooled["recall"]), "n": len(images),
            "per_slice_dice": [float(v) for v in m["per_slice"]["dice"]]}


def locked_slices(project: Project | None) -> list[int]:
    """The project's locked slices ([] without a project or a locked set); cheap (reads JSON)."""
    if project is None:
        return []
    path = project.folder / "history" / "history.json"
    if not path.exists():
        return []
    try:
        return list((json.loads(path.read_text(encoding="utf-8")).get("locked") or {})
                    .get("slices", []))
    except (OSError, ValueError):
        return []


def locked_plan(slices: Iterable[int], locked: Iterable[int], *,
                train: Iterable[int] | None = None, validation: Iterable[int] | None = None,
                gap: int = 1) -> SlicePlan:
    """The slice plan of a project with a locked set.

    The locked slices are the gate's held-out test, so they and their neighbours (within
    ``gap``) are kept out of training *and* out of the validation that picks the fine-tuned
    weights: otherwise the gate would score the weights chosen for doing well on those very
    slices. The other corrected ``slices`` are planned as usual (:func:`plan_slices`;
    ``validation`` None chooses about a quarter of them, ``[]`` none; ``train`` / ``validation``
    slices that are locked or next to a locked slice are dropped with a warning). With no
    validation slice left, training keeps the last weights, and a warning says so.
    """
    locked = sorted(set(int(k) for k in locked))
    if not locked:
        return plan_slices(slices, train=train, validation=validation, gap=gap)
    near = {k + d for k in locked for d in range(-gap, gap + 1)}
    corrected = {int(k) for k in slices}
    warnings: list[str] = []

    def strip(chosen: Iterable[int] | None, what: str) -> list[int] | None:
        if chosen is None:
            return None
        chosen = sorted(set(int(k) for k in chosen))
        dropped = [k for k in chosen if k in near]
        if dropped:
            warnings.append(f"{what} slices {format_slices(dropped)} are left out: they are "
                            "locked (the gate's held-out test) or next to a locked slice")
        return [k for k in chosen if k not in near]

    plan = plan_slices(sorted(corrected - near), train=strip(train, "training"),
                       validation=strip(validation, "validation"), gap=gap)
    for warning in plan.warnings:
        if warning.startswith("no validation slices"):
            warning = ("no validation slices outside the locked set: the locked slices are kept "
                       "for the gate, so training keeps the last weights (not the best) and no "
                       "validation dice is shown; correct more slices away from the locked ones "
                       "to validate on")
        warnings.append(warning)
    unused = sorted(set(plan.unused) | (corrected & near))
    return SlicePlan(plan.train, plan.validation, tuple(unused), tuple(warnings))


def route_new_version(project: Project, name: str, model: Any = None, *,
                      current_model: Any = None, tolerance: float = DEFAULT_TOLERANCE,
                      device: str = "auto") -> GateDecision | None:
    """Send a just-saved version ``name`` (made current by ``Project.add_version``) through the
    gate against its parent. Without a locked set nothing changes and None is returned; a
    rejected version stays in the project but its parent becomes current again."""
    if not locked_slices(project):
        return None
    parent = project.versions.get(name, {}).get("parent")
    history = CorrectionHistory(project)
    return history.gate(name, parent, candidate_model=model, current_model=current_model,
                        tolerance=tolerance, device=device)
