"""The Segment step: the slice shown, the whole volume (cancellable), or follow the slider.

Runs go through the session's one :class:`~.volume_run.Segmenter`; this panel holds only its
controls.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer

from ..layers import DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K
from ..session import Session
from .hooks import ViewerHooks
from .pickers import shown_slice
from .volume_run import segmenter


# 0: segment.default_batch_size, the one default of every run
BATCH_SIZES = [("auto (2 on the CPU, 16 on a GPU)", 0), *((str(n), n) for n in (1, 2, 4, 8, 16, 32,
                                                                                64))]


class SegmentPanel(Container):
    """Buttons, batch size, follow mode, progress and the boxes' display limits."""

    FOLLOW_DELAY_MS = 40  # follow mode waits for the slider to rest this long

    def __init__(self, session: Session) -> None:
        super().__init__(labels=True)
        self.session = session
        self.runner = segmenter(session)
        self._batch = ComboBox(label="batch size", value=0, choices=BATCH_SIZES,
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
        self.extend([self._batch, buttons, self._follow, self._progress, self._status,
                     self._threshold, self._top_k])
        self.margins = (0, 0, 0, 0)
        self._slice_button.changed.connect(lambda: self.run_slice())
        self._volume_button.changed.connect(lambda: self.run_volume())
        self._cancel_button.changed.connect(self.runner.cancel)
        self._follow.changed.connect(self._on_follow_toggled)
        self._threshold.changed.connect(self.refresh_boxes)
        self._top_k.changed.connect(self.refresh_boxes)
        self._follow_timer = QTimer(self.native)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(self.FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self._follow_now)

    def hook(self, hooks: ViewerHooks) -> None:
        runner = self.runner
        hooks.connect(runner.progress, "_on_progress", self)
        hooks.connect(runner.status, "_on_status", self)
        hooks.connect(runner.running, "set_running", self)
        hooks.connect(self.session.viewer.dims.events.current_step, "_on_step", self)

    def _apply_limits(self) -> None:
        self.runner.score_threshold = float(self._threshold.value)
        self.runner.top_k = int(self._top_k.value)
        self.runner.batch_size = int(self._batch.value) or None

    def run_slice(self) -> int | None:
        """Segment the slice shown (see ``Segmenter.run_slice``)."""
        self._apply_limits()
        return self.runner.run_slice()

    def run_volume(self, sync: bool = False) -> Any:
        """Segment the whole volume (see ``Segmenter.run_volume``)."""
        self._apply_limits()
        return self.runner.run_volume(sync=sync)

    def cancel(self) -> None:
        self.runner.cancel()

    def refresh_boxes(self, _value: Any = None) -> None:
        """Apply the threshold / top-k controls to every image's boxes already drawn."""
        self._apply_limits()
        self.runner.refresh_boxes(list(self.session.results.values()))

    def _on_progress(self, done: int, total: int) -> None:
        self._progress.max, self._progress.value = total, done

    def _on_status(self, text: str) -> None:
        self._status.value = text

    def set_running(self, running: bool) -> None:
        for w in (self._slice_button, self._volume_button, self._batch):
            w.enabled = not running
        self._cancel_button.enabled = running

    def _on_step(self, _event: Any = None) -> None:
        if self._follow.value and not self.runner.busy:
            self._follow_timer.start()

    def _on_follow_toggled(self, on: bool) -> None:
        if on:
            self._follow_now()

    def _follow_now(self) -> None:
        layer = self.session.image_layer
        if not self._follow.value or self.runner.busy or layer is None:
            return
        kept = self.session.results.get(layer)
        k = shown_slice(self.session.viewer, layer)
        net = self.session.loaded_model()
        if (kept is not None and net is not None and kept.model is net
                and k < len(kept.result.done) and kept.result.done[k]):
            return  # already segmented by this model
        if self.run_slice() is None:
            self._follow.value = False  # one message, not one per slider step
