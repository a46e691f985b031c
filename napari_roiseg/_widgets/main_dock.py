"""The main dock: the whole loop in one place, as steps (Segment -> Correct -> Fine-tune ->
Review), over one session.

The image, the mask and boxes layers and the model are chosen once, at the top, for every
step; the project folder and its versions sit with the Fine-tune step. Every step is a panel
that reads and writes the viewer's :class:`~napari_roiseg.session.Session` (the single-step
docks show the same panels), so a version made by fine-tuning or accepted by the gate is what
the next segmentation uses. Each step scrolls on its own, so the dock fits a 1080p screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .corrections_panel import CorrectionsPanel
from .finetune_panel import FinetunePanel
from .gate_panel import GatePanel
from .hooks import SessionDock, ViewerHooks
from .model_panel import ModelPanel
from .pickers import LayerPickers
from .project_panel import ProjectPanel
from .readout_panel import ReadoutPanel
from .review_panel import ReviewPanel
from .segment_panel import SegmentPanel
from .segment_widget import hook_segmenter, preload_run_modules

if TYPE_CHECKING:
    import napari

STEPS = ("Segment", "Correct", "Fine-tune", "Review")


def _scrolling(*parts: Any) -> QScrollArea:
    """The parts one under the other, scrolling when the screen is short."""
    inner = QWidget()
    layout = QVBoxLayout(inner)
    for part in parts:
        layout.addWidget(getattr(part, "native", part))
    layout.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(inner)
    return area


class RoisegDock(SessionDock):
    """Dock: every step of the loop, with the image and the model chosen once.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Use this model instead of the shipped default (a new project saves it as v000).
    project : folder, optional
        Open this project folder at once.
    """

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None,
                 project: Any = None) -> None:
        super().__init__(napari_viewer)
        preload_run_modules()
        session = self.session
        if model is not None:
            session.set_model(model, "model given to the widget")
        self.pickers = LayerPickers(session)
        self.model_panel = ModelPanel(session)
        self.segment = SegmentPanel(session)
        self.correct = CorrectionsPanel(session)
        self.project_panel = ProjectPanel(session)
        self.tune = FinetunePanel(session, self.correct)
        self.readout = ReadoutPanel(session, self.correct)
        self.review = ReviewPanel(session)
        self.gate_panel = GatePanel(session, self.review)
        self.tune.running_listeners.append(self.readout.set_running)
        self.steps = QTabWidget()
        for name, parts in zip(STEPS, (
                (self.segment,), (self.correct,),
                (self.project_panel, self.tune, self.readout), (self.review, self.gate_panel))):
            self.steps.addTab(_scrolling(*parts), name)
        layout = QVBoxLayout(self)
        layout.addWidget(self.pickers.native)
        layout.addWidget(self.model_panel.native)
        layout.addWidget(self.steps, 1)
        self.setMinimumWidth(380)
        self.parts = (self.pickers, self.model_panel, self.segment, self.correct,
                      self.project_panel, self.tune, self.readout, self.review, self.gate_panel)
        self.start_hooks()
        self.segment.runner.prepare_layers()
        if project is not None:
            self.project_panel.open_project(project)

    def hook(self, hooks: ViewerHooks) -> None:
        super().hook(hooks)
        hook_segmenter(hooks, self.session, self.pickers, self.model_panel)

    def show_step(self, name: str) -> None:
        """Bring step ``name`` (one of ``STEPS``) to the front."""
        self.steps.setCurrentIndex(STEPS.index(name))
