"""The Segment dock widget: pick an image, a model and a device; segment a slice or the volume.

Thin on purpose: the model runs through :func:`napari_roiseg.segment.iter_segment` (the same
generator the CLI and the API use) and results reach the viewer through
:class:`napari_roiseg.layers.ResultLayers`. What lives here is GUI state: one result per image
layer (kept across runs, so a cancelled run's slices stay and slice-by-slice runs add up), the
loaded model, and the worker of a running whole-volume job.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from src_model.generators import drain

from .. import busy
from ..api import prepare_torch_import
from ..layers import DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K, ResultLayers, image_array
from ..segment import VolumeSegmentation, check_volume, default_checkpoint, iter_segment
from ..volume_io import check_finite
from .navigation import shown_slice

if TYPE_CHECKING:
    import napari

DEFAULT_MODEL = "shipped default"
CHECKPOINT_FILE = "checkpoint file"
IN_MEMORY = "in-memory model"  # offered once set_model() handed one over
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Session:
    """What the widget keeps for one image layer between runs."""

    result: VolumeSegmentation  # the model's output so far (out= of every run)
    layers: ResultLayers
    model: Any = None  # the model that produced ``result.done``; another model starts over


@dataclass
class VolumeRun:
    """A whole-volume run: its progress and how it ended (``widget.last_run`` after it)."""

    session: Session
    total: int
    done: int = 0  # slices written to the mask layer
    reported: int = 0  # slices the worker has finished
    batches: int = 0
    shown: int = 0  # boxes drawn so far (those of the first ``boxes_upto`` slices)
    boxes_upto: int = 0  # slices whose boxes are drawn
    boxes_at: float = 0.0  # time.monotonic() of the last boxes update
    boxes_due: bool = False  # a boxes update is scheduled
    finishing: bool = False  # the worker ended; the last GUI steps are scheduled
    gc_frozen: bool = False  # gc.freeze() was called for the run (undone when it ends)
    pbar_n: int = 0  # slices shown by napari's activity progress bar
    pbar_at: float = 0.0  # time.monotonic() of its last update
    cancelled: bool = False
    error: str | None = None
    pbar: Any = None


def _with_torch_threads(job: Any, default: int, at_most: int) -> Any:
    """``job`` (a generator function) run with torch limited to ``at_most`` threads (at least
    1), then back to ``default``. Set inside the worker: with OpenMP, torch's thread count
    belongs to the thread that sets it. (A cancelled run's generator is closed later, possibly
    in another thread: that thread is then set to ``default``, the count it had anyway.)"""

    def limited(*args: Any, **kwargs: Any) -> Any:
        import torch

        torch.set_num_threads(max(1, min(default, at_most)))
        try:
            return (yield from job(*args, **kwargs))
        finally:
            torch.set_num_threads(default)

    return limited


def describe_model(net: Any, metadata: dict[str, Any] | None, source: str) -> str:
    """One line for the widget: preset and architecture, training, date, where it came from."""
    config = getattr(net, "config", None)
    parts = [f"{config.preset} preset, {config.arch}"] if config is not None else [
        type(net).__name__]
    meta = metadata or {}
    version = meta.get("version") or meta.get("napari_roiseg_version")
    if version:
        parts.append(f"v{version}")
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    steps = training.get("steps_done")
    if steps is None and training.get("state") in (None, "finished"):
        steps = training.get("steps")  # a finished run did all its planned steps
    if steps is not None:
        parts.append(f"{steps} training steps")
    elif training.get("state"):
        parts.append(f"training {training['state']} early")
    if training.get("best_step") is not None:
        parts.append(f"weights of step {training['best_step']}")
    if isinstance(meta.get("date"), str):
        parts.append(meta["date"][:10])
    return f"{' · '.join(parts)} ({source})"


class SegmentWidget(Container):
    """Dock widget: segment the current slice, the whole volume (cancellable), or follow the
    slider; show boxes as a Shapes layer and the mask as a Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Use this model instead of the shipped default (see :meth:`set_model`).
    """

    # A volume run must never freeze the viewer for 100 ms (scripts/bench_gui_stall.py). So:
    # the result layers are made when the image is chosen, not when the run starts (creating a
    # layer costs 0.1-0.3 s with software OpenGL); each batch's boxes are added to the Shapes
    # layer (a few ms) instead of rebuilding it (all rectangles re-triangulated: 55 ms for 140);
    # and napari's activity progress bar, whose update runs QApplication.processEvents() and so
    # a redraw in the same slot, is updated at most once a second. The mask layer and the
    # dock's own progress bar follow every batch.
    ACTIVITY_EVERY_S = 1.0
    # Images up to this many voxels get their result layers when chosen (a uint8 mask of this
    # size, twice: the layer and the copy it is compared with); larger ones when a run starts.
    PREPARE_MAX_VOXELS = 256 * 2**20
    ACTIVITY_DELAY_MS = 100
    # CPU cores a threaded CPU run leaves to the viewer: with torch on every core, the GUI
    # thread's redraws take twice as long (2 cores: 6 probe runs, 2 with a gap over 100 ms; one
    # core left: 61-71 ms, the run ~35% longer). With a GPU, torch hardly uses the CPU.
    GUI_CORES = 1
    BOXES_EVERY_S = 1.0
    FOLLOW_DELAY_MS = 40  # follow mode waits for the slider to rest this long

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None) -> None:
        super().__init__(scrollable=False)
        # What the first volume run needs (napari's worker and progress bar, pandas for the
        # Shapes layer's features) is imported now, when the dock opens, rather than inside the
        # first click, where it froze the viewer for ~0.4 s (scripts/bench_gui_stall.py).
        import napari.qt.threading  # noqa: F401
        import napari.utils.progress  # noqa: F401
        import pandas  # noqa: F401

        self.viewer = napari_viewer
        self.sessions: dict[Image, Session] = {}
        self.worker: Any = None
        self.last_run: VolumeRun | None = None
        self._run: VolumeRun | None = None
        self._net: Any = None
        self._memory_model: tuple[Any, str] | None = None  # (model, description) from set_model
        self._flushing = False
        self._finish_pending = False
        self._token: busy.RunToken | None = None  # the run lock held by a volume run
        self._sync = False  # the volume run in progress is synchronous (tests, scripts)

        self._image = ComboBox(label="image", choices=self._image_choices)
        self._model_source = ComboBox(label="model", choices=self._model_choices,
                                      value=DEFAULT_MODEL)
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth",
                                    visible=False)
        self._model_info = Label(label="loaded", value="shipped default (loads on first run)")
        self._device = ComboBox(choices=list(DEVICES), value="auto",
                                tooltip="auto: CUDA when available, else the CPU")
        self._device_info = Label(value="")
        device_row = Container(layout="horizontal", labels=False, label="device",
                               widgets=[self._device, self._device_info])
        device_row.margins = (0, 0, 0, 0)
        self._batch = SpinBox(label="batch size", min=1, max=64, value=8,
                              tooltip="slices per forward pass in whole-volume runs")
        self._slice_button = PushButton(text="Segment slice",
                                        tooltip="segment the slice shown (instant)")
        self._volume_button = PushButton(text="Segment volume",
                                         tooltip="segment every slice in the background")
        self._cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(layout="horizontal", labels=False,
                            widgets=[self._slice_button, self._volume_button, self._cancel_button])
        buttons.margins = (0, 0, 0, 0)
        self._follow = CheckBox(text="follow the slider (segment each slice shown)", value=False)
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._status = Label(label="status", value="")
        self._threshold = FloatSlider(label="box score ≥", min=0.0, max=1.0, step=0.01,
                                      value=DEFAULT_SCORE_THRESHOLD,
                                      tooltip="boxes drawn; the mask does not change")
        self._top_k = SpinBox(label="boxes per slice", min=1, max=300, value=DEFAULT_TOP_K,
                              tooltip="at most this many best boxes drawn per slice")
        self.extend([self._image, self._model_source, self._checkpoint, self._model_info,
                     device_row, self._batch, buttons, self._follow,
                     self._progress, self._status, self._threshold, self._top_k])

        self._image.changed.connect(self.prepare_layers)
        self._model_source.changed.connect(self._on_model_source)
        self._checkpoint.changed.connect(self._on_checkpoint)
        self._device.changed.connect(self.resolve_device)
        self._slice_button.changed.connect(self.run_slice)
        self._volume_button.changed.connect(self.run_volume)
        self._cancel_button.changed.connect(self.cancel)
        self._follow.changed.connect(self._on_follow_toggled)
        self._threshold.changed.connect(self.refresh_boxes)
        self._top_k.changed.connect(self.refresh_boxes)

        layers_events = self.viewer.layers.events
        layers_events.inserted.connect(self._on_layer_inserted)
        layers_events.removed.connect(self._on_layer_removed)
        layers_events.reordered.connect(self._refresh_images)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_images)
        self._follow_timer = QTimer(self.native)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(self.FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self._follow_now)
        self.viewer.dims.events.current_step.connect(self._on_step)

        self._refresh_images()
        if model is not None:
            self.set_model(model)
        self.resolve_device()
        self.prepare_layers()

    # ------------------------------------------------------------------ image layer choice

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, _event: Any = None) -> None:
        self._image.reset_choices()

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_images)
        self._refresh_images()

    def _on_layer_removed(self, event: Any) -> None:
        self.sessions.pop(event.value, None)
        self._refresh_images()

    @property
    def image_layer(self) -> Image | None:
        return self._image.value

    @image_layer.setter
    def image_layer(self, layer: Image) -> None:
        self._refresh_images()
        self._image.value = layer

    def current_slice(self, layer: Image) -> int:
        """Index of the slice of ``layer`` shown in the viewer (respects scale and translate)."""
        return shown_slice(self.viewer, layer)

    # ------------------------------------------------------------------ model and device

    def set_model(self, net: Any, description: str = "in-memory model") -> None:
        """Use ``net`` (a torch module, e.g. just fine-tuned); it stays on offer as "in-memory
        model" in the model list after another model is chosen."""
        self._memory_model = (net, describe_model(net, None, description))
        with self._model_source.changed.blocked():
            self._model_source.reset_choices()
            self._model_source.value = IN_MEMORY
        self._on_model_source(IN_MEMORY)

    def _model_choices(self, _widget: Any = None) -> list[str]:
        # A callable: napari calls reset_choices() on docked widgets when layers change.
        extra = [IN_MEMORY] if self._memory_model is not None else []
        return [DEFAULT_MODEL, CHECKPOINT_FILE, *extra]

    @property
    def model_text(self) -> str:
        return self._model_info.value

    def _on_model_source(self, source: str) -> None:
        self._checkpoint.visible = source == CHECKPOINT_FILE
        self._net = None
        if source == IN_MEMORY and self._memory_model is not None:
            self._net, self._model_info.value = self._memory_model
        elif source == DEFAULT_MODEL:
            self._model_info.value = "shipped default (loads on first run)"
        elif Path(self._checkpoint.value).is_file():
            self.load_model()
        else:
            self._model_info.value = "choose a checkpoint file (.pt)"

    def _on_checkpoint(self, _path: Any = None) -> None:
        self._net = None
        if self._model_source.value != CHECKPOINT_FILE:
            self._model_source.value = CHECKPOINT_FILE  # calls load_model through _on_model_source
        else:
            self.load_model()

    def load_model(self) -> Any:
        """Load the chosen model (once); on failure show why and return None."""
        if self._net is not None:
            return self._net
        try:
            prepare_torch_import()
            from src_model.checkpoint import load_checkpoint

            if self._model_source.value == DEFAULT_MODEL:
                path, source = default_checkpoint(), "shipped default"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"the shipped default model {path} is missing from this installation; "
                        "reinstall napari-roiseg or choose a checkpoint file")
            else:
                path = Path(self._checkpoint.value)
                source = path.name
                if not path.is_file():
                    raise FileNotFoundError(f"'{path}' is not a file: choose a checkpoint (.pt) "
                                            "written by roiseg train or the Fine-tune widget")
            net, metadata = load_checkpoint(path)
            net.eval()
        except Exception as exc:  # GUI boundary: any failure becomes a message, never a crash
            self._model_info.value = "not loaded (see the error message)"
            show_error(f"Could not load the model: {exc}")
            return None
        self._net = net
        self._model_info.value = describe_model(net, metadata, source)
        return net

    def resolve_device(self, _choice: Any = None) -> str | None:
        """The device the model will run on, shown as e.g. "auto -> cpu"; None if unavailable."""
        choice = self._device.value
        try:
            prepare_torch_import()
            from src_model.device import resolve_device

            device = str(resolve_device(choice))
        except Exception as exc:  # e.g. cuda asked for on a machine without a GPU
            self._device_info.value = f"{choice}: unavailable"
            show_error(f"Device '{choice}' cannot be used: {exc}")
            return None
        self._device_info.value = f"{choice} -> {device}"
        return device

    # ------------------------------------------------------------------ runs

    def _session(self, layer: Image, shape: tuple[int, ...]) -> Session:
        session = self.sessions.get(layer)
        if session is None or session.result.labels.shape != shape:
            result = VolumeSegmentation(np.zeros(shape, np.uint8), np.zeros((0, 6), np.float32),
                                        np.zeros(shape[0], bool))
            session = self.sessions[layer] = Session(result, ResultLayers(self.viewer, layer))
        return session

    def prepare_layers(self, _value: Any = None) -> Session | None:
        """Make the chosen image's (empty) mask and boxes layers now, if it can be segmented.

        Called when an image is chosen: creating a layer stops the viewer for 0.1-0.3 s (software
        OpenGL), which must not happen once a run has started. Silent: an image that cannot be
        segmented gets no layers here, and its error message comes when a run is asked for.
        Returns the image's session, or None.
        """
        layer = self.image_layer
        if layer is None or self._run is not None or layer in self.sessions:
            return self.sessions.get(layer) if layer is not None else None
        try:
            data, _ = image_array(layer)
            if (not isinstance(data, np.ndarray) or isinstance(data, np.memmap)
                    or data.size > self.PREPARE_MAX_VOXELS):
                return None  # lazy, on-disk or huge: no scan or mask allocation just for a look
            volume = check_volume(data)
            check_finite(volume, label=f"'{layer.name}'")
            session = self._session(layer, volume.shape)
            session.layers.prepare(session.result.labels)
            self.show_boxes(session)
        except Exception:  # GUI boundary, silent by design: a run reports the problem
            return None
        return session

    def _prepare(self) -> tuple[Any, Session, Any, str] | None:
        """Check the inputs, load the model, get the output layers ready; notify on problems."""
        layer = self.image_layer
        if layer is None:
            show_error("No image to segment: open a volume (File > Open, or File > Open Sample > "
                       "ROI Seg) and choose it under 'image'.")
            return None
        try:
            data, _ = image_array(layer)
            volume = check_volume(data)
            check_finite(volume, label=f"'{layer.name}'")  # before any layer is made
        except (TypeError, ValueError) as exc:
            show_error(f"Cannot segment '{layer.name}': {exc}")
            return None
        net = self.load_model()
        device = self.resolve_device() if net is not None else None
        if net is None or device is None:
            return None
        session = self._session(layer, volume.shape)
        if session.model is not net:
            session.result.done[:] = False
            session.model = net
        self._notify(session.layers.prepare(session.result.labels))
        return volume, session, net, device

    def run_slice(self, _value: Any = None) -> int | None:
        """Segment the slice shown, synchronously; returns its index (None if nothing ran)."""
        if self._run is not None:
            show_info("A whole-volume run is in progress: wait for it or cancel it first.")
            return None
        token = busy.try_acquire("segmenting a slice")
        if token is None:
            show_error(busy.refusal("segmenting"))
            return None
        k = None
        try:
            prepared = self._prepare()
            if prepared is None:
                return None
            volume, session, net, device = prepared
            k = self.current_slice(self.image_layer)
            drain(iter_segment(volume, net, device=device, batch_size=1, slices=[k],
                               out=session.result))
        except Exception as exc:  # GUI boundary
            show_error(f"Segmenting slice {k} failed: {exc}")
            return None
        finally:
            token.release()
        self._notify(session.layers.write_slices(session.result.labels, [k]))
        session.layers.set_stats(session.result.stats)  # for the Review widget
        shown = self.show_boxes(session)
        area = int(session.result.labels[k].sum())
        self._status.value = f"slice {k}: mask {area} px, {shown} boxes shown"
        return k

    def run_volume(self, _value: Any = None, *, sync: bool = False) -> Any:
        """Segment every slice; in a napari worker (returned) unless ``sync`` (tests, scripts).

        Slices appear in the mask layer as their batch finishes; Cancel keeps what is done.
        """
        if self._run is not None:
            show_info("A whole-volume run is already in progress.")
            return None
        name = self.image_layer.name if self.image_layer is not None else "the volume"
        token = busy.try_acquire(f"segmenting '{name}'")
        if token is None:
            show_error(busy.refusal("segmenting"))
            return None
        prepared = self._prepare()
        if prepared is None:
            token.release()
            return None
        self._token = token  # released by _on_finished
        try:
            return self._start_volume(prepared, sync)
        except Exception as exc:  # GUI boundary: the run never started, so let go of it all
            self._end_run(self._run)
            show_error(f"Could not start segmenting {name}: {exc}")
            return None

    def _end_run(self, run: VolumeRun | None) -> None:
        """Let go of everything a volume run holds (the run lock, the GC freeze, napari's
        activity bar, hidden score text, disabled controls), whether it ran or never started."""
        self._run, self.worker = None, None
        if run is not None:
            self._unfreeze(run)
            self._box_text(run.session, True)
            if run.pbar is not None:
                run.pbar.close()
        if self._token is not None:
            self._token.release()
            self._token = None
        self._set_running(False)

    def _start_volume(self, prepared: tuple[Any, Session, Any, str], sync: bool) -> Any:
        volume, session, net, device = prepared
        total = volume.shape[0]
        run = self._run = VolumeRun(session, total)
        # Every slice is run again: its boxes are drawn batch by batch as they come (the
        # Shapes layer exists already when the image was chosen; else it is made here).
        if not session.layers.boxes_alive or session.layers.boxes_layer.nshapes:
            self.show_boxes(session, before=0)
        self._box_text(session, False)
        run.pbar_at = run.boxes_at = time.monotonic()
        self._progress.max, self._progress.value = total, 0
        self._status.value = f"segmenting {total} slices…"
        self._set_running(True)
        kwargs = {"device": device, "batch_size": int(self._batch.value), "out": session.result}
        self._sync = sync
        if sync:
            self._open_activity(run)
            try:
                for step in iter_segment(volume, net, **kwargs):
                    self._on_progress(step)
            except Exception as exc:  # GUI boundary
                self._on_error(exc)
            self._on_finished()
            return None
        from napari.qt.threading import create_worker

        # _connect wires the signals, then starts the thread; they arrive queued in this thread
        job = iter_segment
        if str(device).startswith("cpu"):
            import torch

            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
            job = _with_torch_threads(iter_segment, torch.get_num_threads(), cores - self.GUI_CORES)
        worker = self.worker = create_worker(
            job, volume, net, _ignore_errors=True, _start_thread=False, **kwargs,
            _connect={"yielded": self._on_progress, "errored": self._on_error,
                      "aborted": self._on_aborted, "finished": self._on_finished})
        # napari's activity bar costs 80-90 ms to make (its own redraw included): in a turn of
        # its own, after the one that redraws the dock, and before the first batch can arrive.
        # A full garbage collection of the napari process takes ~300 ms here: what exists now
        # is frozen for the run (gc.freeze), so a collection during it only sees new objects.
        gc.freeze()
        run.gc_frozen = True
        self._later(lambda: self._begin(run, worker), self.ACTIVITY_DELAY_MS)
        return worker

    def _begin(self, run: VolumeRun, worker: Any) -> None:
        """Make napari's activity bar, then start the worker in the next turn."""
        try:
            self._open_activity(run)
        except Exception as exc:  # GUI boundary: the run goes on with the dock's own bar
            show_error(f"napari's activity bar could not be shown: {exc}")
        self._later(worker.start)

    def _open_activity(self, run: VolumeRun) -> None:
        if run.pbar is None and not run.finishing:
            run.pbar = progress(total=run.total,
                                desc=f"Segmenting {run.session.layers.image_layer.name}")

    def cancel(self, _value: Any = None) -> None:
        """Stop a whole-volume run after the batch in progress; its slices stay."""
        if self.worker is not None and self._run is not None:
            self._run.cancelled = True
            self._status.value = "cancelling after this batch…"
            self.worker.quit()

    # Worker signals arrive in the GUI thread in order (every finished batch is yielded before
    # aborted/finished), but napari's progress bars, notifications and new layers process Qt
    # events, so a slot can be entered again while it runs. Hence: record the worker's count
    # first, do the GUI work in one non-reentrant _flush, and finish only after it.
    #
    # Each slot's work is followed, in the same turn of the event loop, by the redraw it asks
    # for (30 ms for the mask with software OpenGL; 60 ms once the boxes changed, since vispy
    # recompiles the Shapes layer's two mesh shaders). So the mask and the boxes are updated in
    # different turns: the boxes in a timer slot of their own, at most every BOXES_EVERY_S.
    def _on_progress(self, step: tuple[int, int]) -> None:
        run = self._run
        if run is None:
            return
        run.reported = max(run.reported, int(step[0]))
        run.batches += 1
        self._flush()

    def _flush(self) -> None:
        run = self._run
        if run is None or self._flushing:
            return
        self._flushing = True
        try:
            while run.done < run.reported:
                start, run.done = run.done, run.reported
                self._progress.value = run.done
                self._notify(run.session.layers.write_slices(run.session.result.labels,
                                                             range(start, run.done)))
                now = time.monotonic()
                due = now - run.pbar_at >= self.ACTIVITY_EVERY_S or run.done >= run.total
                if run.pbar is not None and due:
                    run.pbar_at, step, run.pbar_n = now, run.done - run.pbar_n, run.done
                    run.pbar.update(step)
        finally:
            self._flushing = False
        if self._finish_pending:
            self._on_finished()
        elif (not run.boxes_due and run.boxes_upto < run.done
              and time.monotonic() - run.boxes_at >= self.BOXES_EVERY_S):
            run.boxes_due = True
            self._later(lambda: self._draw_boxes(run))

    def _draw_boxes(self, run: VolumeRun) -> None:
        """Add the boxes of the slices done since the last call to the Shapes layer."""
        run.boxes_due = False
        if not run.session.layers.boxes_alive:  # deleted during the run: all of them again
            run.boxes_upto = run.shown = 0
        elif run.boxes_upto >= run.done:
            return
        start, run.boxes_upto = run.boxes_upto, run.done
        rows = run.session.result.boxes  # the worker's latest: it has these slices
        rows = rows[(rows[:, 0] >= start) & (rows[:, 0] < run.boxes_upto)]
        run.shown += run.session.layers.add_boxes(rows, float(self._threshold.value),
                                                  int(self._top_k.value))
        run.boxes_at = time.monotonic()

    def _later(self, fn: Any, delay_ms: int = 1) -> None:
        """Run ``fn`` in a later turn of the event loop (now, in a synchronous run)."""
        if self._sync:
            fn()
        else:
            QTimer.singleShot(delay_ms, fn)

    def _on_error(self, exc: BaseException) -> None:
        if self._run is not None:
            self._run.error = str(exc)
        show_error(f"Segmentation failed: {exc}")

    def _on_aborted(self) -> None:
        if self._run is not None:
            self._run.cancelled = True

    def _on_finished(self) -> None:
        if self._flushing:
            self._finish_pending = True
            return
        self._finish_pending = False
        self._flush()
        run = self._run
        if run is None or run.finishing:
            return
        run.finishing = True
        # The last boxes, then the end of the run, each in a turn of its own.
        self._later(lambda: (self._draw_boxes(run), self._later(lambda: self._complete(run))))

    def _complete(self, run: VolumeRun) -> None:
        """The run is over: show the boxes' scores, let go of the run lock, say how it ended."""
        self._end_run(run)
        self.last_run = run
        run.session.layers.set_stats(run.session.result.stats)  # for the Review widget
        if run.error:
            state = "failed"
        elif run.cancelled and run.done < run.total:
            state = "cancelled"
        else:
            state = "done"
        self._status.value = f"{state}: {run.done}/{run.total} slices, {run.shown} boxes shown"

    @staticmethod
    def _unfreeze(run: VolumeRun) -> None:
        if run.gc_frozen:
            gc.unfreeze()
            run.gc_frozen = False

    def _set_running(self, running: bool) -> None:
        for w in (self._slice_button, self._volume_button, self._image, self._model_source,
                  self._checkpoint, self._device, self._batch):
            w.enabled = not running
        self._cancel_button.enabled = running

    # ------------------------------------------------------------------ boxes and follow mode

    def show_boxes(self, session: Session, before: int | None = None) -> int:
        """Redraw ``session``'s boxes with the current threshold and top-k (no model run);
        ``before``: only those of slices ``< before``. Returns how many are drawn."""
        rows = session.result.boxes
        if before is not None:
            rows = rows[rows[:, 0] < before]
        return session.layers.show_boxes(rows, float(self._threshold.value),
                                         int(self._top_k.value))

    @staticmethod
    def _box_text(session: Session, visible: bool) -> None:
        """Show or hide the score text of the boxes. Hidden during a volume run: with software
        OpenGL every redraw of boxes with text on the slice shown costs ~40 ms more."""
        if session.layers.boxes_alive:
            session.layers.boxes_layer.text.visible = visible

    def refresh_boxes(self, _value: Any = None) -> None:
        """Apply the threshold / top-k controls to every image's boxes already drawn."""
        for session in self.sessions.values():
            if session.layers.boxes_layer is not None:
                run = self._run if self._run is not None and self._run.session is session \
                    else None
                shown = self.show_boxes(session, before=None if run is None else run.boxes_upto)
                if run is not None:
                    run.shown = shown

    def _on_step(self, _event: Any = None) -> None:
        if self._follow.value and self._run is None:
            self._follow_timer.start()

    def _on_follow_toggled(self, on: bool) -> None:
        if on:
            self._follow_now()

    def _follow_now(self) -> None:
        layer = self.image_layer
        if not self._follow.value or self._run is not None or layer is None:
            return
        session = self.sessions.get(layer)
        k = self.current_slice(layer)
        if (session is not None and self._net is not None and session.model is self._net
                and k < len(session.result.done) and session.result.done[k]):
            return  # already segmented by this model
        if self.run_slice() is None:
            self._follow.value = False  # one message, not one per slider step

    @staticmethod
    def _notify(message: str | None) -> None:
        if message:
            show_info(message)
