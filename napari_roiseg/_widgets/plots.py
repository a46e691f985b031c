"""The docks' matplotlib canvases: the live fine-tuning plot and the review score plot.

The drawing itself is Qt-free (:func:`napari_roiseg.finetune.draw_history`,
:func:`napari_roiseg.review.draw_scores`, also used for the saved figures); the fine-tuning
canvas coalesces redraw requests so that a fast stream of training steps costs at most one
redraw per ``interval_ms``, and between full redraws blits its lines alone (a full draw, with
matplotlib's tight layout and text, took 0.1-0.15 s of the GUI thread on an idle 2-core
machine and 0.5-0.9 s on a busy one).
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
        self._background: Any = None
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
        """Draw the figure anew (layout, axes, text), keeping the lines out of the saved
        background so that :meth:`_update` can blit them alone."""
        self._artists = draw_history(self.figure, self.history, self.title)
        self._layout = self._shape()
        self._background = None
        moving = self._moving()
        if self.history.loss:  # head-room: the loss axis is redrawn only when outgrown
            axis = self._artists["loss"].axes
            low, high = axis.get_ylim()
            axis.set_ylim(low, high + 0.5 * (high - low))
        for artist in moving:
            artist.set_animated(True)
        if self.isVisible() and self.width() > 1:
            self.draw()  # synchronous: the background must be the finished frame
            self._background = self.copy_from_bbox(self.figure.bbox)
            self._blit(moving)
        else:
            self.draw_idle()
        self.draws += 1

    def _moving(self) -> list:
        names = ("loss", "dice", "precision", "recall", "best")
        return [self._artists[n] for n in names if self._artists.get(n) is not None]

    def _blit(self, moving: list) -> None:
        for artist in moving:
            artist.axes.draw_artist(artist)
        self.blit(self.figure.bbox)

    def _update(self) -> None:
        """Move the lines to the history's new points and draw only them (text and axes,
        ~100-150 ms per full draw here, stay as they were); a full redraw when the drawing
        changed (first points, a best step, another run) or the loss left its axis."""
        if not self.isVisible():  # e.g. another step's tab: drawn when shown
            self._background = None
            return
        h, artists = self.history, self._artists
        loss_axis = artists["loss"].axes
        if (self._shape() != self._layout or self._background is None
                or (h.loss and not loss_axis.get_ylim()[0] <= min(h.loss)
                    <= max(h.loss) <= loss_axis.get_ylim()[1])):
            self.redraw()
            return
        artists["loss"].set_data(h.loss_steps, h.loss)
        for name in ("dice", "precision", "recall"):
            artists[name].set_data(h.metric_steps, getattr(h, name))
        if artists["best"] is not None:
            artists["best"].set_xdata([h.best_step, h.best_step])
        self.restore_region(self._background)
        self._blit(self._moving())
        self.draws += 1

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._background is None and self._artists:
            QTimer.singleShot(0, self.redraw)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._background = None  # the next update draws everything at the new size


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
