"""The Fine-tune dock (correct and fine-tune only): project, corrections, training, readout.

A thin dock over the session's panels, for users who want these steps alone; the main dock
(:mod:`.main_dock`) shows the same panels as its Correct and Fine-tune steps. The image, the
mask, the project and the model are the viewer's :class:`~napari_roiseg.session.Session`'s,
shared with every other dock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QVBoxLayout

from ..project.project import Project
from ..session import get_session
from .corrections_panel import CorrectionsPanel
from .finetune_panel import FinetunePanel
from .hooks import HookedDock, ViewerHooks
from .pickers import LayerPickers
from .project_panel import ProjectPanel
from .readout_panel import ReadoutPanel

if TYPE_CHECKING:
    import napari


class FinetuneWidget(HookedDock):
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

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None,
                 project: Any = None) -> None:
        super().__init__(napari_viewer)
        self.session = get_session(napari_viewer)
        if model is not None:
            self.session.set_model(model, "model given to the widget")
        self.pickers = LayerPickers(self.session, show=("image", "mask"),
                                    labels={"mask": "corrected labels"})
        self.project_panel = ProjectPanel(self.session)
        self.correct = CorrectionsPanel(self.session)
        self.tune = FinetunePanel(self.session, self.correct)
        self.readout = ReadoutPanel(self.session, self.correct)
        self.tune.running_listeners.append(self.readout.set_running)
        layout = QVBoxLayout(self)
        for part in self.parts:
            layout.addWidget(part.native)
        self.start_hooks()
        if project is not None:
            self.open_project(project)

    @property
    def parts(self) -> tuple[Any, ...]:
        return (self.project_panel, self.pickers, self.correct, self.tune, self.readout)

    def hook(self, hooks: ViewerHooks) -> None:
        for part in self.parts:
            part.hook(hooks)

    def unhook(self) -> None:
        self.correct.unwatch()
        super().unhook()

    # what scripts and tests reach for
    @property
    def project(self) -> Project | None:
        return self.session.project

    @property
    def model(self) -> Any:
        """The model the next run uses, if loaded."""
        return self.session.loaded_model()

    @property
    def image_layer(self) -> Image | None:
        return self.session.image_layer

    @property
    def labels_layer(self) -> Labels | None:
        return self.session.mask_layer

    @property
    def corrections(self) -> Any:
        return self.correct.corrections

    @property
    def reference(self) -> np.ndarray | None:
        return self.correct.reference

    def open_project(self, folder: Any) -> Project | None:
        return self.project_panel.open_project(folder)

    def _ensure_model(self) -> Any:
        """The model a fine-tune starts from (a new project saves it as v000 first)."""
        from .project_panel import ensure_project

        ensure_project(self.session)
        return self.session.training_start()[0]

    def select(self, image: Image | None = None, labels: Labels | None = None) -> None:
        """Choose the image and the corrected Labels layer (what the combo boxes do)."""
        if labels is not None and labels is self.session.mask_layer:
            self.correct._watched = None  # the same choice: take its reference again
        self.pickers.choose(image=image, mask=labels)
        self.correct.follow_session()
        self.correct.restore()

    def use_version(self, name: str | None = None) -> Any:
        return self.project_panel.use_version(name)

    # The Correct and Fine-tune steps' methods are the panels'; this dock only arranges them
    # (an explicit list: napari looks up attributes such as ``native`` on docks).
    FORWARD = {"correct": ("plan", "refresh_corrections", "save_corrections", "mark_current",
                           "current_slice", "go_to"),
               "tune": ("start", "stop", "worker", "history", "canvas", "last_result"),
               "readout": ("segment", "update_readout", "last_segmentation", "latest",
                           "readout_values")}

    def __getattr__(self, name: str) -> Any:
        for part, names in self.FORWARD.items():
            if name in names and part in self.__dict__:
                return getattr(self.__dict__[part], name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
