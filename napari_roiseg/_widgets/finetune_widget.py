"""The Fine-tune dock widget: corrected slices -> a new model version, with a live plot.

Thin on purpose: corrections, slice plans, versions and training live in
:mod:`napari_roiseg.finetune` (tested without a GUI). What lives here is GUI state: the project
open, the Labels layer being corrected and the prediction it is compared with, the worker of a
running job, and the plot's history.

The prediction a Labels layer is compared with comes from, in order: the layer's
``metadata["roiseg_prediction"]`` (layers made by this widget carry it), the project's saved
prediction when it fits, or else the layer's contents when it is first chosen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from .. import busy
from ..api import prepare_torch_import
from ..corrections import (
    Corrections,
    SlicePlan,
    detect_corrected,
    parse_slices,
    plan_slices,
)
from ..finetune import (
    FinetuneConfig,
    FinetuneResult,
    TrainingHistory,
    check_labels_shape,
    drain,
    evaluate,
    iter_finetune,
)
from ..history import locked_plan, locked_slices, route_new_version
from ..layers import as_slices, transform_kwargs
from ..project import Project, default_project_folder
from .navigation import show_slice, shown_slice
from .plot import HistoryCanvas

if TYPE_CHECKING:
    import napari

PREDICTION_KEY = "roiseg_prediction"
LEARNING_RATES = [("1e-5", 1e-5), ("3e-5", 3e-5), ("1e-4", 1e-4), ("3e-4", 3e-4), ("1e-3", 1e-3)]
SAME_AS_CORRECTED = "the corrected labels"


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from src_model.metrics import confusion_per_slice, scores_from_counts

    s = scores_from_counts(*confusion_per_slice(pred, truth))
    return {k: float(v[0]) for k, v in s.items()}


def _describe_version(name: str, info: dict[str, Any]) -> str:
    parts = [name]
    if info.get("parent"):
        parts.append(f"from {info['parent']}")
    if "steps_done" in info:
        parts.append(f"{info['steps_done']} steps ({info.get('state')})")
        parts.append(f"{len(info.get('train_slices', []))} train / "
                     f"{len(info.get('validation_slices', []))} val slices")
    before, after = info.get("metrics_before"), info.get("metrics_after")
    if before and after:
        parts.append(f"val dice {before['pooled']['dice']:.3f} → "
                     f"{after['pooled']['dice']:.3f}")
    elif info.get("source"):
        parts.append(str(info["source"]))
    return " · ".join(parts)


def _finetune_and_gate(args: tuple, kwargs: dict[str, Any]) -> Any:
    """``iter_finetune`` and then, in the same worker thread, the gate a new version must pass
    when the project has a locked set (``history.route_new_version``: inference on the locked
    slices, seconds for big slices, so never on the GUI thread). Returns ``(result, decision
    or None, problem text or None)``."""
    result = yield from iter_finetune(*args, **kwargs)
    decision = problem = None
    if result.version:
        try:
            # current_model None: the parent is loaded from the project (its score is cached)
            decision = route_new_version(kwargs["project"], result.version, result.model)
        except (OSError, ValueError) as exc:
            problem = f"The gate could not score {result.version}: {exc}"
    return result, decision, problem


class FinetuneWidget(QWidget):
    """Dock widget: list and mark corrected slices, fine-tune on them in the background with a
    live plot, keep model versions in a project folder, roll back, re-segment.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Starting model of a new project (default: the shipped default model).
    project : folder, optional
        Open this project folder at once.

    Signals
    -------
    model_changed(model, version)
        A new version was trained or another version was made current, e.g. connect
        ``SegmentWidget.set_model`` so that segmenting uses it.
    """

    DETECT_DELAY_MS = 400  # re-detect corrections once painting pauses this long
    model_changed = Signal(object, str)

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None,
                 project: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.model: Any = None  # the current version's model
        self._start_model = model
        self.corrections = Corrections(0)
        self.reference: np.ndarray | None = None  # the prediction corrections are compared with
        self.reference_name = ""
        self._reference_saved = False
        self.latest: tuple[np.ndarray, str] | None = None  # newest re-segmentation, its version
        self.history = TrainingHistory()
        self.worker: Any = None
        self.last_result: FinetuneResult | None = None
        self.last_segmentation: dict[str, Any] | None = None
        self.readout_values: dict[str, dict[str, float]] = {}
        self._labels_layer: Labels | None = None
        self._restored = False
        self._stop = threading.Event()
        self._token: busy.RunToken | None = None  # the run lock held by a run in progress
        self._build()
        self._connect()
        self._refresh_layers()
        if project is not None:
            self.open_project(project)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self._project_dir = FileEdit(label="project", mode="d")
        self._open_button = PushButton(text="Open project")
        self._version_info = Label(label="current")
        self._versions = ComboBox(label="versions", choices=[])
        self._use_button = PushButton(text="Use this version",
                                      tooltip="roll back (or forward) to the version chosen")
        self._image = ComboBox(label="image", choices=self._choices(Image))
        self._labels = ComboBox(label="corrected labels", choices=self._choices(Labels))
        top = Container(widgets=[self._project_dir, self._open_button, self._version_info,
                                 self._versions, self._use_button, self._image, self._labels])
        self._list = QListWidget()
        self._list.setMaximumHeight(140)
        self._list.setToolTip("slices whose labels differ from the model's prediction, and marked "
                              "slices; click one to go there")
        self._mark_buttons = {
            kind: PushButton(text=text, tooltip=tip) for kind, text, tip in (
                ("corrected", "Corrected", "use the slice shown as it is"),
                ("negative", "Negative", "no acetabulum on the slice shown (clears it)"),
                ("excluded", "Exclude", "do not use the slice shown"),
                (None, "Unmark", "remove the mark of the slice shown"))}
        marks = Container(layout="horizontal", labels=False, widgets=list(self._mark_buttons.values()))
        marks.margins = (0, 0, 0, 0)
        self._train_text = LineEdit(label="train slices", value="auto",
                                    tooltip="auto, or slices such as 12, 40-45")
        self._val_text = LineEdit(label="validation slices", value="auto",
                                  tooltip="auto (spread out, never next to a training slice), "
                                  "none, or slices such as 30, 52")
        self._plan_info = Label(label="plan")
        self._amount = SpinBox(label="length", min=1, max=100000, value=60)
        self._unit = ComboBox(label="unit", choices=["steps", "epochs"], value="steps")
        self._lr = ComboBox(label="learning rate", choices=LEARNING_RATES, value=1e-4)
        self._batch = SpinBox(label="batch size", min=1, max=32, value=4)
        self._start_button = PushButton(text="Start")
        self._stop_button = PushButton(text="Stop", enabled=False,
                                       tooltip="stop after this step; the best weights so far are kept")
        run = Container(layout="horizontal", labels=False,
                        widgets=[self._start_button, self._stop_button])
        run.margins = (0, 0, 0, 0)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(label="status")
        middle = Container(widgets=[marks, self._train_text, self._val_text, self._plan_info,
                                    self._amount, self._unit, self._lr, self._batch, run,
                                    self._progress, self._status])
        self.canvas = HistoryCanvas()
        self._truth = ComboBox(label="readout vs", choices=self._truth_choices)
        self._readout = Label(label="this slice")
        self._segment_button = PushButton(text="Segment volume with the current version")
        self._segment_info = Label(label="change")
        bottom = Container(widgets=[self._truth, self._readout, self._segment_button,
                                    self._segment_info])
        for label in (self._version_info, self._plan_info, self._status, self._readout,
                      self._segment_info):
            label.native.setWordWrap(True)
        layout = QVBoxLayout(self)
        for part in (top.native, self._list, middle.native, self.canvas, bottom.native):
            layout.addWidget(part)
        self._containers = (top, marks, run, middle, bottom)  # keep the magicgui wrappers alive
        self._detect_timer = QTimer(self)
        self._detect_timer.setSingleShot(True)
        self._detect_timer.setInterval(self.DETECT_DELAY_MS)
        self._detect_timer.timeout.connect(self.refresh_corrections)

    def _connect(self) -> None:
        self._open_button.changed.connect(lambda: self.open_project(self._project_dir.value))
        self._use_button.changed.connect(lambda: self.use_version())
        self._image.changed.connect(self._on_image_changed)
        self._labels.changed.connect(self._on_labels_changed)
        self._list.itemClicked.connect(lambda item: self.go_to(item.data(Qt.ItemDataRole.UserRole)))
        for kind, button in self._mark_buttons.items():
            button.changed.connect(lambda _v=None, kind=kind: self.mark_current(kind))
        self._train_text.changed.connect(self._show_plan)
        self._val_text.changed.connect(self._show_plan)
        self._start_button.changed.connect(lambda: self.start())
        self._stop_button.changed.connect(self.stop)
        self._truth.changed.connect(self.update_readout)
        self._segment_button.changed.connect(lambda: self.segment())
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        events.reordered.connect(self._refresh_layers)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self.update_readout)

    # ------------------------------------------------------------------ layer choices

    def _choices(self, kind: type) -> Any:
        return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers
                                if isinstance(layer, kind)]

    def _truth_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return [(SAME_AS_CORRECTED, None)] + self._choices(Labels)()

    def _refresh_layers(self, _event: Any = None) -> None:
        for combo in (self._image, self._labels, self._truth):
            combo.reset_choices()

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self._labels_layer:
            self._watch(None)
        self._refresh_layers()

    @property
    def image_layer(self) -> Image | None:
        return self._image.value

    @property
    def labels_layer(self) -> Labels | None:
        return self._labels.value

    def select(self, image: Image | None = None, labels: Labels | None = None) -> None:
        """Choose the image and the corrected Labels layer (what the combo boxes do)."""
        self._refresh_layers()
        if image is not None:
            self._image.value = image
        if labels is not None:
            if self._labels.value is labels:
                self._on_labels_changed(labels)  # same choice: take its reference again
            else:
                self._labels.value = labels

    def current_slice(self) -> int:
        return shown_slice(self.viewer, self.image_layer or self.labels_layer)

    def go_to(self, k: int) -> None:
        """Show slice ``k`` of the image."""
        layer = self.image_layer or self.labels_layer
        if layer is not None and layer.ndim == 3:
            show_slice(self.viewer, layer, k)

    # ------------------------------------------------------------------ project and versions

    def open_project(self, folder: Any) -> Project | None:
        """Open (or create) a project folder: its current version and its saved corrections."""
        try:
            project = Project(folder)
            if self.image_layer is not None:
                project.bind_image(self.image_layer.name, as_slices(self.image_layer.data).shape)
        except (OSError, ValueError) as exc:
            show_error(f"Cannot open the project: {exc}")
            return None
        self.project, self.model, self._restored = project, None, False
        self._project_dir.value = project.folder
        if project.current_version is not None:
            try:
                prepare_torch_import()
                self.model = project.load_version()
            except ValueError as exc:
                show_error(f"Cannot load version {project.current_version}: {exc}")
        self._show_versions()
        self._restore()
        return project

    def _ensure_project(self) -> Project | None:
        if self.project is None and self.image_layer is not None:
            source = getattr(self.image_layer.source, "path", None)
            folder = default_project_folder(self.image_layer.name, source)
            if self.open_project(folder) is not None:
                show_info(f"Corrections and model versions are saved in {folder} (choose another "
                          "folder under 'project' to move them).")
        return self.project

    def _model_or_report(self) -> Any:
        """:meth:`_ensure_model`, or None after telling the user why the model would not load."""
        try:
            return self._ensure_model()
        except (OSError, ValueError, TypeError) as exc:
            show_error(f"Could not load the model: {exc}")
            return None

    def _ensure_model(self) -> Any:
        """The current version's model; a new project first saves its starting model as v000."""
        if self.model is not None:
            return self.model
        prepare_torch_import()
        from ..segment import load_model

        net = load_model(self._start_model)
        source = "model given to the widget" if self._start_model is not None else "shipped default"
        if self.project is not None:
            self.project.add_version(net, {"parent": None, "source": source})
            self._show_versions()
        self.model = net
        return net

    def _show_versions(self) -> None:
        project = self.project
        versions = project.versions if project else {}
        self._versions.choices = [(_describe_version(n, i), n) for n, i in versions.items()]
        current = project.current_version if project else None
        if current:
            self._versions.value = current
            self._version_info.value = _describe_version(current, versions[current])
        else:
            self._version_info.value = "starting model (saved as v000 when a project is used)"

    def use_version(self, name: str | None = None) -> None:
        """Make version ``name`` (default: the one chosen) current: its exact weights return."""
        if self.project is None or self.worker is not None:
            return
        name = name or self._versions.value
        try:
            self.project.set_current(name)
            self.model = self.project.load_version(name)
        except ValueError as exc:
            show_error(str(exc))
            return
        self._show_versions()
        self._status.value = f"now using {name}"
        self.model_changed.emit(self.model, f"project version {name}")

    # ------------------------------------------------------------------ corrections

    def _on_image_changed(self, layer: Image | None) -> None:
        if layer is not None and self.project is not None:
            try:
                self.project.bind_image(layer.name, as_slices(layer.data).shape)
            except ValueError as exc:
                show_error(str(exc))
            self._restore()

    def _restore(self) -> None:
        """Bring back saved corrections once per project: a Labels layer with them (or the
        existing one that already holds them) and the marks."""
        image, project = self.image_layer, self.project
        if self._restored or image is None or project is None:
            return
        corrections, planes, prediction, data = project.load_corrections()
        shape = as_slices(image.data).shape
        if prediction is None or prediction.shape != shape:
            self._restored = True
            return
        labels = prediction.copy()
        for k, plane in planes.items():
            labels[k] = plane
        name = data.get("labels_layer") or f"{image.name} corrections"
        layer = next((lyr for lyr in self.viewer.layers if isinstance(lyr, Labels)
                      and lyr.name == name and as_slices(lyr.data).shape == shape
                      and all(np.array_equal(as_slices(lyr.data)[k] != 0, p != 0)
                              for k, p in planes.items())), None)
        if layer is None:
            layer = self.viewer.add_labels(labels if image.ndim == 3 else labels[0], name=name,
                                           metadata={PREDICTION_KEY: prediction},
                                           **transform_kwargs(image))
        else:
            layer.metadata = {**layer.metadata, PREDICTION_KEY: prediction}
        self._restored = True
        self.corrections = corrections
        self.select(labels=layer)
        show_info(f"Restored {len(planes)} corrected slices from {project.folder}.")

    def _watch(self, layer: Labels | None) -> None:
        old = self._labels_layer
        if old is not None:
            for ev in (old.events.paint, old.events.set_data, old.events.labels_update):
                ev.disconnect(self._on_labels_edited)
        self._labels_layer = layer
        if layer is not None:
            for ev in (layer.events.paint, layer.events.set_data, layer.events.labels_update):
                ev.connect(self._on_labels_edited)

    def _on_labels_changed(self, layer: Labels | None) -> None:
        self._watch(layer)
        if layer is None:
            self.reference = None
            self.refresh_corrections(save=False)
            return
        data = as_slices(layer.data)
        saved = layer.metadata.get(PREDICTION_KEY)
        if saved is not None and np.shape(saved) in (data.shape, data.shape[1:]):
            self.reference, self.reference_name = as_slices(saved), "model's prediction"
        else:
            _, _, prediction, _ = (self.project.load_corrections() if self.project
                                   else (None, None, None, None))
            if prediction is not None and prediction.shape == data.shape:
                self.reference, self.reference_name = prediction, "saved prediction"
            else:
                self.reference = (data != 0).astype(np.uint8)
                self.reference_name = "labels as first chosen"
                show_info(f"Edits to '{layer.name}' from now on count as corrections; slices "
                          "edited before can be marked with 'Corrected'.")
        self._reference_saved = False
        if self.corrections.n_slices != data.shape[0]:
            self.corrections = Corrections(data.shape[0])
        self.refresh_corrections(save=False)

    def _on_labels_edited(self, event: Any = None) -> None:
        if getattr(event, "type", None) == "paint":  # a brush/fill stroke ended: save it now,
            self.refresh_corrections()  # so a crash or kill never loses a finished stroke
        # and once more when painting pauses: paint() outside a mouse stroke (scripts) emits
        # the event before it writes the pixels
        self._detect_timer.start()

    def _shape_problem(self) -> str | None:
        """Why the chosen Labels layer cannot hold corrections of the chosen image, or None."""
        image, labels = self.image_layer, self.labels_layer
        if image is None or labels is None:
            return None
        try:
            check_labels_shape(np.shape(image.data), np.shape(labels.data))
        except ValueError as exc:
            return f"'{labels.name}' cannot hold corrections of '{image.name}': {exc}"
        return None

    def _image_problem(self) -> str | None:
        """Why the chosen image cannot be trained on (RGB, 4D, tiny, NaN...), or None."""
        image = self.image_layer
        try:
            from ..layers import image_array
            from ..segment import check_volume
            from ..volume_io import check_finite

            check_finite(check_volume(image_array(image)[0]), label=f"'{image.name}'")
        except (TypeError, ValueError) as exc:
            return f"Cannot fine-tune on '{image.name}': {exc}"
        return None

    def refresh_corrections(self, save: bool = True) -> list[int]:
        """Detect corrected slices now, update the list and the plan, and save them."""
        layer = self.labels_layer
        if layer is None or self.reference is None:
            self.corrections.detected = []
        else:
            try:
                self.corrections.detected = detect_corrected(as_slices(layer.data), self.reference)
            except ValueError:  # e.g. a 4D Labels layer: start() says what is wrong
                self.corrections.detected = []
        plan = self._show_plan()
        self._list.clear()
        roles = {}
        if plan is not None:
            roles = {**{k: "train" for k in plan.train}, **{k: "validation" for k in plan.validation},
                     **{k: "left out" for k in plan.unused}}
        for k in self.corrections.listed():
            item = QListWidgetItem(f"slice {k:>4}   {self.corrections.status(k):<9}  "
                                   f"{roles.get(k, '')}")
            item.setData(Qt.ItemDataRole.UserRole, int(k))
            self._list.addItem(item)
        self.update_readout()
        if save and layer is not None:
            self.save_corrections()
        return self.corrections.detected

    def save_corrections(self) -> None:
        """Write the corrected slices and marks to the project folder (atomically)."""
        layer = self.labels_layer
        if layer is None or self._shape_problem() or self._ensure_project() is None:
            return  # labels of another shape would overwrite the image's saved corrections
        try:
            self.project.save_corrections(
                as_slices(layer.data), self.corrections,
                None if self._reference_saved else self.reference, labels_layer=layer.name)
            self._reference_saved = True
        except (OSError, ValueError) as exc:
            show_error(f"Could not save the corrections to {self.project.folder}: {exc}")

    def mark_current(self, kind: str | None) -> None:
        """Mark the slice shown (see ``Corrections.mark``); "negative" also clears it."""
        layer = self.labels_layer
        if layer is None:
            show_error("Choose the corrected Labels layer first.")
            return
        k = self.current_slice()
        self.corrections.mark(k, kind)
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
            locked = locked_slices(self.project)
            if locked:  # the Review widget's locked set is held out, typed slices or not
                return locked_plan(self.corrections.slices(), locked, train=train,
                                   validation=validation)
            return plan_slices(self.corrections.slices(), train=train, validation=validation)
        except ValueError as exc:
            self._plan_info.value = str(exc)
            return None

    def _show_plan(self, _value: Any = None) -> SlicePlan | None:
        plan = self.plan()
        if plan is not None:
            self._plan_info.value = "\n".join([plan.describe(), *plan.warnings])
        return plan

    # ------------------------------------------------------------------ training

    def start(self, sync: bool = False) -> Any:
        """Fine-tune on the planned slices in a napari worker (returned), or here if ``sync``."""
        if self.worker is not None:
            show_info("Fine-tuning is already running.")
            return None
        image, labels = self.image_layer, self.labels_layer
        if image is None or labels is None:
            show_error("Choose the image and the Labels layer with the corrections first.")
            return None
        problem = self._image_problem() or self._shape_problem()
        if problem:
            show_error(problem)
            return None
        if busy.running():
            show_error(busy.refusal("fine-tuning"))
            return None
        self.refresh_corrections(save=False)
        plan = self.plan()
        if plan is None or not plan.train:
            show_error("Nothing to train on: correct slices of the labels (or mark them with "
                       "'Corrected' / 'Negative') first." if plan is not None else
                       f"Check the slice lists: {self._plan_info.value}")
            return None
        for warning in plan.warnings:
            show_warning(warning)
        if self._ensure_project() is None:
            return None
        return self._launch("fine-tuning", "fine-tuning",
                            lambda net: self._start_training(image, labels, plan, net, sync))

    def _launch(self, what: str, doing: str, start: Callable[[Any], Any]) -> Any:
        """Load the current model, take the run lock for ``what`` and return ``start(net)`` (a
        napari worker, or None after a ``sync`` run); :meth:`_on_finished` gives the lock back,
        at once if ``start`` fails. None, after telling the user why, when nothing started."""
        net = self._model_or_report()
        if net is None:
            return None
        token = busy.try_acquire(what)
        if token is None:
            show_error(busy.refusal(doing))
            return None
        self._token = token  # released by _on_finished
        try:
            return start(net)
        except Exception as exc:  # GUI boundary: it never started, so let go of the run lock
            self._on_finished()
            show_error(f"Could not start {doing}: {exc}")
            return None

    def _start_training(self, image: Image, labels: Labels, plan: SlicePlan, net: Any,
                        sync: bool) -> Any:
        self.save_corrections()
        config = FinetuneConfig(
            steps=int(self._amount.value), lr=float(self._lr.value), batch_size=int(self._batch.value),
            epochs=float(self._amount.value) if self._unit.value == "epochs" else None)
        total = config.total_steps(len(plan.train))
        self.history = TrainingHistory(total_steps=total)
        self.canvas.set_history(self.history, f"fine-tuning {self.project.current_version} on "
                                f"{len(plan.train)} slices")
        self._progress.max, self._progress.value = total, 0
        self._stop.clear()
        self._set_running(True)
        self._status.value = "starting…"
        args = (as_slices(image.data), np.array(as_slices(labels.data), copy=True), plan.train,
                plan.validation, net, config)
        kwargs = {"negatives": self.corrections.negatives, "should_stop": self._stop.is_set,
                  "project": self.project, "parent": self.project.current_version}
        if sync:
            try:
                self._on_result(drain(_finetune_and_gate(args, kwargs), self._on_record))
            except Exception as exc:  # GUI boundary
                self._on_error(exc)
            self._on_finished()
            return None
        from napari.qt.threading import create_worker

        # _connect wires the signals, then starts the thread; they arrive queued in this thread
        self.worker = create_worker(
            _finetune_and_gate, args, kwargs, _ignore_errors=True,
            _connect={"yielded": self._on_record, "returned": self._on_result,
                      "errored": self._on_error, "finished": self._on_finished})
        return self.worker

    def stop(self, _value: Any = None) -> None:
        """Stop after the step in progress; the best weights so far become the new version."""
        if self.worker is not None:
            self._stop.set()
            self._status.value = "stopping after this step…"

    def _on_record(self, record: Any) -> None:
        self.history.add(record)
        self._progress.value = min(record.step, self._progress.max)
        text = f"step {record.step}/{record.total_steps}"
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
        if decision is not None and not decision.accepted:
            text += (f"; saved as {result.version} but held back: {decision.describe()} "
                     "(the Review widget can override)")
        elif result.version:
            self.model = result.model
            text += f"; saved as {result.version}"
            self.model_changed.emit(self.model, f"project version {result.version}")
        else:
            text += "; no new version" + (f" ({result.message})" if result.message else "")
        self._status.value = text
        self._show_versions()

    def _on_error(self, exc: BaseException) -> None:
        self._status.value = f"failed: {exc}"
        show_error(f"Fine-tuning failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        if self._token is not None:
            self._token.release()
            self._token = None
        self._set_running(False)
        self.canvas.redraw()

    def _set_running(self, running: bool) -> None:
        for w in (self._start_button, self._use_button, self._open_button, self._segment_button,
                  self._image, self._labels, self._train_text, self._val_text):
            w.enabled = not running
        self._stop_button.enabled = running

    # ------------------------------------------------------------------ re-segment and readout

    def segment(self, sync: bool = False) -> Any:
        """Segment the whole volume with the current version into a new Labels layer."""
        image = self.image_layer
        if image is None or self.worker is not None:
            return None
        if busy.running():
            show_error(busy.refusal("segmenting"))
            return None
        return self._launch(f"segmenting '{image.name}'", "segmenting",
                            lambda net: self._start_segmenting(image, net, sync))

    def _start_segmenting(self, image: Image, net: Any, sync: bool) -> Any:
        from ..segment import iter_segment

        volume = as_slices(image.data)
        version = self.project.current_version if self.project else "model"
        self._progress.max, self._progress.value = volume.shape[0], 0
        self._set_running(True)
        self._status.value = f"segmenting with {version}…"

        def progress(step: tuple[int, int]) -> None:
            self._progress.value = step[0]

        if sync:
            try:
                self._on_segmented(drain(iter_segment(volume, net, batch_size=4), progress),
                                   version)
            except Exception as exc:  # GUI boundary
                show_error(f"Segmentation failed: {exc}")
            self._on_finished()
            return None
        from napari.qt.threading import create_worker

        self.worker = create_worker(
            iter_segment, volume, net, batch_size=4, _ignore_errors=True,
            _connect={"yielded": progress,
                      "returned": lambda result: self._on_segmented(result, version),
                      "errored": lambda exc: show_error(f"Segmentation failed: {exc}"),
                      "finished": self._on_finished})
        return self.worker

    def _on_segmented(self, result: Any, version: str) -> None:
        from ..layers import STATS_KEY

        image, truth_layer = self.image_layer, self.labels_layer
        labels = result.labels
        metadata = {PREDICTION_KEY: labels, "roiseg_version": version}
        if getattr(result, "stats", None) is not None:  # per-slice rows for the Review widget
            metadata[STATS_KEY] = result.stats
        layer = self.viewer.add_labels(
            labels.copy() if image.ndim == 3 else labels[0].copy(), name=f"{image.name} {version}",
            metadata=metadata, **transform_kwargs(image))
        self.latest = (labels, version)
        info = self.project.versions.get(version, {}) if self.project else {}
        validation = info.get("validation_slices") or []
        record: dict[str, Any] = {"layer": layer, "version": version, "validation": validation}
        text = f"'{layer.name}' added"
        if (validation and truth_layer is not None and self.reference is not None
                and self.reference.shape == labels.shape == as_slices(truth_layer.data).shape):
            truth = as_slices(truth_layer.data)
            before = evaluate(self.reference, truth, validation)["pooled"]["dice"]
            after = evaluate(labels, truth, validation)["pooled"]["dice"]
            record.update(before=before, after=after)
            text += (f"; dice on validation slices {before:.3f} ({self.reference_name}) → "
                     f"{after:.3f} ({version}), {after - before:+.3f}")
        self.last_segmentation = record
        self._segment_info.value = text
        self._status.value = f"segmented with {version}"
        self.update_readout()

    def update_readout(self, _event: Any = None) -> None:
        """Dice / precision / recall on the slice shown, of the prediction(s) against the
        chosen reference labels (default: the corrected labels)."""
        truth_layer = self._truth.value or self.labels_layer
        if truth_layer is None:
            self._readout.value = ""
            return
        truth = as_slices(truth_layer.data)
        k = self.current_slice()
        if k >= truth.shape[0]:
            return
        heads = [f"slice {k}"] + [s for s in (self.corrections.status(k),) if s]
        self.readout_values = {}
        predictions = [(self.reference_name or "prediction", self.reference)]
        if self.latest is not None:
            predictions.append((self.latest[1], self.latest[0]))
        parts = []
        for name, pred in predictions:
            if pred is None or pred.shape != truth.shape:
                continue
            s = self.readout_values[name] = _scores(pred[k], truth[k])
            parts.append(f"{name}: dice {s['dice']:.2f} · precision {s['precision']:.2f} · "
                         f"recall {s['recall']:.2f}")
        self._readout.value = " · ".join(heads) + (" — " + " | ".join(parts) if parts else "")
