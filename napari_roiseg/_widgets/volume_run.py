"""The one segmentation path of the docks: a slice now, or the volume in a napari worker.

One :class:`Segmenter` per session (:func:`segmenter`), used by the Segment step and by the
Fine-tune step's *Segment volume with the current version*: the model is always the session's
(``session.model()``), results go through :class:`napari_roiseg.layers.ResultLayers` (which
never overwrites the annotator's edits), and one result per image layer is kept across runs,
so a cancelled run's slices stay and slice-by-slice runs add up. The throttling that keeps the
viewer fluid during a volume run lives in :mod:`.volume_flush`.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from psygnal import Signal

from src_model.generators import drain

from ..layers import (DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K, ResultLayers, image_array,
                      layer_spacing_mm)
from ..segment import VolumeSegmentation, check_volume, iter_segment
from ..session import PROJECT, Session
from ..io.volumes import check_finite
from ..worker import worker_safe
from ..worker.remote import remote_segment
from .pickers import shown_slice
from .volume_flush import VolumeFlush, VolumeRun, _with_torch_threads


@dataclass
class ImageResult:
    """What is kept for one image layer between runs."""

    result: VolumeSegmentation  # the model's output so far (out= of every run)
    layers: ResultLayers
    model: Any = None  # the model that produced ``result.done``; another model starts over
    version: str | None = None  # its project version, if it is one


class Segmenter(VolumeFlush):
    """Segments the session's image with the session's model (see the module docstring).

    Signals: ``progress(done, total)``, ``status(text)``, ``running(bool)``, ``finished(run)``.
    """

    progress = Signal(int, int)
    status = Signal(str)
    running = Signal(bool)
    finished = Signal(object)

    # Images up to this many voxels get their result layers when chosen (a uint8 mask of this
    # size, twice: the layer and the copy it is compared with); larger ones when a run starts.
    PREPARE_MAX_VOXELS = 256 * 2**20
    # CPU cores a threaded CPU run leaves to the viewer: with torch on every core, the GUI
    # thread's redraws take twice as long (2 cores: 6 probe runs, 2 with a gap over 100 ms).
    GUI_CORES = 1

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.score_threshold = DEFAULT_SCORE_THRESHOLD
        self.top_k = DEFAULT_TOP_K
        self.batch_size: int | None = None  # None: segment.default_batch_size(device)
        self.worker: Any = None
        self.last_run: VolumeRun | None = None
        self._token: Any = None

    @property
    def results(self) -> dict[Image, ImageResult]:
        return self.session.results

    @property
    def busy(self) -> bool:
        return self._run is not None

    # ------------------------------------------------------------------ preparing

    def _result(self, layer: Image, shape: tuple[int, ...]) -> ImageResult:
        kept = self.results.get(layer)
        if kept is None or kept.result.labels.shape != shape:
            result = VolumeSegmentation(np.zeros(shape, np.uint8), np.zeros((0, 6), np.float32),
                                        np.zeros(shape[0], bool))
            kept = self.results[layer] = ImageResult(result, ResultLayers(self.session.viewer,
                                                                          layer))
        return kept

    def _adopt(self, kept: ImageResult, only_if_unset: bool = False) -> None:
        """The session's mask and boxes are this image's result layers from now on (after a
        run wrote them; for empty new layers only where none was chosen)."""
        session, layers = self.session, kept.layers
        viewer_layers = session.viewer.layers
        mask = session.mask_layer
        # The mask stays on a layer the annotator is correcting (a run wrote to a new one)
        if layers.labels_layer is not None and (mask is None or mask not in viewer_layers):
            session.mask_layer = layers.labels_layer
        if layers.boxes_layer is not None and not (only_if_unset and session.boxes_layer):
            session.boxes_layer = layers.boxes_layer
        if kept.version and layers.labels_layer is not None and not only_if_unset:
            layers.labels_layer.metadata = {**layers.labels_layer.metadata,
                                            "roiseg_version": kept.version}

    def prepare_layers(self) -> ImageResult | None:
        """Make the chosen image's (empty) mask and boxes layers now, if it can be segmented.

        Called when an image is chosen: creating a layer stops the viewer for 0.1-0.3 s
        (software OpenGL), which must not happen once a run has started. Silent: an image that
        cannot be segmented gets no layers here; its error message comes with a run.
        """
        layer = self.session.image_layer
        if layer is None or self._run is not None or layer in self.results:
            return self.results.get(layer) if layer is not None else None
        try:
            data, _ = image_array(layer)
            if (not isinstance(data, np.ndarray) or isinstance(data, np.memmap)
                    or data.size > self.PREPARE_MAX_VOXELS):
                return None  # lazy, on-disk or huge: no scan or mask allocation just for a look
            volume = check_volume(data)
            check_finite(volume, label=f"'{layer.name}'")
            kept = self._result(layer, volume.shape)
            kept.layers.prepare(kept.result.labels)
            self.show_boxes(kept)
        except Exception:  # GUI boundary, silent by design: a run reports the problem
            return None
        self._adopt(kept, only_if_unset=True)
        if self.session.uses_process:  # the model process imports torch while one looks
            self.session.process_worker(start=True)
        return kept

    def _prepare(self, sync: bool = True) -> tuple[Any, ImageResult, Any, str] | None:
        """Check the inputs, load the model (or, for the model process, describe it), get the
        output layers ready; notify on problems."""
        layer = self.session.image_layer
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
        remote = self.session.uses_process and not sync
        try:  # the model process loads the model itself: here only what it is
            net = self.session.model_spec() if remote else self.session.model()
        except Exception as exc:  # GUI boundary: any failure becomes a message, never a crash
            show_error(f"Could not load the model: {exc}")
            return None
        try:  # the model process checks the device itself (no torch import here)
            device = self.session.device if remote else self.session.resolve_device()
        except Exception as exc:  # e.g. cuda asked for on a machine without a GPU
            show_error(f"Device '{self.session.device}' cannot be used: {exc}")
            return None
        kept = self._result(layer, volume.shape)
        if kept.model != net:  # a model (by identity) or the model process's description
            kept.result.done[:] = False
            kept.model = net
        project = self.session.project
        kept.version = (project.current_version if project is not None
                        and self.session.source == PROJECT else None)
        self._notify(kept.layers.prepare(kept.result.labels))
        return volume, kept, net, device

    # ------------------------------------------------------------------ runs

    def run_slice(self) -> int | None:
        """Segment the slice shown, synchronously; returns its index (None if nothing ran)."""
        if self._run is not None:
            show_info("A whole-volume run is in progress: wait for it or cancel it first.")
            return None
        from .. import busy

        token = self.session.try_run("segmenting a slice")
        if token is None:
            show_error(busy.refusal("segmenting"))
            return None
        k = None
        try:
            prepared = self._prepare()
            if prepared is None:
                return None
            volume, kept, net, device = prepared
            k = shown_slice(self.session.viewer, self.session.image_layer)
            drain(iter_segment(volume, net, device=device, batch_size=1, slices=[k],
                               out=kept.result,
                               spacing=layer_spacing_mm(self.session.image_layer)))
        except Exception as exc:  # GUI boundary
            show_error(f"Segmenting slice {k} failed: {exc}")
            return None
        finally:
            self.session.end_run(token)
        self._notify(kept.layers.write_slices(kept.result.labels, [k]))
        kept.layers.set_stats(kept.result.stats)  # for the Review step
        self._adopt(kept)
        shown = self.show_boxes(kept)
        self.status.emit(f"slice {k}: mask {int(kept.result.labels[k].sum())} px, "
                         f"{shown} boxes shown")
        return k

    def run_volume(self, sync: bool = False) -> Any:
        """Segment every slice; in a napari worker (returned) unless ``sync`` (tests, scripts).

        Slices appear in the mask layer as their batch finishes; Cancel keeps what is done.
        """
        if self._run is not None:
            show_info("A whole-volume run is already in progress.")
            return None
        from .. import busy

        image = self.session.image_layer
        name = image.name if image is not None else "the volume"
        token = self.session.try_run(f"segmenting '{name}'")
        if token is None:
            show_error(busy.refusal("segmenting"))
            return None
        prepared = self._prepare(sync)
        if prepared is None:
            self.session.end_run(token)
            return None
        self._token = token  # released by _end_run
        try:
            return self._start(prepared, sync)
        except Exception as exc:  # GUI boundary: the run never started, so let go of it all
            self._end_run(self._run)
            show_error(f"Could not start segmenting {name}: {exc}")
            return None

    def _start(self, prepared: tuple[Any, ImageResult, Any, str], sync: bool) -> Any:
        volume, kept, net, device = prepared
        run = self._begin_run(kept, volume.shape[0])
        run.model = net
        self.running.emit(True)
        from src_model.resolution import describe

        spacing = layer_spacing_mm(self.session.image_layer)
        note = describe(getattr(net, "config", None), volume.shape, spacing)
        self.status.emit(f"segmenting {run.total} slices…" + (f" ({note})" if note else ""))
        self.progress.emit(0, run.total)
        kwargs = {"device": device, "batch_size": self.batch_size, "out": kept.result,
                  "spacing": spacing}
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

        job, args = iter_segment, (volume, net)
        if self.session.uses_process:
            job, args = remote_segment, (self.session, volume, net)
        elif str(device).startswith("cpu"):
            import torch

            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
            job = _with_torch_threads(iter_segment, torch.get_num_threads(), cores - self.GUI_CORES)
        # _connect wires the signals, then starts the thread; they arrive queued in this thread
        worker = self.worker = create_worker(
            worker_safe(job), *args, _ignore_errors=True, _start_thread=False, **kwargs,
            _connect={"yielded": self._on_progress, "errored": self._on_error,
                      "aborted": self._on_aborted, "finished": self._on_finished})
        # A full garbage collection of the napari process takes ~300 ms here: what exists now
        # is frozen for the run (gc.freeze), so a collection during it only sees new objects.
        gc.freeze()
        run.gc_frozen = True
        # napari's activity bar costs 80-90 ms to make: in a turn of its own, after the one
        # that redraws the dock, and before the first batch can arrive.
        self._later(lambda: self._launch(run, worker), self.ACTIVITY_DELAY_MS)
        return worker

    def _complete(self, run: VolumeRun) -> None:
        """The run is over: show the boxes' scores, let go of the run lock, say how it ended."""
        self._end_run(run)
        self.last_run = run
        run.kept.layers.set_stats(run.kept.result.stats)  # for the Review step
        self._adopt(run.kept)
        state = ("failed" if run.error else "cancelled" if run.cancelled and run.done < run.total
                 else "done")
        self.status.emit(f"{state}: {run.done}/{run.total} slices, {run.shown} boxes shown")
        self.finished.emit(run)

def segmenter(session: Session) -> Segmenter:
    """The session's one :class:`Segmenter` (made on first use)."""
    runner = session.extras.get("segmenter")
    if runner is None:
        runner = session.extras["segmenter"] = Segmenter(session)
    return runner
