"""The Review step's queue: the slices most likely to need a look first, marks, history.

The scores live in :mod:`napari_roiseg.review`, the correction history in
:mod:`napari_roiseg.project.history` (both tested without a GUI). The numbers come from the
session's mask layer's ``metadata["roiseg_stats"]`` (layers made by a run carry the model's
per-slice rows, entropy included), else from the mask and the boxes layer (no entropy). The model's
original prediction is the mask layer's ``metadata[PREDICTION_KEY]``, else the project's saved
prediction, else, as a last resort, that very layer as it was when its slices were first scored.

Keys (anywhere in the napari window): **J** next slice in the queue, **K** previous one; slices
already marked are skipped. While the panel's dock is open it takes J and K in the viewer's
keymap; closing it gives back whatever they were bound to before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ..project.corrections import detect_corrected
from ..project.history import CorrectionHistory
from ..layers import PREDICTION_KEY, STATS_KEY, as_slices
from ..review import ReviewScores, score_slices, shapes_to_rows, stats_from_layers
from ..session import Session
from .hooks import Panel, ViewerHooks
from .pickers import show_slice, shown_slice
from .plots import ScoreCanvas
from .project_panel import ensure_project

NEXT_KEY, PREVIOUS_KEY = "J", "K"
COLUMNS = ("rank", "slice", "score", "reason", "mark")
STANDS_OUT = 3.0  # a score this high is about 3 robust standard deviations off in one component


def session_history(session: Session, quiet: bool = False) -> CorrectionHistory | None:
    """The correction history of the session's project (opened on first need)."""
    if session.project is None and (quiet or ensure_project(session) is None):
        return None
    kept = session.extras.get("history")
    if kept is None or kept.project is not session.project:
        kept = session.extras["history"] = CorrectionHistory(session.project)
    return kept


class ReviewPanel(Panel):
    """Score button, queue table, score plot, mark and record buttons."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.scores: ReviewScores | None = None
        self.snapshots: dict[Any, np.ndarray] = {}  # mask layers as first scored, by layer id
        self.shortcuts: dict[str, QShortcut] = {}
        self._pos = -1
        self._score_button = PushButton(text="Score slices")
        self._summary = Label(label="queue")
        self._summary.native.setWordWrap(True)
        top = Container(widgets=[self._score_button, self._summary])
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(140)
        self.table.setToolTip(f"slices by review score; click to go there; {NEXT_KEY} / "
                              f"{PREVIOUS_KEY}: next / previous unmarked slice in the queue")
        self.canvas = ScoreCanvas(self.go_to)
        self._mark_buttons = {
            kind: PushButton(text=text, tooltip=tip) for kind, text, tip in (
                ("reviewed", "Reviewed", "the slice shown looks right"),
                ("corrected", "Corrected", "store the model's output and your fix of the slice "
                 "shown in the history"),
                (None, "Unmark", "remove the mark of the slice shown"))}
        self._record_all = PushButton(text="Record all edits",
                                      tooltip="record every edited slice not yet in the history")
        marks = Container(layout="horizontal", labels=False,
                          widgets=[*self._mark_buttons.values(), self._record_all])
        marks.margins = top.margins = (0, 0, 0, 0)
        self._forms = (top, marks)
        self.add(top, self.table, self.canvas, marks)
        self._score_button.changed.connect(lambda: self.refresh_scores())
        self.table.cellClicked.connect(self._on_cell_clicked)
        for kind, button in self._mark_buttons.items():
            button.changed.connect(lambda _v=None, kind=kind: self.mark_current(kind))
        self._record_all.changed.connect(lambda: self.record_edits())

    def hook(self, hooks: ViewerHooks) -> None:
        """J / K (Qt shortcuts and the viewer's keymap), the slider, removed layers."""
        forward = hooks.forward("step", self)
        for key, step in ((NEXT_KEY, 1), (PREVIOUS_KEY, -1)):
            # Parented to this panel: it goes with it, and works while it is shown in the
            # active window (docked: anywhere in the napari window).
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(lambda step=step: forward(step))
            self.shortcuts[key] = sc
            # the same keys through napari's keymap, for when the panel is hidden (a tab behind
            # another) or the window is not the active one (a Qt shortcut needs both; a matched
            # shortcut consumes the key, so never both)
            previous = hooks.bind_key(key, "step", step, target=self)
            if previous is not None and not hasattr(previous, "roiseg_hooks"):
                show_info(f"The Review step uses {key} while it is open; "
                          f"{getattr(previous, '__name__', previous)} gets {key} back when it "
                          "is closed.")
        hooks.connect(self.session.viewer.dims.events.current_step, "_on_step", self)
        hooks.connect(self.session.viewer.layers.events.removed, "_forget_snapshots", self)

    def unhook(self) -> None:
        for sc in self.shortcuts.values():
            sc.setEnabled(False)
            sc.deleteLater()
        self.shortcuts = {}

    @property
    def history(self) -> CorrectionHistory | None:
        return session_history(self.session, quiet=True)

    def _forget_snapshots(self, _event: Any = None) -> None:
        alive = {layer.unique_id for layer in self.session.viewer.layers}
        for key in [k for k in self.snapshots if k not in alive]:
            del self.snapshots[key]

    # ------------------------------------------------------------------ navigation

    def current_slice(self) -> int:
        return shown_slice(self.session.viewer, self.session.image_layer or self.session.mask_layer)

    def go_to(self, k: int) -> None:
        show_slice(self.session.viewer, self.session.image_layer or self.session.mask_layer, k)

    def _on_cell_clicked(self, row: int, _column: int = 0) -> None:
        self._pos = row
        self.go_to(int(self.table.item(row, 1).data(Qt.ItemDataRole.UserRole)))

    def step(self, direction: int) -> int | None:
        """Go to the next (``+1``) or previous (``-1``) unmarked slice of the queue."""
        if self.scores is None or not self.scores.n_slices:
            return None
        marks, pos = self.marks, self._pos
        for _ in range(self.scores.n_slices):
            pos += direction
            if not 0 <= pos < self.scores.n_slices:
                return None
            k = int(self.scores.order[pos])
            if k not in marks:
                self._pos = pos
                self.table.selectRow(pos)
                self.go_to(k)
                return k
        return None

    def _on_step(self, _event: Any = None) -> None:
        if self.scores is not None:
            self.canvas.set_current(self.current_slice())

    # ------------------------------------------------------------------ scores and queue

    @property
    def marks(self) -> dict[int, str]:
        history = self.history
        return history.marks if history is not None else {}

    def refresh_scores(self) -> ReviewScores | None:
        """Score every slice of the session's mask layer and rebuild the queue."""
        layer, boxes = self.session.mask_layer, self.session.boxes_layer
        if layer is None:
            show_error("Choose the mask layer (the model's output) first.")
            return None
        data = as_slices(layer.data)
        stats = layer.metadata.get(STATS_KEY)
        source = "model scores"
        if stats is None or len(stats) != data.shape[0]:
            stats = stats_from_layers(data, shapes_to_rows(boxes) if boxes is not None else None)
            source = "mask and boxes (no probabilities: entropy not used)"
        snapshot = self.snapshots.get(layer.unique_id)
        if snapshot is None or snapshot.shape != data.shape:
            self.snapshots[layer.unique_id] = (data != 0).astype(np.uint8)
        self.scores = score_slices(stats)
        self._pos = -1
        self.show_queue()
        self._summary.value = (f"{self.scores.n_slices} slices from {source}; "
                               f"{int((self.scores.score >= STANDS_OUT).sum())} stand out "
                               f"(score >= {STANDS_OUT:g}). "
                               f"{NEXT_KEY} / {PREVIOUS_KEY}: next / previous in the queue")
        return self.scores

    def show_queue(self, *_args: Any) -> None:
        scores, marks = self.scores, self.marks
        if scores is None:
            return
        self.table.setRowCount(scores.n_slices)
        for row, k in enumerate(scores.order):
            k = int(k)
            values = (row + 1, k, f"{scores.score[k]:.2f}", scores.reason(k), marks.get(k, ""))
            for col, value in enumerate(values):
                item = QTableWidgetItem(str(value))
                item.setData(Qt.ItemDataRole.UserRole, k)
                self.table.setItem(row, col, item)
        self.canvas.show_scores(scores, self.current_slice(), marks)

    # ------------------------------------------------------------------ marks and history

    def prediction(self) -> np.ndarray | None:
        """The model's original mask (S, H, W) the corrections are compared with (see the
        module docstring)."""
        layer = self.session.mask_layer
        if layer is None:
            return None
        shape = as_slices(layer.data).shape
        saved = layer.metadata.get(PREDICTION_KEY)
        if saved is not None and as_slices(saved).shape == shape:
            return as_slices(saved)
        if self.session.project is not None:
            prediction = self.session.project.load_corrections()[2]
            if prediction is not None and prediction.shape == shape:
                return prediction
        snapshot = self.snapshots.get(layer.unique_id)
        return snapshot if snapshot is not None and snapshot.shape == shape else None

    def _boxes_of(self, k: int) -> np.ndarray:
        if self.session.boxes_layer is not None:
            rows = shapes_to_rows(self.session.boxes_layer)
            return rows[rows[:, 0] == k]
        return np.zeros((0, 6), np.float32)

    def mark_current(self, kind: str | None) -> dict[str, Any] | None:
        """Mark the slice shown: "reviewed", "corrected" (records the correction), or None."""
        history = session_history(self.session)
        if history is None:
            return None
        k, record = self.current_slice(), None
        if kind == "corrected":
            record = self.record_slice(k)
            if record is None:
                return None
        else:
            history.mark(k, kind)
        self.show_queue()
        return record

    def record_slice(self, k: int) -> dict[str, Any] | None:
        """Store slice ``k``'s prediction and the mask layer's fix in the history."""
        history, layer, pred = (session_history(self.session), self.session.mask_layer,
                                self.prediction())
        if history is None or layer is None or pred is None:
            show_error("Choose the mask layer and score the slices first.")
            return None
        version = layer.metadata.get("roiseg_version") or self.session.project.current_version
        record = history.record(k, pred[k], as_slices(layer.data)[k], self._boxes_of(k),
                                version=version)
        show_info(f"slice {k}: correction recorded (dice of the model's mask vs yours "
                  f"{record['dice']:.3f})")
        return record

    def record_edits(self) -> list[int]:
        """Record every slice whose mask differs from the prediction and is not recorded yet."""
        layer, pred = self.session.mask_layer, self.prediction()
        history = session_history(self.session)
        if layer is None or pred is None or history is None:
            return []
        done = history.latest_by_slice()
        new = [k for k in detect_corrected(as_slices(layer.data), pred) if k not in done]
        for k in new:
            self.record_slice(k)
        self.show_queue()
        return new
