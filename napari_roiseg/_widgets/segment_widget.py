"""The Segment dock (one step only): the image, the model and the Segment step's controls.

A thin dock over the session's panels, for users who want this step alone; the main dock
(:mod:`.main_dock`) shows the same panels as its first step. Everything it shows lives in the
viewer's :class:`~napari_roiseg.session.Session`, shared with every other dock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtWidgets import QVBoxLayout

from ..session import get_session
from .hooks import HookedDock, ViewerHooks
from .model_panel import ModelPanel
from .pickers import LayerPickers, shown_slice
from .segment_panel import SegmentPanel

if TYPE_CHECKING:
    import napari


def preload_run_modules() -> None:
    """What the first volume run needs (napari's worker and progress bar, pandas for the
    Shapes layer's features), imported when a dock opens rather than inside the first click,
    where it froze the viewer for ~0.4 s (scripts/bench_gui_stall.py)."""
    import napari.qt.threading  # noqa: F401
    import napari.utils.progress  # noqa: F401
    import pandas  # noqa: F401


class SegmentWidget(HookedDock):
    """Dock: segment the current slice, the whole volume (cancellable), or follow the slider;
    boxes as a Shapes layer and the mask as a Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model : torch.nn.Module, optional
        Use this model instead of the shipped default (see :meth:`set_model`).
    """

    def __init__(self, napari_viewer: napari.Viewer, model: Any = None) -> None:
        super().__init__(napari_viewer)
        preload_run_modules()
        self.session = get_session(napari_viewer)
        if model is not None:
            self.session.set_model(model)
        self.pickers = LayerPickers(self.session, show=("image",))
        self.model_panel = ModelPanel(self.session)
        self.segment = SegmentPanel(self.session)
        self.runner = self.segment.runner
        layout = QVBoxLayout(self)
        for part in (self.pickers, self.model_panel, self.segment):
            layout.addWidget(part.native)
        layout.addStretch(1)
        self.start_hooks()
        self.runner.prepare_layers()

    def hook(self, hooks: ViewerHooks) -> None:
        for part in (self.pickers, self.model_panel, self.segment):
            part.hook(hooks)
        hooks.connect(self.session.events.layers, "prepare_layers", self.runner)
        hooks.connect(self.runner.running, "set_running", self.pickers)
        hooks.connect(self.runner.running, "_set_model_enabled", self)

    def _set_model_enabled(self, running: bool) -> None:
        self.model_panel.set_enabled(not running)

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

    @property
    def last_run(self) -> Any:
        return self.runner.last_run

    @property
    def worker(self) -> Any:
        return self.runner.worker

    @property
    def model_text(self) -> str:
        return self.model_panel.model_text

    def set_model(self, net: Any, description: str = "in-memory model") -> None:
        """Use ``net`` (e.g. just fine-tuned) for the next runs, in every dock."""
        self.session.set_model(net, description)

    def load_model(self) -> Any:
        return self.model_panel.load_model()

    def current_slice(self, layer: Image) -> int:
        return shown_slice(self.viewer, layer)

    def run_slice(self, _value: Any = None) -> int | None:
        return self.segment.run_slice()

    def run_volume(self, _value: Any = None, *, sync: bool = False) -> Any:
        return self.segment.run_volume(sync=sync)

    def cancel(self, _value: Any = None) -> None:
        self.segment.cancel()
