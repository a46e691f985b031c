"""The docks' matplotlib canvases: the live fine-tuning plot and the review score plot.

The drawing itself is Qt-free (:func:`napari_roiseg.finetune.draw_history`,
:func:`napari_roiseg.review.draw_scores`, also used for the saved figures); the fine-tuning
canvas coalesces redraw requests so that a fast stream of training steps costs at most one
redraw per ``interval_ms``, and between full redraws only moves its lines (a full one, with
matplotlib's tight layout, took 0.5-0.9 s of the GUI thread on a busy 2-core machine).
"""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from typing import Any

from ..finetune import TrainingHistory, draw_history
from ..review import ReviewScores, draw_scores


class HistoryCanvas(FigureCanvasQTAgg):
    """Shows a :class:`TrainingHistory`; call :meth:`schedule` whenever it changed."""

    def __init__(self, history: TrainingHistory | None = None, interval_ms: int = 1000,
                 height_px: int = 260) -> None:
        super().__init__(Figure(figsize=(4, 2.8), dpi=80))
        self.history = history or TrainingHistory()
        self.title: str | None = None
        self.draws = 0  # how many times the figure was redrawn (tests, diagnostics)
        self.setMinimumHeight(height_px)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._update)
        self._artists: dict[str, Any] = {}
        self._layout: tuple = ()
        self.redraw()

    def set_history(self, history: TrainingHistory, title: str | None = None) -> None:
        self.history, self.title = history, title
        self.redraw()

    def schedule(self) -> None:
        """Redraw soon (requests arriving meanwhile are merged into that one redraw)."""
        if not self._timer.isActive():
            self._timer.start()

    def _shape(self) -> tuple:
        h = self.history
        return (self.title, h.total_steps, h.before is not None, h.best_step is not None,
                bool(h.loss), bool(h.metric_steps))

    def redraw(self) -> None:
        """Draw the figure anew (layout included)."""
        self._artists = draw_history(self.figure, self.history, self.title)
        self._layout = self._shape()
        self.draw_idle()
        self.draws += 1

    def _update(self) -> None:
        """Move the lines to the history's new points; a full redraw when what is drawn
        changed (the first points, a best step, another run)."""
        if self._shape() != self._layout:
            self.redraw()
            return
        h, artists = self.history, self._artists
        artists["loss"].set_data(h.loss_steps, h.loss)
        for name in ("dice", "precision", "recall"):
            artists[name].set_data(h.metric_steps, getattr(h, name))
        if artists["best"] is not None:
            artists["best"].set_xdata([h.best_step, h.best_step])
        ax_loss = artists["loss"].axes
        ax_loss.relim()
        ax_loss.autoscale_view()
        self.draw_idle()
        self.draws += 1


class ScoreCanvas(FigureCanvasQTAgg):
    """The review score along the slice axis; a click jumps to the slice under the mouse."""

    def __init__(self, on_click: Any) -> None:
        super().__init__(Figure(figsize=(4, 1.8), dpi=80))
        self.setMinimumHeight(130)
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
