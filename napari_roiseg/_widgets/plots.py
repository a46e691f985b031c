"""A small matplotlib canvas for a dock widget: the live fine-tuning plot.

The drawing itself is :func:`napari_roiseg.finetune.draw_history` (Qt-free, also used to save the
figure as a PNG); this canvas only coalesces redraw requests so that a fast stream of training
steps costs at most one redraw per ``interval_ms``.
"""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from ..finetune import TrainingHistory, draw_history


class HistoryCanvas(FigureCanvasQTAgg):
    """Shows a :class:`TrainingHistory`; call :meth:`schedule` whenever it changed."""

    def __init__(self, history: TrainingHistory | None = None, interval_ms: int = 150,
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
        self._timer.timeout.connect(self.redraw)
        self.redraw()

    def set_history(self, history: TrainingHistory, title: str | None = None) -> None:
        self.history, self.title = history, title
        self.redraw()

    def schedule(self) -> None:
        """Redraw soon (requests arriving meanwhile are merged into that one redraw)."""
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        draw_history(self.figure, self.history, self.title)
        self.draw_idle()
        self.draws += 1
