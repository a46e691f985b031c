"""The Fine-tune dock (correct and fine-tune only): project, corrections, training, readout.

A thin dock over the session's panels, for users who want these steps alone; the main dock
(:mod:`.main_dock`) shows the same panels as its Correct and Fine-tune steps. The image, the
mask, the project and the model are the viewer's :class:`~napari_roiseg.session.Session`'s,
shared with every other dock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels

from .corrections_panel import CorrectionsPanel
from .finetune_panel import FinetunePanel
from .hooks import SessionDock
from .pickers import LayerPickers
from .project_panel import ProjectPanel
from .readout_panel import ReadoutPanel

if TYPE_CHECKING:
    import napari


class FinetuneWidget(SessionDock):
    """Dock: list and mark corrected slices, fine-tune on them in the background with a live
    plot, keep model versions in a project folder, roll back, re-segment.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Starting model of a new project (default: the shipped default model).
    project : folder, optional
        Open this project folder at once.
    """

    FORWARD = {"correct": ("plan", "refresh_corrections", "save_corrections", "mark_current",
                           "current_slice", "go_to", "corrections", "reference"),
               "tune": ("start", "stop", "worker", "history", "canvas", "last_result"),
               "readout": ("segment", "update_readout", "last_segmentation", "latest",
                           "readout_values"),
               "project_panel": ("open_project", "use_version")}

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None,
                 project: Any = None) -> None:
        super().__init__(napari_viewer)
        if model is not None:
            self.session.set_model(model, "model given to the widget")
        self.pickers = LayerPickers(self.session, show=("image", "mask"),
                                    labels={"mask": "corrected labels"})
        self.project_panel = ProjectPanel(self.session)
        self.correct = CorrectionsPanel(self.session)
        self.tune = FinetunePanel(self.session, self.correct)
        self.readout = ReadoutPanel(self.session, self.correct)
        self.tune.running_listeners.append(self.readout.set_running)
        self.arrange(self.project_panel, self.pickers, self.correct, self.tune, self.readout)
        if project is not None:
            self.open_project(project)

    @property
    def model(self) -> Any:
        """The model the next run uses, if loaded."""
        return self.session.loaded_model()

    def _ensure_model(self) -> Any:
        """The model a fine-tune starts from (a new project saves it as v000 first)."""
        from .project_panel import ensure_project

        ensure_project(self.session)
        return self.session.training_start()[0]

    def select(self, image: Image | None = None, labels: Labels | None = None) -> None:
        """Choose the image and the corrected Labels layer (what the combo boxes do)."""
        again = labels is not None and labels is self.session.mask_layer
        self.pickers.choose(image=image, mask=labels)
        if again:  # the same choice: take its reference again
            self.correct.retake_reference()
        self.correct.follow_session()
        self.correct.restore()
