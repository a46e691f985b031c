"""The Correct step: which slices of the session's mask the annotator corrected, their marks,
and the training / validation split the next fine-tune uses.

The prediction the mask is compared with comes from, in order: the layer's
``metadata[PREDICTION_KEY]`` (layers made by a run carry it), the project's saved prediction
when it fits, or else the layer's contents when it is first chosen. Corrections are saved to
the project as they are made (a crash never loses a finished stroke).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, LineEdit, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..finetune import check_labels_shape
from ..layers import PREDICTION_KEY, as_slices, transform_kwargs
from ..project.corrections import (
    Corrections,
    SlicePlan,
    correction_state,
    detect_corrected,
    parse_slices,
    plan_slices,
)
from ..project.history import locked_plan, locked_slices
from ..session import Session
from .hooks import Panel, ViewerHooks
from .pickers import show_slice, shown_slice
from .project_panel import ensure_project


class CorrectionsPanel(Panel):
    """Corrected-slice list (click: go there), mark buttons, slice plan."""

    DETECT_DELAY_MS = 400  # re-detect corrections once painting pauses this long

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.state = correction_state(session)
        self._watched: Labels | None = None
        self.listeners: list[Any] = []  # called after every refresh of the corrections
        self._list = QListWidget()
        self._list.setMaximumHeight(120)
        self._list.setToolTip("slices whose labels differ from the model's prediction, and "
                              "marked slices; click one to go there")
        self._list.itemClicked.connect(lambda item: self.go_to(item.data(Qt.ItemDataRole.UserRole)))
        self._mark_buttons = {
            kind: PushButton(text=text, tooltip=tip) for kind, text, tip in (
                ("corrected", "Corrected", "use the slice shown as it is"),
                ("negative", "Negative", "no acetabulum on the slice shown (clears it)"),
                ("excluded", "Exclude", "do not use the slice shown"),
                (None, "Unmark", "remove the mark of the slice shown"))}
        marks = Container(layout="horizontal", labels=False,
                          widgets=list(self._mark_buttons.values()))
        marks.margins = (0, 0, 0, 0)
        self._train_text = LineEdit(label="train slices", value="auto",
                                    tooltip="auto, or slices such as 12, 40-45")
        self._val_text = LineEdit(label="validation slices", value="auto",
                                  tooltip="auto (spread out, never next to a training slice), "
                                  "none, or slices such as 30, 52")
        self._plan_info = Label(label="plan")
        self._plan_info.native.setWordWrap(True)
        self._form = Container(widgets=[self._train_text, self._val_text, self._plan_info])
        self._form.margins = (0, 0, 0, 0)
        self.add(self._list, marks, self._form)
        for kind, button in self._mark_buttons.items():
            button.changed.connect(lambda _v=None, kind=kind: self.mark_current(kind))
        self._train_text.changed.connect(self._show_plan)
        self._val_text.changed.connect(self._show_plan)
        self._detect_timer = QTimer(self)
        self._detect_timer.setSingleShot(True)
        self._detect_timer.setInterval(self.DETECT_DELAY_MS)
        self._detect_timer.timeout.connect(self.refresh_corrections)

    # the session's (every dock shows the same): corrected and marked slices, the prediction
    corrections = property(lambda self: self.state.corrections)
    reference = property(lambda self: self.state.reference)

    def hook(self, hooks: ViewerHooks) -> None:
        self._hooks = hooks
        hooks.connect(self.session.events.layers, "follow_session", self)
        hooks.connect(self.session.events.project, "restore", self)
        self.follow_session()
        self.restore()

    def unhook(self) -> None:
        """Stop watching the mask layer (the dock closes)."""
        self._watch(None)

    # ------------------------------------------------------------------ the mask layer

    @property
    def labels_layer(self) -> Labels | None:
        return self.session.mask_layer

    def follow_session(self) -> None:
        """The session's mask changed (chosen, or made by a run): compare it from now on."""
        if self.session.mask_layer is not self._watched:
            self._on_labels_changed(self.session.mask_layer)

    def retake_reference(self) -> None:
        """Take the mask's reference again (its metadata may carry a new prediction)."""
        self._watched = self.state.layer = None
        self.follow_session()

    def _watch(self, layer: Labels | None) -> None:
        old = self._watched
        if old is not None:
            for ev in (old.events.paint, old.events.set_data, old.events.labels_update):
                ev.disconnect(self._on_labels_edited)
        self._watched = layer
        if layer is not None:
            for ev in (layer.events.paint, layer.events.set_data, layer.events.labels_update):
                ev.connect(self._on_labels_edited)

    def _on_labels_changed(self, layer: Labels | None) -> None:
        self._watch(layer)
        if layer is not None and layer is self.state.layer and self.state.reference is not None:
            self.refresh_corrections(save=False)  # another dock took its reference already
            return
        self.state.layer = layer
        if layer is None:
            self.state.reference = None
            self.refresh_corrections(save=False)
            return
        data = as_slices(layer.data)
        saved = layer.metadata.get(PREDICTION_KEY)
        project = self.session.project
        prediction = project.load_corrections()[2] if project is not None else None
        if saved is not None and np.shape(saved) in (data.shape, data.shape[1:]):
            self.state.reference, self.state.reference_name = as_slices(saved), "model's prediction"
        elif prediction is not None and prediction.shape == data.shape:
            self.state.reference, self.state.reference_name = prediction, "saved prediction"
        else:
            self.state.reference = (data != 0).astype(np.uint8)
            self.state.reference_name = "labels as first chosen"
            show_info(f"Edits to '{layer.name}' from now on count as corrections; slices "
                      "edited before can be marked with 'Corrected'.")
        self.state.reference_saved = False
        if self.state.corrections.n_slices != data.shape[0]:
            self.state.corrections = Corrections(data.shape[0])
        self.refresh_corrections(save=False)

    def _on_labels_edited(self, event: Any = None) -> None:
        if getattr(event, "type", None) == "paint":  # a brush/fill stroke ended: save it now,
            self.refresh_corrections()  # so a crash or kill never loses a finished stroke
        # and once more when painting pauses: paint() outside a mouse stroke (scripts) emits
        # the event before it writes the pixels
        self._detect_timer.start()

    def shape_problem(self) -> str | None:
        """Why the mask layer cannot hold corrections of the image, or None."""
        image, labels = self.session.image_layer, self.labels_layer
        if image is None or labels is None:
            return None
        try:
            check_labels_shape(np.shape(image.data), np.shape(labels.data))
        except ValueError as exc:
            return f"'{labels.name}' cannot hold corrections of '{image.name}': {exc}"
        return None

    def restore(self, *_args: Any) -> None:
        """Bring back a project's saved corrections once: a Labels layer with them (or the
        existing one that already holds them) and the marks."""
        image, project, viewer = self.session.image_layer, self.session.project, self.session.viewer
        if image is None or project is None or self.state.restored_from is project:
            return
        self.state.restored_from = project
        corrections, planes, prediction, data = project.load_corrections()
        shape = as_slices(image.data).shape
        if prediction is None or prediction.shape != shape:
            return
        labels = prediction.copy()
        for k, plane in planes.items():
            labels[k] = plane
        name = data.get("labels_layer") or f"{image.name} corrections"
        layer = next((lyr for lyr in viewer.layers if isinstance(lyr, Labels)
                      and lyr.name == name and as_slices(lyr.data).shape == shape
                      and all(np.array_equal(as_slices(lyr.data)[k] != 0, p != 0)
                              for k, p in planes.items())), None)
        if layer is None:
            layer = viewer.add_labels(labels if image.ndim == 3 else labels[0], name=name,
                                      metadata={PREDICTION_KEY: prediction},
                                      **transform_kwargs(image))
        else:
            layer.metadata = {**layer.metadata, PREDICTION_KEY: prediction}
        self.state.corrections = corrections
        self.session.mask_layer = layer
        self.retake_reference()
        show_info(f"Restored {len(planes)} corrected slices from {project.folder}.")

    # ------------------------------------------------------------------ corrections and plan

    def current_slice(self) -> int:
        return shown_slice(self.session.viewer, self.session.image_layer or self.labels_layer)

    def go_to(self, k: int) -> None:
        """Show slice ``k`` of the image."""
        layer = self.session.image_layer or self.labels_layer
        if layer is not None and layer.ndim == 3:
            show_slice(self.session.viewer, layer, k)

    def refresh_corrections(self, save: bool = True) -> list[int]:
        """Detect corrected slices now, update the list and the plan, and save them."""
        layer = self.labels_layer
        try:
            reference = self.state.reference
            self.state.corrections.detected = (
                [] if layer is None or reference is None
                else detect_corrected(as_slices(layer.data), reference))
        except ValueError:  # e.g. a 4D Labels layer: a fine-tune says what is wrong
            self.state.corrections.detected = []
        plan = self._show_plan()
        self._list.clear()
        roles = {}
        if plan is not None:
            roles = {**{k: "train" for k in plan.train},
                     **{k: "validation" for k in plan.validation},
                     **{k: "left out" for k in plan.unused}}
        for k in self.state.corrections.listed():
            item = QListWidgetItem(f"slice {k:>4}   {self.state.corrections.status(k):<9}  "
                                   f"{roles.get(k, '')}")
            item.setData(Qt.ItemDataRole.UserRole, int(k))
            self._list.addItem(item)
        self.edited()
        if save and layer is not None:
            self.save_corrections()
        return self.state.corrections.detected

    def edited(self) -> None:
        """Tell the listeners (the Fine-tune readout) that the corrections changed."""
        for callback in self.listeners:
            callback()

    def save_corrections(self) -> None:
        """Write the corrected slices and marks to the project folder (atomically)."""
        layer = self.labels_layer
        if layer is None or self.shape_problem():
            return  # labels of another shape would overwrite the image's saved corrections
        if self.session.project is None and not self.state.corrections.listed():
            return  # nothing corrected yet: no project folder made just for a model's run
        project = ensure_project(self.session)
        if project is None:
            return
        try:
            project.save_corrections(as_slices(layer.data), self.state.corrections,
                                     None if self.state.reference_saved else self.state.reference,
                                     labels_layer=layer.name)
            self.state.reference_saved = True
        except (OSError, ValueError) as exc:
            show_error(f"Could not save the corrections to {project.folder}: {exc}")

    def mark_current(self, kind: str | None) -> None:
        """Mark the slice shown (see ``Corrections.mark``); "negative" also clears it."""
        layer = self.labels_layer
        if layer is None:
            show_error("Choose the mask layer with your corrections first.")
            return
        k = self.current_slice()
        self.state.corrections.mark(k, kind)
        if kind == "negative":
            as_slices(layer.data)[k] = 0
            layer.refresh()
        self.refresh_corrections()

    def plan(self) -> SlicePlan | None:
        """The training / validation split the next run will use (None if the text is wrong)."""
        try:
            train = parse_slices(self._train_text.value) or None
            val_text = self._val_text.value.strip().lower()
            validation = None if val_text in ("", "auto") else parse_slices(val_text)
            locked = locked_slices(self.session.project)
            if locked:  # the Review step's locked set is held out, typed slices or not
                return locked_plan(self.state.corrections.slices(), locked, train=train,
                                   validation=validation)
            return plan_slices(self.state.corrections.slices(), train=train, validation=validation)
        except ValueError as exc:
            self._plan_info.value = str(exc)
            return None

    def _show_plan(self, _value: Any = None) -> SlicePlan | None:
        plan = self.plan()
        if plan is not None:
            self._plan_info.value = "\n".join([plan.describe(), *plan.warnings])
        return plan

    def set_running(self, running: bool) -> None:
        for w in (self._train_text, self._val_text):
            w.enabled = not running
