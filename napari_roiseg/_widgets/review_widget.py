"""The Review dock (review only): the queue of slices to look at first, marks, correction
history, the locked evaluation set, the gate for new model versions, and the report.

A thin dock over the session's panels (:mod:`.review_panel`, :mod:`.gate_panel`), for users who
want this step alone; the main dock (:mod:`.main_dock`) shows the same panels as its Review
step. Gating, comparing and locking run in workers under the run lock, so they are refused
while a segmentation or a fine-tune runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels, Shapes

from .gate_panel import GatePanel
from .hooks import SessionDock
from .pickers import LayerPickers
from .project_panel import ProjectPanel
from .review_panel import NEXT_KEY, PREVIOUS_KEY, ReviewPanel

if TYPE_CHECKING:
    import napari

__all__ = ["NEXT_KEY", "PREVIOUS_KEY", "ReviewWidget"]


class ReviewWidget(SessionDock):
    """Dock: the review queue (table + plot), marks, history, locked set, gate, report.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    project : folder, optional
        Open this project folder at once (else the volume's default project on first need).
    """

    FORWARD = {"review": ("scores", "table", "canvas", "shortcuts", "snapshots", "marks",
                          "history", "refresh_scores", "current_slice", "go_to", "step",
                          "prediction", "mark_current", "record_slice", "record_edits"),
               "gate_panel": ("decision", "compare_view", "reference_masks", "lock", "gate",
                              "compare", "export_report"),
               "project_panel": ("open_project",)}

    def __init__(self, napari_viewer: napari.Viewer, project: Any = None) -> None:
        super().__init__(napari_viewer)
        self.pickers = LayerPickers(self.session)
        self.project_panel = ProjectPanel(self.session, versions=False)
        self.review = ReviewPanel(self.session)
        self.gate_panel = GatePanel(self.session, self.review)
        self.arrange(self.pickers, self.project_panel, self.review, self.gate_panel)
        if project is not None:
            self.open_project(project)

    def select(self, image: Image | None = None, labels: Labels | None = None,
               boxes: Shapes | None = None) -> None:
        """Choose the layers (what the combo boxes do)."""
        self.pickers.choose(image=image, mask=labels, boxes=boxes)
