"""The Segment dock (one step only): the image, the model and the Segment step's controls.

A thin dock over the session's panels, for users who want this step alone; the main dock
(:mod:`.main_dock`) shows the same panels as its first step. Everything it shows lives in the
viewer's :class:`~napari_roiseg.session.Session`, shared with every other dock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image

from ..session import Session
from .hooks import SessionDock, ViewerHooks
from .model_panel import ModelPanel
from .pickers import LayerPickers, shown_slice
from .segment_panel import SegmentPanel
from .volume_run import segmenter

if TYPE_CHECKING:
    import napari


def preload_run_modules() -> None:
    """What the first volume run needs (napari's worker and progress bar, pandas for the
    Shapes layer's features), imported when a dock opens rather than inside the first click,
    where it froze the viewer for ~0.4 s (scripts/bench_gui_stall.py)."""
    import napari.qt.threading  # noqa: F401
    import napari.utils.progress  # noqa: F401
    import pandas  # noqa: F401


def hook_segmenter(hooks: ViewerHooks, session: Session, pickers: LayerPickers,
                   model_panel: ModelPanel) -> None:
    """What a dock with the Segment step connects: an image chosen gets its result layers at
    once, and no other layer or model can be chosen while a run works."""
    runner = segmenter(session)
    hooks.connect(session.events.layers, "prepare_layers", runner)
    hooks.connect(runner.running, "set_running", pickers)
    hooks.connect(runner.running, "set_running", model_panel)


class SegmentWidget(SessionDock):
    """Dock: segment the current slice, the whole volume (cancellable), or follow the slider;
    boxes as a Shapes layer and the mask as a Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Use this model instead of the shipped default (see :meth:`set_model`).
    """

    FORWARD = {"runner": ("last_run", "worker"), "model_panel": ("model_text", "load_model"),
               "segment": ("run_slice", "run_volume", "cancel")}

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None) -> None:
        super().__init__(napari_viewer)
        preload_run_modules()
        if model is not None:
            self.session.set_model(model)
        self.pickers = LayerPickers(self.session, show=("image",))
        self.model_panel = ModelPanel(self.session)
        self.segment = SegmentPanel(self.session)
        self.runner = self.segment.runner
        self.arrange(self.pickers, self.model_panel, self.segment)
        self.layout().addStretch(1)
        self.runner.prepare_layers()

    def hook(self, hooks: ViewerHooks) -> None:
        super().hook(hooks)
        hook_segmenter(hooks, self.session, self.pickers, self.model_panel)

    # what scripts and tests reach for
    @property
    def image_layer(self) -> Image | None:
        return self.session.image_layer

    @image_layer.setter
    def image_layer(self, layer: Image) -> None:
        self.pickers.choose(image=layer)

    @property
    def sessions(self) -> dict[Image, Any]:
        """Each image's result so far (``result``, ``layers``, ``model``)."""
        return self.session.results

    def set_model(self, net: Any, description: str = "in-memory model") -> None:
        """Use ``net`` (e.g. just fine-tuned) for the next runs, in every dock."""
        self.session.set_model(net, description)

    def current_slice(self, layer: Image) -> int:
        return shown_slice(self.viewer, layer)
