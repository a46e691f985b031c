"""The Review step's gate: lock a held-out set, gate a candidate version against the current
one, compare both on the slice shown, and export the report.

Locking, gating and comparing run the model (or normalise the whole volume) and the report
draws figures: each runs in a napari worker, with an activity bar, under the run lock, never
on the GUI thread (``sync=True`` runs it here, for tests and scripts). What they read from
layers is copied on the GUI thread first; what they show is drawn there when they return. A
version the gate makes current is the session's model from then on, in every dock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)
from napari.utils.notifications import show_error, show_info

from .. import busy
from ..project.corrections import detect_corrected, plan_slices
from ..project.history import DEFAULT_TOLERANCE, GateDecision
from ..layers import as_slices
from ..session import PROJECT, Session
from .compare_layers import CompareLayers
from .review_panel import ReviewPanel, session_history


def run_job(session: Session, what: str, job: Callable[[], Any], done: Callable[[Any], Any],
            fallback: Any, sync: bool, lock: bool = True) -> Any:
    """Run ``job()`` under the session's run lock (unless not ``lock``: no model runs), in a
    napari worker with an activity bar (returned) or here when ``sync`` (returns
    ``done(result)``); ``fallback`` when it cannot start or fails, after saying why."""
    token = session.try_run(what) if lock else None
    if lock and token is None:
        show_error(busy.refusal(what))
        return fallback
    if sync:
        try:
            result = job()
        except (OSError, ValueError) as exc:
            show_error(str(exc))
            return fallback
        finally:
            session.end_run(token)
        return done(result)
    from napari.qt.threading import create_worker
    from napari.utils import progress

    bar = progress(total=0, desc=what[:1].upper() + what[1:])  # indeterminate: no steps known

    def finish() -> None:
        bar.close()
        session.end_run(token)

    return create_worker(job, _ignore_errors=True, _connect={
        "returned": done, "errored": lambda exc: show_error(f"{what} failed: {exc}"),
        "finished": finish})


class GatePanel(Container):
    """Lock, candidate, tolerance, Gate, Compare, override, Export report."""

    def __init__(self, session: Session, review: ReviewPanel) -> None:
        super().__init__(labels=True)
        self.session = session
        self.review = review
        self.decision: GateDecision | None = None
        self.compare_view = CompareLayers(session.viewer)
        self.worker: Any = None
        self._lock_button = PushButton(text="Lock held-out set", tooltip=(
            "freeze the held-out corrected slices (their saved corrections) as the gate's test "
            "set: every version is scored on them; fine-tuning neither trains on them nor picks "
            "its weights on them"))
        self._candidate = ComboBox(label="candidate", choices=self._version_choices)
        self._tolerance = FloatSpinBox(label="tolerance", min=0.0, max=1.0, step=0.005,
                                       value=DEFAULT_TOLERANCE)
        self._gate_button = PushButton(text="Gate candidate")
        self._compare_button = PushButton(text="Compare on this slice",
                                          tooltip="candidate and current masks and boxes as layers")
        self._reason = LineEdit(label="override why")
        self._override_button = PushButton(text="Override", enabled=False)
        self._gate_info = Label(label="gate")
        self._gate_info.native.setWordWrap(True)
        self._report_dir = FileEdit(label="report to", mode="d")
        self._report_button = PushButton(text="Export report")
        self.extend([self._lock_button, self._candidate, self._tolerance, self._gate_button,
                     self._compare_button, self._reason, self._override_button, self._gate_info,
                     self._report_dir, self._report_button])
        self.margins = (0, 0, 0, 0)
        self._lock_button.changed.connect(lambda: self._start(self.lock))
        self._gate_button.changed.connect(lambda: self._start(self.gate))
        self._override_button.changed.connect(
            lambda: self._start(lambda: self.gate(override=self._reason.value)))
        self._compare_button.changed.connect(lambda: self._start(self.compare))
        self._report_button.changed.connect(lambda: self._start(self.export_report))

    def hook(self, hooks: Any) -> None:
        hooks.connect(self.session.events.project, "follow_session", self)
        hooks.connect(self.session.events.model, "follow_session", self)

    def _start(self, action: Callable[[], Any]) -> None:
        result = action()
        self.worker = result if hasattr(result, "start") else None

    def _version_choices(self, _w: Any = None) -> list[str]:
        project = self.session.project
        return list(project.versions) if project is not None else []

    def follow_session(self, *_args: Any) -> None:
        """New versions are candidates; the newest is offered first."""
        with self._candidate.changed.blocked():
            self._candidate.reset_choices()
            if self._candidate.choices:
                self._candidate.value = self._candidate.choices[-1]

    # ------------------------------------------------------------------ locked set

    def reference_masks(self, slices: Any) -> dict[int, np.ndarray]:
        """The annotator's mask of each of ``slices``: the saved correction when there is
        one, else the mask layer's slice when it was corrected there (differs from its
        prediction), else the fix kept in the correction history, else the mask's slice."""
        history = session_history(self.session)
        data = as_slices(self.session.mask_layer.data)
        _, planes, _, saved = self.session.project.load_corrections()
        if tuple(saved.get("shape") or ()) != data.shape:
            planes = {}  # corrections of another volume
        prediction = self.review.prediction()
        edited = (set(detect_corrected(data, prediction))
                  if prediction is not None and prediction.shape == data.shape else set())
        records = history.latest_by_slice()
        out: dict[int, np.ndarray] = {}
        for k in sorted({int(v) for v in slices}):
            if k in planes and planes[k].shape == data.shape[1:]:
                out[k] = planes[k]
            elif k in edited or k not in records:
                out[k] = np.array(data[k], copy=True)
            else:
                out[k] = history.load_record(records[k]["id"])["correction"]
        return out

    def lock(self, sync: bool = False) -> Any:
        """Freeze the held-out part of the corrected slices as the locked set (reference
        masks: :meth:`reference_masks`). Returns the locked slices when ``sync``."""
        history, layer = session_history(self.session), self.session.mask_layer
        image = self.session.image_layer
        if history is None or layer is None or image is None:
            return []
        volume, data = as_slices(image.data), as_slices(layer.data)
        if volume.shape != data.shape:
            show_error(f"'{layer.name}' {data.shape} is not a mask of '{image.name}' "
                       f"{volume.shape}: choose the image's mask layer")
            return []
        if busy.running():
            show_error(busy.refusal("locking the held-out set"))
            return []
        corrections, _, _, saved = self.session.project.load_corrections()
        if tuple(saved.get("shape") or ()) != data.shape:
            corrections = None
        corrected = (set(corrections.slices()) if corrections is not None else set()) | set(
            history.latest_by_slice())
        held_out = plan_slices(corrected).validation
        references = self.reference_masks(held_out)  # copies, read here on the GUI thread

        def job() -> list[int]:
            return history.lock(volume, references, held_out or None, corrected=corrected)

        def done(locked: list[int]) -> list[int]:
            self._gate_info.value = (f"locked slices {', '.join(map(str, locked))}: every "
                                     "version is scored on them; fine-tuning neither trains on "
                                     "them nor picks its weights on them")
            return locked

        return run_job(self.session, "locking the held-out set", job, done, [], sync)

    # ------------------------------------------------------------------ gate and compare

    def gate(self, override: str | None = None, sync: bool = False) -> Any:
        """Gate the chosen candidate against the current version (see ``history.gate``);
        returns the decision when ``sync``."""
        history, name = session_history(self.session), self._candidate.value
        if history is None or not name:
            show_error("No candidate version: fine-tune first (the Fine-tune step).")
            return None
        tolerance, device = float(self._tolerance.value), self.session.device

        session = self.session

        def job() -> GateDecision:
            if session.uses_process and not sync:
                return session.process_worker().call(
                    "gate", project=str(history.project.folder), candidate=name,
                    tolerance=tolerance, override=override or None, device=device)
            from ..api import prepare_torch_import

            prepare_torch_import()
            return history.gate(name, tolerance=tolerance, override=override or None,
                                device=device)

        def done(decision: GateDecision) -> GateDecision:
            self.decision = decision
            self._gate_info.value = decision.describe() + (
                f" (why: {decision.override['why']})" if decision.override else "")
            self._override_button.enabled = not decision.accepted
            if decision.accepted:  # the winner is the model of the next runs, everywhere
                self.session.choose_model(PROJECT)
            return decision

        return run_job(self.session, f"gating {name}", job, done, None, sync)

    def compare(self, sync: bool = False) -> Any:
        """Candidate and current version's masks (a difference map: both / candidate only /
        current only) and boxes on the slice shown; returns what is shown when ``sync``."""
        image, history, name = self.session.image_layer, session_history(self.session), \
            self._candidate.value
        if image is None or history is None or not name:
            return {}
        k = self.review.current_slice()
        volume = as_slices(image.data)
        plane, project = np.array(volume[[k]], copy=True), self.session.project
        current = project.current_version

        versions = [(role, v) for role, v in (("candidate", name), ("current", current)) if v]
        worker = self.session.process_worker() if self.session.uses_process and not sync else None

        def job() -> dict[str, Any]:
            from src_model.preprocess import intensity_range

            kwargs = {"project": str(project.folder), "plane": plane, "k": k,
                      "value_range": intensity_range(volume), "versions": versions}
            if worker is not None:
                return worker.call("compare", **kwargs)
            from ..worker.jobs import compare
            from ..worker.child import JobContext

            return compare(JobContext(None), **kwargs)

        def show(out: dict[str, Any]) -> dict[str, Any]:
            shown = self.compare_view.show(image, k, out, sync)
            self._gate_info.value = f"slice {k}: " + " | ".join(
                f"{role} {v['version']}: mask {v['area']} px, {v['boxes']} boxes"
                for role, v in shown.items())
            return shown

        return run_job(self.session, f"comparing {name}", job,
                       show, {}, sync)

    # ------------------------------------------------------------------ report

    def export_report(self, folder: Any = None, sync: bool = False) -> Any:
        """Write review.html and the CSV tables (see :mod:`napari_roiseg.project.report`); returns
        the paths when ``sync``."""
        from ..project.report import export_report

        history = session_history(self.session)
        if history is None:
            return None
        folder = folder or self._report_dir.value
        if not folder or str(folder) in ("", "."):
            folder = self.session.project.folder / "report"
        image = self.session.image_layer
        name = image.name if image is not None else "volume"
        scores, current = self.review.scores, self.review.current_slice()

        def job() -> dict[str, Any]:
            return export_report(folder, scores=scores, history=history, name=name,
                                 current=current)

        def done(paths: dict[str, Any]) -> dict[str, Any]:
            show_info(f"Report written to {paths['html']}")
            return paths

        return run_job(self.session, "writing the report", job, done, None, sync, lock=False)
