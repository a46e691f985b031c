"""The Review step's comparison on one slice, in two layers: ``compare mask`` (where the candidate
and the current version agree and where each paints alone) and ``compare boxes`` (each version's
boxes in its colour).

Each layer holds the one slice compared, placed on it. Two layers rather than one per version and
kind: making a layer stops the viewer for 0.1-0.7 s with software OpenGL, so the first comparison
costs half as much, and a difference map is what a reviewer reads anyway. Each change (making a
layer; new data: 30-60 ms each, with the redraw it asks for) runs in a turn of the event loop of
its own, so the viewer keeps drawing in between.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..layers import box_rectangles, transform_kwargs

COMPARE_COLOURS = {"candidate": "magenta", "current": "cyan"}
MASK_NAME, BOXES_NAME = "compare mask", "compare boxes"
# values of the compare mask: both versions paint the pixel / only the candidate / only the current
BOTH, CANDIDATE_ONLY, CURRENT_ONLY = 1, 2, 3
MASK_COLOURS = {None: "transparent", 0: "transparent", BOTH: "yellow",
                CANDIDATE_ONLY: COMPARE_COLOURS["candidate"],
                CURRENT_ONLY: COMPARE_COLOURS["current"]}


def difference_labels(candidate: np.ndarray | None, current: np.ndarray | None,
                      shape: tuple[int, ...]) -> np.ndarray:
    """``uint8`` map of two masks (either may be None: paints nothing): :data:`BOTH`,
    :data:`CANDIDATE_ONLY`, :data:`CURRENT_ONLY`, 0 where neither paints."""
    a = np.zeros(shape, bool) if candidate is None else np.asarray(candidate) != 0
    b = np.zeros(shape, bool) if current is None else np.asarray(current) != 0
    out = np.zeros(shape, np.uint8)
    out[a & b], out[a & ~b], out[~a & b] = BOTH, CANDIDATE_ONLY, CURRENT_ONLY
    return out


class CompareLayers:
    """The compare layers of one viewer (made on first use, then updated)."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layers: dict[str, Any] = {}
        self.pending: list = []  # the layer changes still to make (one per event-loop turn)

    def show(self, image: Any, k: int, out: dict[str, Any], sync: bool = True) -> dict[str, Any]:
        """Show slice ``k``'s masks as a difference map and each version's boxes.

        ``out`` maps a role ("candidate", "current") to ``(version, mask, box rows)``. The
        changes run one per event-loop turn; ``sync`` does them all now. Returns what is shown
        per role: version, mask area, number of boxes.
        """
        place = transform_kwargs(image)
        place["translate"] = (place["translate"][0] + k * place["scale"][0],
                              *place["translate"][1:])
        shape = next(iter(out.values()))[1].shape if out else tuple(image.data.shape[-2:])
        masks = {role: mask for role, (_, mask, _) in out.items()}
        diff = difference_labels(masks.get("candidate"), masks.get("current"), shape)
        rectangles, colours = [], []
        for role, (_, _, rows) in out.items():
            boxes = np.array(rows, copy=True)
            boxes[:, 0] = 0  # the layer's only slice
            found = list(box_rectangles(boxes, 3))
            rectangles += found
            colours += [COMPARE_COLOURS.get(role, "white")] * len(found)
        versions = {role: version for role, (version, _, _) in out.items()}
        steps = [lambda: self._layer(MASK_NAME, shape, place),
                 lambda: self._layer(BOXES_NAME, shape, place),
                 lambda: self._set_mask(diff, versions, k),
                 lambda: self._set_boxes(rectangles, colours)]
        self.pending = steps

        def run(rest: list) -> None:
            while rest:
                rest.pop(0)()
                if not sync and rest:
                    QTimer.singleShot(1, lambda: run(rest))
                    return

        run(steps)
        return {role: {"version": version, "area": int(np.count_nonzero(mask)),
                       "boxes": len(rows)} for role, (version, mask, rows) in out.items()}

    def _layer(self, name: str, shape: tuple[int, ...], place: dict[str, Any]) -> None:
        """Make the compare layer ``name`` if needed, placed by ``place``."""
        viewer = self.viewer
        layer = self.layers.get(name)
        if layer is not None and layer in viewer.layers:
            if name == MASK_NAME and tuple(layer.data.shape[-2:]) != tuple(shape):
                layer.data = np.zeros((1, *shape), np.uint8)  # another image's slice size
            if tuple(layer.translate) != tuple(place["translate"]):
                layer.translate = place["translate"]
            return
        if name == MASK_NAME:
            from napari.utils.colormaps import DirectLabelColormap

            layer = viewer.add_labels(np.zeros((1, *shape), np.uint8), name=name, opacity=0.6,
                                      colormap=DirectLabelColormap(color_dict=MASK_COLOURS),
                                      **place)
        else:
            layer = viewer.add_shapes(name=name, ndim=3, shape_type="rectangle",
                                      face_color="transparent", edge_width=1.0, **place)
        self.layers[name] = layer

    def _set_mask(self, diff: np.ndarray, versions: dict[str, str], k: int) -> None:
        layer = self.layers[MASK_NAME]
        layer.data[0] = diff  # in place: cheaper than new data
        layer.refresh()
        layer.metadata = {**layer.metadata, "roiseg_versions": versions, "slice": k}

    def _set_boxes(self, rectangles: list, colours: list[str]) -> None:
        layer = self.layers[BOXES_NAME]
        layer.data = []
        if rectangles:
            layer.add_rectangles(rectangles, edge_color=colours, edge_width=1.0,
                                 face_color="transparent")
