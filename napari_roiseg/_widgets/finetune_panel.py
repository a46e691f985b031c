"""The Fine-tune step: train the session's current version on the corrected slices, with a
live plot (the readout and re-segmentation after it: :mod:`.readout_panel`).

Training starts from ``session.training_start()``: the project's current version as it is on
disk now (the gate may just have changed it), and that very version is recorded as the parent.
A new version that passes the gate (or every new version, without a locked set) becomes the
session's model at once, for every dock.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning

from .. import busy
from ..finetune import (DEFAULT_LR, DEFAULT_STEPS, FinetuneConfig, FinetuneResult, TrainingHistory,
                        drain, finetune_and_gate)
from ..layers import as_slices, image_array, layer_spacing_mm
from ..segment import check_volume
from ..session import Session
from ..io.volumes import check_finite
from ..worker import worker_safe
from ..worker.remote import remote_finetune
from .corrections_panel import CorrectionsPanel
from .hooks import Panel, ViewerHooks
from .plots import HistoryCanvas
from .project_panel import ensure_project

LEARNING_RATES = [("1e-5", 1e-5), ("3e-5", 3e-5), ("1e-4", 1e-4), ("3e-4", 3e-4), ("1e-3", 1e-3)]


class FinetunePanel(Panel):
    """Length, learning rate, batch size, Start / Stop, progress and the live plot."""

    def __init__(self, session: Session, corrections: CorrectionsPanel) -> None:
        super().__init__()
        self.session = session
        self.corrections = corrections
        self.history = TrainingHistory()
        self.worker: Any = None
        self.last_result: FinetuneResult | None = None
        self._stop = threading.Event()
        self._token: busy.RunToken | None = None
        self._amount = SpinBox(label="length", min=1, max=100000, value=DEFAULT_STEPS)
        self._unit = ComboBox(label="unit", choices=["steps", "epochs"], value="steps")
        self._lr = ComboBox(label="learning rate", choices=LEARNING_RATES, value=DEFAULT_LR)
        self._batch = SpinBox(label="batch size", min=1, max=32, value=4,
                              tooltip="training slices per step")
        self._start_button = PushButton(text="Start")
        self._stop_button = PushButton(
            text="Stop", enabled=False,
            tooltip="stop after this step; the best weights so far are kept")
        run = Container(layout="horizontal", labels=False,
                        widgets=[self._start_button, self._stop_button])
        run.margins = (0, 0, 0, 0)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(label="status")
        self.canvas = HistoryCanvas(height_px=200)
        self._status.native.setWordWrap(True)
        self._form = Container(widgets=[self._amount, self._unit, self._lr, self._batch, run,
                                        self._progress, self._status])
        self._form.margins = (0, 0, 0, 0)
        self.add(self._form, self.canvas)
        self._start_button.changed.connect(lambda: self.start())
        self._stop_button.changed.connect(self.stop)
        self.running_listeners: list[Any] = []  # told when a run starts and ends

    def hook(self, hooks: ViewerHooks) -> None:
        """Nothing of the viewer: the panel reacts to its own buttons only."""

    # ------------------------------------------------------------------ training

    def _problem(self) -> str | None:
        """Why a fine-tune cannot start with these layers, or None."""
        image, labels = self.session.image_layer, self.corrections.labels_layer
        if image is None or labels is None:
            return "Choose the image and the mask layer with your corrections first."
        try:
            check_finite(check_volume(image_array(image)[0]), label=f"'{image.name}'")
        except (TypeError, ValueError) as exc:
            return f"Cannot fine-tune on '{image.name}': {exc}"
        return self.corrections.shape_problem()

    def start(self, sync: bool = False) -> Any:
        """Fine-tune on the planned slices in a napari worker (returned), or here if ``sync``."""
        if self.worker is not None:
            show_info("Fine-tuning is already running.")
            return None
        problem = self._problem()
        if problem:
            show_error(problem)
            return None
        if busy.running():
            show_error(busy.refusal("fine-tuning"))
            return None
        self.corrections.refresh_corrections(save=False)
        plan = self.corrections.plan()
        if plan is None or not plan.train:
            show_error("Nothing to train on: correct slices of the labels (or mark them with "
                       "'Corrected' / 'Negative') first." if plan is not None else
                       f"Check the slice lists: {self.corrections._plan_info.value}")
            return None
        for warning in plan.warnings:
            show_warning(warning)
        if ensure_project(self.session) is None:
            return None
        try:  # the model process loads the model itself: here only what it is
            net, parent = self.session.training_start(load=not self._remote(sync))
        except (OSError, ValueError, TypeError) as exc:
            show_error(f"Could not load the model: {exc}")
            return None
        self._token = self.session.try_run("fine-tuning")
        if self._token is None:
            show_error(busy.refusal("fine-tuning"))
            return None
        try:
            return self._start_training(plan, net, parent, sync)
        except Exception as exc:  # GUI boundary: it never started, so let go of the run lock
            self._on_finished()
            show_error(f"Could not start fine-tuning: {exc}")
            return None

    def _start_training(self, plan: Any, net: Any, parent: str, sync: bool) -> Any:
        self.corrections.save_corrections()
        config = FinetuneConfig(
            steps=int(self._amount.value), lr=float(self._lr.value),
            batch_size=int(self._batch.value),
            epochs=float(self._amount.value) if self._unit.value == "epochs" else None)
        total = config.total_steps(len(plan.train))
        self.history = TrainingHistory(total_steps=total)
        self.canvas.set_history(self.history, f"fine-tuning {parent} on {len(plan.train)} slices")
        self._progress.max, self._progress.value = total, 0
        self._stop.clear()
        self.set_running(True)
        self._status.value = "starting…"
        image, labels = self.session.image_layer, self.corrections.labels_layer
        args = (as_slices(image.data), np.array(as_slices(labels.data), copy=True), plan.train,
                plan.validation, net, config)
        kwargs = {"negatives": self.corrections.corrections.negatives,
                  "should_stop": self._stop.is_set, "project": self.session.project,
                  "parent": parent, "spacing": layer_spacing_mm(image)}
        if sync:
            try:
                self._on_result(drain(finetune_and_gate(args, kwargs), self._on_record))
            except Exception as exc:  # GUI boundary
                self._on_error(exc)
            self._on_finished()
            return None
        from napari.qt.threading import create_worker

        job: Any = finetune_and_gate
        if self._remote(sync):
            job, args = remote_finetune, (self.session, *args[:-1])
            kwargs = {"config": config, "negatives": kwargs["negatives"], "parent": parent,
                      "spacing": kwargs["spacing"]}
        else:
            args = (args, kwargs)
            kwargs = {}
        self.worker = create_worker(
            worker_safe(job), *args, **kwargs, _ignore_errors=True,
            _connect={"yielded": self._on_record, "returned": self._on_result,
                      "errored": self._on_error, "finished": self._on_finished})
        return self.worker

    def stop(self, _value: Any = None) -> None:
        """Stop after the step in progress; the best weights so far become the new version."""
        if self.worker is not None:
            self._stop.set()
            if self.session.uses_process:
                self.session.process_worker().cancel(kill_after_s=None)  # keeps the best weights
            self._status.value = "stopping after this step…"

    def _remote(self, sync: bool) -> bool:
        return self.session.uses_process and not sync

    def _on_record(self, record: Any) -> None:
        self.history.add(record)
        self._progress.value = min(record.step, self._progress.max)
        text = f"step {record.step}/{record.total_steps}"
        if record.state == "running" and 0 < record.step < record.total_steps and record.seconds:
            left = record.seconds / record.step * (record.total_steps - record.step)
            text += f" · about {int(left // 60)}:{int(left % 60):02d} left"
        if record.message and record.state == "running":  # e.g. a lowered batch size
            show_warning(record.message)
        if record.losses:
            text += f" · loss {sum(record.losses.values()):.3f}"
        if self.history.dice:
            text += (f" · val dice {self.history.dice[-1]:.3f} precision "
                     f"{self.history.precision[-1]:.3f}")
        self._status.value = text
        self.canvas.schedule()

    def _on_result(self, outcome: tuple[FinetuneResult, Any, str | None]) -> None:
        result, decision, problem = outcome
        self.last_result = result
        text = f"{result.state} after {result.steps_done} steps ({result.seconds:.0f} s)"
        if result.before and result.after:
            b, a = result.before["pooled"], result.after["pooled"]  # what picks the weights
            text += (f"; validation dice {b['dice']:.3f} → {a['dice']:.3f}, precision "
                     f"{b['precision']:.3f} → {a['precision']:.3f}")
        if problem:
            show_error(problem)
        held_back = decision is not None and not decision.accepted
        if held_back:
            text += (f"; saved as {result.version} but held back: {decision.describe()} "
                     "(the Review step can override)")
        elif result.version:
            text += f"; saved as {result.version}, used by the next segmentation"
        else:
            text += "; no new version" + (f" ({result.message})" if result.message else "")
        if result.version:
            self.session.version_added(result.version, result.model, current=not held_back)
        self._status.value = text

    def _on_error(self, exc: BaseException) -> None:
        self._status.value = f"failed: {exc}"
        show_error(f"Fine-tuning failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.session.end_run(self._token)
        self._token = None
        self.set_running(False)
        self.canvas.redraw()

    def set_running(self, running: bool) -> None:
        self._start_button.enabled = not running
        self._stop_button.enabled = running
        self.corrections.set_running(running)
        for callback in self.running_listeners:
            callback(running)
