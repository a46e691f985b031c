"""The Review dock widget: the slices most likely to need a look first, marks, history, the gate.

Thin on purpose: the scores live in :mod:`napari_roiseg.review`, the correction history, locked
set and gate in :mod:`napari_roiseg.history`, the report in :mod:`napari_roiseg.report` (all
tested without a GUI). What lives here is GUI state: the layers chosen, the queue and the
position in it, the plot, the project's history.

Where the numbers come from: the mask layer's ``metadata["roiseg_stats"]`` (layers made by the
Segment widget, by ``api.segment_volume(viewer=...)`` and by the Fine-tune widget's
re-segmentation carry the model's per-slice rows, entropy included); otherwise the mask and a
boxes Shapes layer (no entropy). The model's original prediction (kept in the history with each
correction) is the mask layer's ``metadata["roiseg_prediction"]`` (the same three kinds of
layer carry it), else the project's saved prediction, else, as a last resort, that very layer as
it was when its slices were first scored.

Gating, comparing and locking run the model or freeze its test set, so they take the
process-wide run lock (:mod:`napari_roiseg.busy`) and are refused while a segmentation or a
fine-tune runs.

Keys (anywhere in the napari window): **J** next slice in the queue, **K** previous one; slices
already marked are skipped. While the widget is open it takes J and K in the viewer's keymap;
closing it gives back whatever they were bound to before.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import busy
from ..corrections import detect_corrected
from ..history import DEFAULT_TOLERANCE, CorrectionHistory, GateDecision
from ..layers import (
    PREDICTION_KEY,
    STATS_KEY,
    add_boxes_layer,
    as_slices,
    set_boxes,
    transform_kwargs,
)
from ..project import Project, default_project_folder
from ..review import (
    ReviewScores,
    draw_scores,
    score_slices,
    shapes_to_rows,
    stats_from_layers,
)
from .navigation import show_slice, shown_slice

if TYPE_CHECKING:
    import napari

NEXT_KEY, PREVIOUS_KEY = "J", "K"
COLUMNS = ("rank", "slice", "score", "reason", "mark")
STANDS_OUT = 3.0  # a score this high is about 3 robust standard deviations off in one component


class _ViewerHooks:
    """What a widget hooks into the viewer (keys in its keymap, layer and dims events), kept
    apart from the widget so that it can be undone after the widget is gone: nothing here holds
    the widget but through a weak reference, and :meth:`undo` needs only the viewer."""

    def __init__(self, viewer: Any, widget: QWidget) -> None:
        self.viewer = viewer
        self.widget = weakref.ref(widget)
        self.closed = False
        self.connections: list[tuple[Any, Callable[..., Any]]] = []
        self.keys: dict[str, tuple[Callable[..., Any], Any]] = {}  # key -> (ours, the previous)

    def forward(self, name: str) -> Callable[..., Any]:
        """A callable that calls ``widget.<name>(*args)`` while the widget is open."""

        def call(*args: Any) -> Any:
            widget = self.widget()
            if not self.closed and widget is not None:
                return getattr(widget, name)(*args)
            return None

        return call

    def connect(self, emitter: Any, name: str) -> None:
        callback = self.forward(name)
        emitter.connect(callback)
        self.connections.append((emitter, callback))

    def bind_key(self, key: str, method: str, *args: Any) -> Any:
        """Bind ``key`` in the viewer's keymap to ``widget.<method>(*args)``; returns what was
        bound to it before (given back by :meth:`undo`)."""
        forward = self.forward(method)

        def on_key(_viewer: Any) -> None:
            forward(*args)

        previous = self.viewer.bind_key(key, on_key, overwrite=True)
        on_key.roiseg_hooks, on_key.roiseg_previous = self, previous  # type: ignore[attr-defined]
        self.keys[key] = (on_key, previous)
        return previous

    def undo(self, *_args: Any) -> None:
        """Disconnect the events and give the keys back (once; safe after the widget is gone)."""
        if self.closed:
            return
        self.closed = True
        for emitter, callback in self.connections:
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)
        self.connections.clear()
        from napari.utils.key_bindings import coerce_keybinding

        keymap = getattr(self.viewer, "keymap", {})
        for key, (ours, previous) in self.keys.items():
            # skip bindings of other Review widgets closed meanwhile: give back what they took
            while getattr(getattr(previous, "roiseg_hooks", None), "closed", False):
                previous = previous.roiseg_previous
            with contextlib.suppress(Exception):  # e.g. a viewer being torn down
                if keymap.get(coerce_keybinding(key)) is ours:  # not rebound by someone since
                    self.viewer.bind_key(key, previous, overwrite=True)  # None: unbind
        self.keys.clear()


class ScoreCanvas(FigureCanvasQTAgg):
    """The review score along the slice axis; a click jumps to the slice under the mouse."""

    def __init__(self, on_click: Any) -> None:
        super().__init__(Figure(figsize=(4, 1.8), dpi=80))
        self.setMinimumHeight(150)
        self._line: Any = None
        self._on_click = on_click
        self.mpl_connect("button_press_event", self._clicked)

    def show_scores(self, scores: ReviewScores, current: int, marks: dict[int, str]) -> None:
        ax = draw_scores(self.figure, scores, current, marks)
        self._line = ax.lines[-1]  # draw_scores draws the current-slice line last
        self.draw_idle()

    def set_current(self, k: int) -> None:
        if self._line is not None:
            self._line.set_xdata([k, k])
            self.draw_idle()

    def _clicked(self, event: Any) -> None:
        if event.xdata is not None:
            self._on_click(int(round(event.xdata)))


class ReviewWidget(QWidget):
    """Dock widget: a queue of slices to review (table + plot), marks, correction history,
    the locked evaluation set, the gate for new model versions, and the report.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    project : folder, optional
        Open this project folder at once (else the volume's default project on first need).

    Signals
    -------
    version_changed(str)
        The gate (or an override) made another version current, e.g. connect
        ``FinetuneWidget.use_version`` so that fine-tuning continues from it.
    """

    version_changed = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer, project: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.history: CorrectionHistory | None = None
        self.scores: ReviewScores | None = None
        # the mask layers as first scored, by layer (the prediction's last-resort fallback)
        self.snapshots: dict[Any, np.ndarray] = {}
        self.decision: GateDecision | None = None
        self.compare_layers: dict[str, Any] = {}
        self._pos = -1
        self._hooks: _ViewerHooks | None = None
        self.shortcuts: dict[str, QShortcut] = {}
        self._build()
        self._connect()
        self._hook_viewer()
        if project is not None:
            self.open_project(project)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self._image = ComboBox(label="image", choices=self._choices(Image))
        self._labels = ComboBox(label="mask", choices=self._choices(Labels),
                                tooltip="the model's mask layer (the one you correct)")
        self._boxes = ComboBox(label="boxes", choices=self._box_choices,
                               tooltip="used only when the mask layer carries no model scores")
        self._project_dir = FileEdit(label="project", mode="d")
        self._open_button = PushButton(text="Open project")
        self._score_button = PushButton(text="Score slices")
        self._summary = Label(label="queue")
        top = Container(widgets=[self._image, self._labels, self._boxes, self._project_dir,
                                 self._open_button, self._score_button, self._summary])
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(160)
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
        marks.margins = (0, 0, 0, 0)
        self._lock_button = PushButton(text="Lock held-out set",
                                       tooltip=("freeze the held-out corrected slices (their "
                                                "saved corrections) as the gate's test set: "
                                                "every version is scored on them; fine-tuning "
                                                "neither trains on them nor picks its weights "
                                                "on them"))
        self._candidate = ComboBox(label="candidate", choices=self._version_choices)
        self._tolerance = FloatSpinBox(label="tolerance", min=0.0, max=1.0, step=0.005,
                                       value=DEFAULT_TOLERANCE)
        self._gate_button = PushButton(text="Gate candidate")
        self._compare_button = PushButton(text="Compare on this slice",
                                          tooltip="candidate and current masks and boxes as layers")
        self._reason = LineEdit(label="override why")
        self._override_button = PushButton(text="Override", enabled=False)
        self._gate_info = Label(label="gate")
        self._report_dir = FileEdit(label="report to", mode="d")
        self._report_button = PushButton(text="Export report")
        bottom = Container(widgets=[self._lock_button, self._candidate, self._tolerance,
                                    self._gate_button, self._compare_button, self._reason,
                                    self._override_button, self._gate_info, self._report_dir,
                                    self._report_button])
        for label in (self._summary, self._gate_info):
            label.native.setWordWrap(True)
        layout = QVBoxLayout(self)
        for part in (top.native, self.table, self.canvas, marks.native, bottom.native):
            layout.addWidget(part)
        self._containers = (top, marks, bottom)  # keep the magicgui wrappers alive

    def _hook_viewer(self) -> None:
        """J / K and the layer and dims events; undone when the widget is closed, taken out of
        its dock or deleted (:meth:`_unhook_viewer`)."""
        hooks = self._hooks = _ViewerHooks(self.viewer, self)
        forward = hooks.forward("step")
        for key, step in ((NEXT_KEY, 1), (PREVIOUS_KEY, -1)):
            # Parented to this widget: it goes with it, and works while the widget is shown in
            # the active window (docked: anywhere in the napari window).
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(lambda step=step: forward(step))
            self.shortcuts[key] = sc
            # the same keys through napari's keymap, for when the widget is hidden (a tab behind
            # another dock) or the window is not the active one (a Qt shortcut needs both; a
            # matched shortcut consumes the key, so never both)
            previous = hooks.bind_key(key, "step", step)
            if previous is not None and not hasattr(previous, "roiseg_hooks"):
                show_info(f"The Review widget uses {key} while it is open; "
                          f"{getattr(previous, '__name__', previous)} gets {key} back when it "
                          "is closed.")
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            hooks.connect(ev, "_refresh_layers")
        hooks.connect(self.viewer.dims.events.current_step, "_on_step")
        # after a deletion the widget is gone: the lambda holds only the hooks
        self.destroyed.connect(lambda *_args, hooks=hooks: hooks.undo())

    def _unhook_viewer(self) -> None:
        """Give J / K back to what they were bound to and disconnect the viewer's events."""
        if self._hooks is not None:
            self._hooks.undo()
            self._hooks = None
        for sc in self.shortcuts.values():
            sc.setEnabled(False)
            sc.deleteLater()
        self.shortcuts = {}

    def closeEvent(self, event: Any) -> None:
        self._unhook_viewer()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None:  # taken out of its dock (napari's close button does that)
                self._unhook_viewer()
            elif getattr(self, "_hooks", False) is None:  # docked again
                self._hook_viewer()
        return super().event(event)

    def _connect(self) -> None:
        self._open_button.changed.connect(lambda: self.open_project(self._project_dir.value))
        self._score_button.changed.connect(lambda: self.refresh_scores())
        self.table.cellClicked.connect(self._on_cell_clicked)
        for kind, button in self._mark_buttons.items():
            button.changed.connect(lambda _v=None, kind=kind: self.mark_current(kind))
        self._record_all.changed.connect(lambda: self.record_edits())
        self._lock_button.changed.connect(lambda: self.lock())
        self._gate_button.changed.connect(lambda: self.gate())
        self._override_button.changed.connect(lambda: self.gate(override=self._reason.value))
        self._compare_button.changed.connect(lambda: self.compare())
        self._report_button.changed.connect(lambda: self.export_report())

    def _choices(self, kind: type) -> Any:
        return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers
                                if isinstance(layer, kind)
                                and not layer.name.startswith("compare ")]

    def _box_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return [("none", None)] + self._choices(Shapes)()

    def _version_choices(self, _w: Any = None) -> list[str]:
        return list(self.project.versions) if self.project is not None else []

    def _refresh_layers(self, _event: Any = None) -> None:
        for combo in (self._image, self._labels, self._boxes):
            combo.reset_choices()
        alive = {layer.unique_id for layer in self.viewer.layers}
        for key in [k for k in self.snapshots if k not in alive]:  # removed layers
            del self.snapshots[key]

    @property
    def image_layer(self) -> Image | None:
        return self._image.value

    @property
    def labels_layer(self) -> Labels | None:
        return self._labels.value

    def select(self, image: Image | None = None, labels: Labels | None = None,
               boxes: Shapes | None = None) -> None:
        """Choose the layers (what the combo boxes do)."""
        self._refresh_layers()
        for combo, layer in ((self._image, image), (self._labels, labels), (self._boxes, boxes)):
            if layer is not None:
                combo.value = layer

    # ------------------------------------------------------------------ navigation

    def current_slice(self) -> int:
        return shown_slice(self.viewer, self.image_layer or self.labels_layer)

    def go_to(self, k: int) -> None:
        """Show slice ``k``."""
        show_slice(self.viewer, self.image_layer or self.labels_layer, k)

    def _on_cell_clicked(self, row: int, _column: int = 0) -> None:
        self._pos = row
        self.go_to(int(self.table.item(row, 1).data(Qt.ItemDataRole.UserRole)))

    def step(self, direction: int) -> int | None:
        """Go to the next (``+1``) or previous (``-1``) unmarked slice of the queue."""
        if self.scores is None or not self.scores.n_slices:
            return None
        marks = self.marks
        pos = self._pos
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

    # ------------------------------------------------------------------ project

    def open_project(self, folder: Any) -> Project | None:
        try:
            project = Project(folder)
            history = CorrectionHistory(project)
        except (OSError, ValueError) as exc:
            show_error(f"Cannot open the project: {exc}")
            return None
        self.project, self.history = project, history
        self._project_dir.value = project.folder
        self._candidate.reset_choices()
        versions = list(project.versions)
        if versions:
            self._candidate.value = versions[-1]
        self._show_queue()
        return project

    def _ensure_history(self) -> CorrectionHistory | None:
        if self.history is None and self.image_layer is not None:
            source = getattr(self.image_layer.source, "path", None)
            folder = default_project_folder(self.image_layer.name, source)
            if self.open_project(folder) is not None:
                show_info(f"The review history is saved in {folder}.")
        if self.history is None:
            show_error("Choose the image (or open a project folder) first.")
        return self.history

    @property
    def marks(self) -> dict[int, str]:
        return self.history.marks if self.history is not None else {}

    # ------------------------------------------------------------------ scores and queue

    def refresh_scores(self) -> ReviewScores | None:
        """Score every slice of the chosen mask layer and rebuild the queue."""
        layer = self.labels_layer
        if layer is None:
            show_error("Choose the mask layer (the model's output) first.")
            return None
        data = as_slices(layer.data)
        stats = layer.metadata.get(STATS_KEY)
        source = "model scores"
        if stats is None or len(stats) != data.shape[0]:
            boxes = shapes_to_rows(self._boxes.value) if self._boxes.value is not None else None
            stats = stats_from_layers(data, boxes)
            source = "mask and boxes (no probabilities: entropy not used)"
        snapshot = self.snapshots.get(layer.unique_id)
        if snapshot is None or snapshot.shape != data.shape:
            self.snapshots[layer.unique_id] = (data != 0).astype(np.uint8)
        self.scores = score_slices(stats)
        self._pos = -1
        self._show_queue()
        self._summary.value = (f"{self.scores.n_slices} slices from {source}; "
                               f"{int((self.scores.score >= STANDS_OUT).sum())} stand out "
                               f"(score >= {STANDS_OUT:g}). "
                               f"{NEXT_KEY} / {PREVIOUS_KEY}: next / previous in the queue")
        return self.scores

    def _show_queue(self) -> None:
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
        """The model's original mask (S, H, W) the corrections are compared with: the mask
        layer's ``metadata[PREDICTION_KEY]``, else the project's saved prediction, else this
        layer as it was when its slices were first scored (may already hold fixes)."""
        layer = self.labels_layer
        if layer is None:
            return None
        shape = as_slices(layer.data).shape
        saved = layer.metadata.get(PREDICTION_KEY)
        if saved is not None and as_slices(saved).shape == shape:
            return as_slices(saved)
        if self.project is not None:
            _, _, prediction, _ = self.project.load_corrections()
            if prediction is not None and prediction.shape == shape:
                return prediction
        snapshot = self.snapshots.get(layer.unique_id)
        return snapshot if snapshot is not None and snapshot.shape == shape else None

    def _boxes_of(self, k: int) -> np.ndarray:
        if self._boxes.value is not None:
            rows = shapes_to_rows(self._boxes.value)
            return rows[rows[:, 0] == k]
        return np.zeros((0, 6), np.float32)

    def mark_current(self, kind: str | None) -> dict[str, Any] | None:
        """Mark the slice shown: "reviewed", "corrected" (records the correction), or None."""
        history = self._ensure_history()
        if history is None:
            return None
        k = self.current_slice()
        record = None
        if kind == "corrected":
            record = self.record_slice(k)
            if record is None:
                return None
        else:
            history.mark(k, kind)
        self._show_queue()
        return record

    def record_slice(self, k: int) -> dict[str, Any] | None:
        """Store slice ``k``'s prediction and the mask layer's fix in the history."""
        history, layer, pred = self._ensure_history(), self.labels_layer, self.prediction()
        if history is None or layer is None or pred is None:
            show_error("Choose the mask layer and score the slices first.")
            return None
        version = layer.metadata.get("roiseg_version") or self.project.current_version
        record = history.record(k, pred[k], as_slices(layer.data)[k], self._boxes_of(k),
                                version=version)
        show_info(f"slice {k}: correction recorded (dice of the model's mask vs yours "
                  f"{record['dice']:.3f})")
        return record

    def record_edits(self) -> list[int]:
        """Record every slice whose mask differs from the prediction and is not recorded yet."""
        layer, pred = self.labels_layer, self.prediction()
        if layer is None or pred is None or self._ensure_history() is None:
            return []
        done = self.history.latest_by_slice()
        new = [k for k in detect_corrected(as_slices(layer.data), pred) if k not in done]
        for k in new:
            self.record_slice(k)
        self._show_queue()
        return new

    # ------------------------------------------------------------------ locked set and gate

    @contextlib.contextmanager
    def _run_lock(self, what: str) -> Iterator[bool]:
        """Hold the process-wide run lock for the block (yields False, after telling the user
        why, while a segmentation or fine-tune runs)."""
        token = busy.try_acquire(what)
        if token is None:
            show_error(busy.refusal(what))
            yield False
            return
        try:
            yield True
        finally:
            token.release()

    def reference_masks(self, slices: Any) -> dict[int, np.ndarray]:
        """The annotator's mask of each of ``slices``: the saved correction (the Fine-tune
        widget's ``corrections/labels.tif``) when there is one, else the mask layer's slice
        when it was corrected in that layer (differs from its prediction), else the fix kept
        in the correction history, else the mask layer's slice."""
        data = as_slices(self.labels_layer.data)
        _, planes, _, saved = self.project.load_corrections()
        if tuple(saved.get("shape") or ()) != data.shape:
            planes = {}  # corrections of another volume
        prediction = self.prediction()
        edited = (set(detect_corrected(data, prediction))
                  if prediction is not None and prediction.shape == data.shape else set())
        records = self.history.latest_by_slice()
        out: dict[int, np.ndarray] = {}
        for k in sorted({int(v) for v in slices}):
            if k in planes and planes[k].shape == data.shape[1:]:
                out[k] = planes[k]
            elif k in edited or k not in records:
                out[k] = np.asarray(data[k])
            else:
                out[k] = self.history.load_record(records[k]["id"])["correction"]
        return out

    def lock(self) -> list[int]:
        """Freeze the held-out part of the corrected slices as the locked set, with their
        saved corrections as the reference masks (see :meth:`reference_masks`)."""
        history, layer, image = self._ensure_history(), self.labels_layer, self.image_layer
        if history is None or layer is None or image is None:
            return []
        volume, data = as_slices(image.data), as_slices(layer.data)
        if volume.shape != data.shape:
            show_error(f"'{layer.name}' {data.shape} is not a mask of '{image.name}' "
                       f"{volume.shape}: choose the image's mask layer")
            return []
        with self._run_lock("locking the held-out set") as ok:
            if not ok:
                return []
            corrections, _, _, saved = self.project.load_corrections()
            if tuple(saved.get("shape") or ()) != data.shape:
                corrections = None
            corrected = (set(corrections.slices()) if corrections is not None else set()) | set(
                history.latest_by_slice())
            try:
                from ..corrections import plan_slices

                held_out = plan_slices(corrected).validation
                locked = history.lock(volume, self.reference_masks(held_out), held_out or None,
                                      corrected=corrected)
            except ValueError as exc:
                show_error(str(exc))
                return []
        self._gate_info.value = (f"locked slices {', '.join(map(str, locked))}: every version is "
                                 "scored on them; fine-tuning neither trains on them nor picks "
                                 "its weights on them")
        return locked

    def gate(self, override: str | None = None) -> GateDecision | None:
        """Gate the chosen candidate against the current version (see ``history.gate``)."""
        history = self._ensure_history()
        name = self._candidate.value
        if history is None or not name:
            show_error("No candidate version: fine-tune first (Fine-tune widget).")
            return None
        before = self.project.current_version
        with self._run_lock(f"gating {name}") as ok:
            if not ok:
                return None
            try:
                from ..api import prepare_torch_import

                prepare_torch_import()
                decision = history.gate(name, tolerance=float(self._tolerance.value),
                                        override=override or None)
            except ValueError as exc:
                show_error(str(exc))
                return None
        self.decision = decision
        self._gate_info.value = decision.describe() + (
            f" (why: {decision.override['why']})" if decision.override else "")
        self._override_button.enabled = not decision.accepted
        if self.project.current_version != before:
            self.version_changed.emit(self.project.current_version)
        return decision

    def compare(self) -> dict[str, Any]:
        """Candidate and current version's masks (contours) and boxes on the slice shown."""
        image, history = self.image_layer, self._ensure_history()
        name = self._candidate.value
        if image is None or history is None or not name:
            return {}
        with self._run_lock(f"comparing {name}") as ok:
            return self._compare(image, name) if ok else {}

    def _compare(self, image: Image, name: str) -> dict[str, Any]:
        from ..api import prepare_torch_import

        prepare_torch_import()
        from src_model.predict import predict
        from src_model.preprocess import intensity_range, normalize_slices

        from ..segment import result_boxes

        volume = as_slices(image.data)
        k = self.current_slice()
        images = normalize_slices(np.asarray(volume[[k]]), intensity_range(volume))
        current = self.project.current_version
        shown: dict[str, Any] = {}
        for role, version, colour in (("candidate", name, "magenta"), ("current", current, "cyan")):
            if version is None:
                continue
            result = predict(self.project.load_version(version), images, normalize=False)[0]
            labels = np.zeros(volume.shape, np.uint8)
            labels[k] = result["mask"]
            rows = result_boxes(k, result)
            lname, bname = f"compare {role} mask", f"compare {role} boxes"
            layer = self.compare_layers.get(lname)
            if layer is None or layer not in self.viewer.layers:
                layer = self.viewer.add_labels(labels, name=lname, **transform_kwargs(image))
                layer.contour = 2
                self.compare_layers[lname] = layer
            else:
                layer.data = labels
            blayer = self.compare_layers.get(bname)
            if blayer is None or blayer not in self.viewer.layers:
                blayer = add_boxes_layer(self.viewer, rows, image_layer=image, name=bname)
                self.compare_layers[bname] = blayer
            else:
                set_boxes(blayer, rows)
            blayer.edge_color = colour
            layer.metadata = {**layer.metadata, "roiseg_version": version}
            shown[role] = {"version": version, "area": int(result["mask"].sum()),
                           "boxes": len(rows)}
        self._gate_info.value = f"slice {k}: " + " | ".join(
            f"{role} {v['version']}: mask {v['area']} px, {v['boxes']} boxes"
            for role, v in shown.items())
        return shown

    # ------------------------------------------------------------------ report

    def export_report(self, folder: Any = None) -> dict[str, Any] | None:
        """Write review.html and the CSV tables (see :mod:`napari_roiseg.report`)."""
        from ..report import export_report

        history = self._ensure_history()
        if history is None:
            return None
        folder = folder or self._report_dir.value
        if not folder or str(folder) in ("", "."):
            folder = self.project.folder / "report"
        name = self.image_layer.name if self.image_layer is not None else "volume"
        try:
            paths = export_report(folder, scores=self.scores, history=history, name=name,
                                  current=self.current_slice())
        except OSError as exc:
            show_error(f"Could not write the report: {exc}")
            return None
        show_info(f"Report written to {paths['html']}")
        return paths
