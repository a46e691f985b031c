"""How a whole-volume run reaches the viewer without ever freezing it for 100 ms.

Measured with ``scripts/bench_gui_stall.py`` (software OpenGL, 2 cores):

- the result layers are made when the image is chosen, not when the run starts (creating a
  layer costs 0.1-0.3 s);
- each batch's boxes are added to the Shapes layer (a few ms) instead of rebuilding it (all
  rectangles re-triangulated: 55 ms for 140), only once the slice shown is done (else at the
  end), at most every ``BOXES_EVERY_S``, in a turn of the event loop of their own: the redraw a slot asks for runs in the same turn (30 ms for the mask;
  60 ms once the boxes changed, since vispy recompiles the Shapes layer's two mesh shaders);
- napari's activity progress bar, whose update runs ``QApplication.processEvents()`` and so a
  redraw in the same slot, is updated at most once every ``ACTIVITY_EVERY_S``, and the dock's
  progress bar at most every ``PROGRESS_EVERY_S`` (with napari's OpenGL canvas in the window,
  Qt composes the whole window for any widget's repaint);
- the score text of the boxes is hidden during the run (~40 ms more per redraw).

Worker signals arrive in the GUI thread in order (every finished batch is yielded before
aborted/finished), but progress bars, notifications and new layers process Qt events, so a slot
can be entered again while it runs. Hence: record the worker's count first, do the GUI work in
one non-reentrant :meth:`VolumeFlush._flush`, and finish only after it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..layers import plane_shown


def _with_torch_threads(job: Any, default: int, at_most: int) -> Any:
    """``job`` (a generator function) run with torch limited to ``at_most`` threads (at least
    1), then back to ``default``. Set inside the worker: with OpenMP, torch's thread count
    belongs to the thread that sets it."""

    def limited(*args: Any, **kwargs: Any) -> Any:
        import torch

        torch.set_num_threads(max(1, min(default, at_most)))
        try:
            return (yield from job(*args, **kwargs))
        finally:
            torch.set_num_threads(default)

    return limited


@dataclass
class VolumeRun:
    """A whole-volume run: its progress and how it ended (``last_run`` after it)."""

    kept: Any  # the image's ImageResult
    total: int
    model: Any = None
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
    progress_at: float = 0.0  # time.monotonic() of the last progress signal
    cancelled: bool = False
    error: str | None = None
    pbar: Any = None


class VolumeFlush:
    """The throttled GUI side of a volume run (see the module docstring); the subclass starts
    runs and provides ``session``, ``worker``, ``_token``, the ``progress`` and ``running``
    signals and ``_complete``."""

    ACTIVITY_EVERY_S = 1.0
    PROGRESS_EVERY_S = 0.5
    ACTIVITY_DELAY_MS = 100
    BOXES_EVERY_S = 1.0

    score_threshold: float
    top_k: int

    def __init__(self) -> None:
        self._run: VolumeRun | None = None
        self._flushing = False
        self._finish_pending = False
        self._sync = False  # the volume run in progress is synchronous (tests, scripts)

    def _begin_run(self, kept: Any, total: int) -> VolumeRun:
        run = self._run = VolumeRun(kept, total)
        # Every slice is run again: its boxes are drawn batch by batch as they come (the
        # Shapes layer exists already when the image was chosen; else it is made here).
        if not kept.layers.boxes_alive or kept.layers.boxes_layer.nshapes:
            self.show_boxes(kept, before=0)
        self._box_text(kept, False)
        run.pbar_at = run.boxes_at = time.monotonic()
        return run

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
                now = time.monotonic()
                if now - run.progress_at >= self.PROGRESS_EVERY_S or run.done >= run.total:
                    run.progress_at = now  # each repaint of the dock costs the window a frame
                    self.progress.emit(run.done, run.total)
                self._notify(run.kept.layers.write_slices(run.kept.result.labels,
                                                          range(start, run.done)))
                due = now - run.pbar_at >= self.ACTIVITY_EVERY_S or run.done >= run.total
                if run.pbar is not None and due:
                    run.pbar_at, step, run.pbar_n = now, run.done - run.pbar_n, run.done
                    run.pbar.update(step)
        finally:
            self._flushing = False
        if self._finish_pending:
            self._on_finished()
        elif (not run.boxes_due and run.boxes_upto < run.done and self._boxes_shown(run)
              and time.monotonic() - run.boxes_at >= self.BOXES_EVERY_S):
            run.boxes_due = True
            self._later(lambda: self._draw_boxes(run))

    def _boxes_shown(self, run: VolumeRun) -> bool:
        """Whether the boxes not drawn yet include some the viewer shows. Seen slice by slice
        along the first axis, only the shown slice's are; the rest are drawn with it, or at
        the end (each change of the Shapes layer costs a redraw, a shader build and a new
        layer-list thumbnail: 100-200 ms with software OpenGL)."""
        shown = plane_shown(self.session.viewer, run.kept.layers.image_layer)
        return shown is None or run.boxes_upto <= shown < run.done

    def _draw_boxes(self, run: VolumeRun) -> None:
        """Add the boxes of the slices done since the last call to the Shapes layer."""
        run.boxes_due = False
        if not run.kept.layers.boxes_alive:  # deleted during the run: all of them again
            run.boxes_upto = run.shown = 0
        elif run.boxes_upto >= run.done:
            return
        start, run.boxes_upto = run.boxes_upto, run.done
        rows = run.kept.result.boxes  # the worker's latest: it has these slices
        rows = rows[(rows[:, 0] >= start) & (rows[:, 0] < run.boxes_upto)]
        run.shown += run.kept.layers.add_boxes(rows, self.score_threshold, self.top_k)
        run.boxes_at = time.monotonic()

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

    def _launch(self, run: VolumeRun, worker: Any) -> None:
        try:
            self._open_activity(run)
        except Exception as exc:  # GUI boundary: the run goes on with the dock's own bar
            show_error(f"napari's activity bar could not be shown: {exc}")
        self._later(worker.start)

    def _open_activity(self, run: VolumeRun) -> None:
        if run.pbar is None and not run.finishing:
            run.pbar = progress(total=run.total,
                                desc=f"Segmenting {run.kept.layers.image_layer.name}")

    def cancel(self) -> None:
        """Stop a whole-volume run after the batch in progress; its slices stay."""
        if self.worker is not None and self._run is not None:
            self._run.cancelled = True
            self.status.emit("cancelling after this batch…")
            if self.session.uses_process and not self._sync:  # stops within a second
                self.session.process_worker().cancel()
            else:
                self.worker.quit()

    def _end_run(self, run: VolumeRun | None) -> None:
        """Let go of everything a volume run holds (the run lock, the GC freeze, napari's
        activity bar, hidden score text), whether it ran or never started."""
        self._run, self.worker = None, None
        if run is not None:
            if run.gc_frozen:
                gc.unfreeze()
                run.gc_frozen = False
            self._box_text(run.kept, True)
            if run.pbar is not None:
                run.pbar.close()
        self.session.end_run(self._token)
        self._token = None
        self.running.emit(False)

    def _later(self, fn: Any, delay_ms: int = 1) -> None:
        """Run ``fn`` in a later turn of the event loop (now, in a synchronous run)."""
        if self._sync:
            fn()
        else:
            QTimer.singleShot(delay_ms, fn)

    @staticmethod
    def _notify(message: str | None) -> None:
        if message:
            show_info(message)

    # ------------------------------------------------------------------ boxes

    def show_boxes(self, kept: Any, before: int | None = None) -> int:
        """Redraw ``kept``'s boxes with the current threshold and top-k (no model run);
        ``before``: only those of slices ``< before``. Returns how many are drawn."""
        rows = kept.result.boxes
        if before is not None:
            rows = rows[rows[:, 0] < before]
        return kept.layers.show_boxes(rows, self.score_threshold, self.top_k)

    @staticmethod
    def _box_text(kept: Any, visible: bool) -> None:
        """Show or hide the score text of the boxes (hidden during a volume run)."""
        if kept.layers.boxes_alive:
            kept.layers.boxes_layer.text.visible = visible

    def refresh_boxes(self, results: Any) -> None:
        """Apply the threshold / top-k to every image's boxes already drawn (``results``: the
        session's ImageResults)."""
        for kept in results:
            if kept.layers.boxes_layer is not None:
                run = self._run if self._run is not None and self._run.kept is kept else None
                shown = self.show_boxes(kept, before=None if run is None else run.boxes_upto)
                if run is not None:
                    run.shown = shown
