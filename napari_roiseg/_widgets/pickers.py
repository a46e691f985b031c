"""Shared by every dock: the layer pickers (image, mask, boxes) bound to the session, and
which slice of a layer the viewer shows.

Slices are data indices along the layer's first axis; the viewer works in world coordinates, so
both directions go through the layer's scale and translation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image, Labels, Shapes

from ..layers import PREDICTION_KEY
from ..session import Session
from .hooks import ViewerHooks

COMPARE_PREFIX = "compare "  # the Review step's comparison layers: never picked as inputs


def shown_slice(viewer: Any, layer: Any) -> int:
    """Index of the slice of ``layer`` the viewer shows (0 for a 2D layer or no layer)."""
    if layer is None or layer.ndim == 2:
        return 0
    position = layer.world_to_data(viewer.dims.point)[0]
    return int(np.clip(np.round(position), 0, layer.data.shape[0] - 1))


def show_slice(viewer: Any, layer: Any, k: int) -> None:
    """Show slice ``k`` of ``layer`` (clipped to its slices); without a 3D layer, step ``k``."""
    if layer is not None and layer.ndim == 3:
        k = int(np.clip(k, 0, layer.data.shape[0] - 1))
        viewer.dims.set_point(0, layer.data_to_world((k, 0, 0))[0])
    else:
        viewer.dims.set_current_step(0, int(k))


def _layers(viewer: Any, kind: type) -> list[tuple[str, Any]]:
    return [(layer.name, layer) for layer in viewer.layers
            if isinstance(layer, kind) and not layer.name.startswith(COMPARE_PREFIX)]


class LayerPickers(Container):
    """Combo boxes for the session's image, mask and boxes layers (those in ``show``).

    Choosing a layer here chooses it for every dock of the viewer; a layer chosen elsewhere
    (or made by a run) shows here.
    """

    TOOLTIPS = {"image": "the volume to segment, correct and fine-tune on",
                "mask": "the model's mask layer: the one you correct (a Labels layer you opened "
                        "is used only when chosen here)",
                "boxes": "the model's boxes (used only when the mask carries no model scores)"}

    def __init__(self, session: Session, show: tuple[str, ...] = ("image", "mask", "boxes"),
                 labels: dict[str, str] | None = None) -> None:
        super().__init__(labels=True)
        self.session = session
        self.viewer = session.viewer
        names = {"image": "image", "mask": "mask", "boxes": "boxes", **(labels or {})}
        self.combos: dict[str, ComboBox] = {}
        for role in show:
            combo = ComboBox(label=names[role], choices=self._choices(role),
                             tooltip=self.TOOLTIPS[role])
            combo.changed.connect(lambda value, role=role: self._chosen(role, value))
            self.combos[role] = combo
        self.extend(list(self.combos.values()))
        self.margins = (0, 0, 0, 0)
        self.refresh()
        self._choose_defaults()
        self.follow_session()

    def _choose_defaults(self) -> None:
        """Roles the session has no layer for get the first of their kind; the mask only a
        layer the model made (a Labels layer with its prediction), never a ground truth or an
        annotation the user opened, which a run must not adopt as the layer it corrects."""
        for role, combo in self.combos.items():
            if getattr(self.session, f"{role}_layer") is not None:
                continue
            if role == "mask":
                made = [layer for _, layer in _layers(self.viewer, Labels)
                        if PREDICTION_KEY in layer.metadata]
                if made:
                    self._chosen(role, made[0])
            elif combo.value is not None:
                self._chosen(role, combo.value)  # the first of its kind, as the combo shows

    def _choices(self, role: str) -> Any:
        if role == "image":
            return lambda _w=None: _layers(self.viewer, Image)
        kind = Shapes if role == "boxes" else Labels  # these two may be "none"
        return lambda _w=None: [("none", None), *_layers(self.viewer, kind)]

    def hook(self, hooks: ViewerHooks) -> None:
        """Follow the viewer's layer list and the session's choices (undone with the dock)."""
        events = self.viewer.layers.events
        hooks.connect(events.inserted, "_on_inserted", self)
        hooks.connect(events.removed, "_on_removed", self)
        hooks.connect(events.reordered, "refresh", self)
        for layer in self.viewer.layers:
            hooks.connect(layer.events.name, "refresh", self)
        hooks.connect(self.session.events.layers, "follow_session", self)
        self._hooks = hooks

    def _on_inserted(self, event: Any) -> None:
        hooks = getattr(self, "_hooks", None)
        if hooks is not None:
            hooks.connect(event.value.events.name, "refresh", self)
        self.refresh()

    def _on_removed(self, event: Any) -> None:
        self.session.forget_layer(event.value)
        self.refresh()
        self._choose_defaults()  # the combo moved on to another layer
        self.follow_session()

    def refresh(self, _event: Any = None) -> None:
        for combo in self.combos.values():
            with combo.changed.blocked():
                combo.reset_choices()
        self.follow_session()

    def follow_session(self) -> None:
        """Show the session's layers (without telling the session again)."""
        for role, combo in self.combos.items():
            layer = getattr(self.session, f"{role}_layer")
            choices = [c for c in combo.choices]
            if (layer is not None or role in ("boxes", "mask")) and layer in choices \
                    and combo.value is not layer:
                with combo.changed.blocked():
                    combo.value = layer

    def _chosen(self, role: str, layer: Any) -> None:
        setattr(self.session, f"{role}_layer", layer)

    def choose(self, **layers: Any) -> None:
        """Choose layers by role (``image=``, ``mask=``, ``boxes=``), as the combos do."""
        self.refresh()
        for role, layer in layers.items():
            if layer is not None:
                setattr(self.session, f"{role}_layer", layer)
        self.follow_session()

    def set_running(self, running: bool) -> None:
        """No other layer may be chosen while a run works on these."""
        for combo in self.combos.values():
            combo.enabled = not running
