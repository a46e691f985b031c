"""After a fine-tune: segment with the current version and compare, slice by slice.

*Segment volume with the current version* is the Segment step's own run (:mod:`.volume_run`),
not a second path: edited labels are kept and the new mask goes to a new layer. The readout
gives dice / precision / recall on the slice shown of the model's prediction (and of the newest
re-segmentation) against the corrected labels or another Labels layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Labels

from ..finetune import evaluate
from ..layers import as_slices
from ..session import Session
from .corrections_panel import CorrectionsPanel
from .hooks import ViewerHooks
from .pickers import COMPARE_PREFIX
from .volume_run import segmenter

SAME_AS_CORRECTED = "the corrected labels"


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from src_model.metrics import confusion_per_slice, scores_from_counts

    s = scores_from_counts(*confusion_per_slice(pred, truth))
    return {k: float(v[0]) for k, v in s.items()}


class ReadoutPanel(Container):
    """Readout reference, the slice's scores, Segment with the current version, the change."""

    def __init__(self, session: Session, corrections: CorrectionsPanel) -> None:
        super().__init__(labels=True)
        self.session = session
        self.corrections = corrections
        self.last_segmentation: dict[str, Any] | None = None
        self.latest: tuple[np.ndarray, str] | None = None  # newest re-segmentation, its version
        self.readout_values: dict[str, dict[str, float]] = {}
        self._segmenting = False  # a volume run this panel asked for is in progress
        self._truth = ComboBox(label="readout vs", choices=self._truth_choices)
        self._readout = Label(label="this slice")
        self._segment_button = PushButton(text="Segment volume with the current version")
        self._segment_info = Label(label="change")
        for label in (self._readout, self._segment_info):
            label.native.setWordWrap(True)
        self.extend([self._truth, self._readout, self._segment_button, self._segment_info])
        self.margins = (0, 0, 0, 0)
        self._truth.changed.connect(self.update_readout)
        self._segment_button.changed.connect(lambda: self.segment())
        corrections.listeners.append(self.update_readout)

    def hook(self, hooks: ViewerHooks) -> None:
        hooks.connect(self.session.viewer.dims.events.current_step, "update_readout", self)
        hooks.connect(self.session.viewer.layers.events.inserted, "_refresh_truth", self)
        hooks.connect(self.session.viewer.layers.events.removed, "_refresh_truth", self)
        hooks.connect(segmenter(self.session).finished, "_on_segmented", self)

    def _truth_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return [(SAME_AS_CORRECTED, None)] + [
            (layer.name, layer) for layer in self.session.viewer.layers
            if isinstance(layer, Labels) and not layer.name.startswith(COMPARE_PREFIX)]

    def _refresh_truth(self, _event: Any = None) -> None:
        self._truth.reset_choices()

    def set_running(self, running: bool) -> None:
        self._segment_button.enabled = not running

    def segment(self, sync: bool = False) -> Any:
        """Segment the whole volume with the session's current version (the Segment step's
        run: edited labels are kept, results go to a new layer)."""
        self._segmenting = True
        self._segment_info.value = "segmenting with the current version…"
        worker = segmenter(self.session).run_volume(sync=sync)
        if sync or worker is None:  # over (its end was seen), or it never started
            self._segmenting = False
        return worker

    def _on_segmented(self, run: Any) -> None:
        """A volume run ended: when this panel asked for it, compare with the corrections."""
        if not self._segmenting:
            return
        layer = run.kept.layers.labels_layer
        labels, version = run.kept.result.labels, run.kept.version or "model"
        self.latest = (np.array(labels, copy=True), version)
        project = self.session.project
        validation = (project.versions.get(version, {}).get("validation_slices") or []
                      if project else [])
        record: dict[str, Any] = {"layer": layer, "version": version, "validation": validation}
        text = f"'{layer.name}' holds {version}'s mask"
        state = self.corrections.state
        truth_layer, reference = self.corrections.labels_layer, state.reference
        if (validation and truth_layer is not None and reference is not None
                and reference.shape == labels.shape == as_slices(truth_layer.data).shape):
            truth = as_slices(truth_layer.data)
            before = evaluate(reference, truth, validation)["pooled"]["dice"]
            after = evaluate(labels, truth, validation)["pooled"]["dice"]
            record.update(before=before, after=after)
            text += (f"; dice on validation slices {before:.3f} ({state.reference_name})"
                     f" → {after:.3f} ({version}), {after - before:+.3f}")
        self.last_segmentation = record
        self._segmenting = False
        self._segment_info.value = text
        self.update_readout()

    def update_readout(self, _event: Any = None) -> None:
        """Dice / precision / recall on the slice shown, of the prediction(s) against the
        chosen reference labels (default: the corrected labels)."""
        truth_layer = self._truth.value or self.corrections.labels_layer
        if truth_layer is None:
            self._readout.value = ""
            return
        truth = as_slices(truth_layer.data)
        k = self.corrections.current_slice()
        if k >= truth.shape[0]:
            return
        heads = [f"slice {k}"] + [s for s in (self.corrections.corrections.status(k),) if s]
        self.readout_values = {}
        predictions = [(self.corrections.state.reference_name or "prediction",
                        self.corrections.state.reference)]
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
