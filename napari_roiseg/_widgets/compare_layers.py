"""The Review step's comparison on one slice: the candidate's and the current version's mask
(contours) and boxes, each in a layer of its own named ``compare <role> mask|boxes``.

Each layer holds the one slice compared, placed on it, and each change (making a layer: 0.1-0.7 s
with software OpenGL; new data: 30-60 ms each, with the redraw it asks for) runs in a turn of the
event loop of its own, so the viewer keeps drawing in between.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..layers import box_rectangles, transform_kwargs

COMPARE_COLOURS = {"candidate": "magenta", "current": "cyan"}


class CompareLayers:
    """The compare layers of one viewer (made on first use, then updated)."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layers: dict[str, Any] = {}
        self.pending: list = []  # the layer changes still to make (one per event-loop turn)

    def show(self, image: Any, k: int, out: dict[str, Any], sync: bool = True) -> dict[str, Any]:
        """Show each version's mask (contours) and boxes of slice ``k`` in the compare layers.

        Each layer holds that one slice only, placed on it, and each change (making a layer:
        0.1-0.7 s with software OpenGL; new data: 30-60 ms each, with the redraw it asks for)
        runs in a turn of the event loop of its own, so the viewer keeps drawing in between;
        ``sync`` does it all now. Returns what is shown.
        """
        place = transform_kwargs(image)
        place["translate"] = (place["translate"][0] + k * place["scale"][0],
                              *place["translate"][1:])
        steps, shown = [], {}
        for role, (version, mask, rows) in out.items():
            boxes = np.array(rows, copy=True)
            boxes[:, 0] = 0  # the layer's only slice
            steps += [lambda r=role, m=mask: self._layer(r, "mask", m.shape, place),
                      lambda r=role, m=mask: self._layer(r, "boxes", m.shape, place),
                      lambda r=role, m=mask, v=version: self._set_mask(r, m, v, k),
                      lambda r=role, b=boxes: setattr(self.layers[f"compare {r} boxes"],
                                                      "data", list(box_rectangles(b, 3)))]
            shown[role] = {"version": version, "area": int(mask.sum()), "boxes": len(rows)}
        self.pending = steps

        def run(rest: list) -> None:
            while rest:
                rest.pop(0)()
                if not sync and rest:
                    QTimer.singleShot(1, lambda: run(rest))
                    return

        run(steps)
        return shown

    def _layer(self, role: str, kind: str, shape: tuple[int, ...],
                       place: dict[str, Any]) -> None:
        """Make the compare layer of ``role`` and ``kind`` if needed, placed by ``place``."""
        viewer, name = self.viewer, f"compare {role} {kind}"
        layer = self.layers.get(name)
        if layer is not None and layer in viewer.layers:
            if tuple(layer.translate) != tuple(place["translate"]):
                layer.translate = place["translate"]
            return
        if kind == "mask":
            layer = viewer.add_labels(np.zeros((1, *shape), np.uint8), name=name, **place)
            layer.contour = 2
        else:
            layer = viewer.add_shapes(name=name, ndim=3, shape_type="rectangle",
                                      face_color="transparent", edge_width=1.0,
                                      edge_color=COMPARE_COLOURS[role], **place)
            layer.current_edge_color = COMPARE_COLOURS[role]
        self.layers[name] = layer

    def _set_mask(self, role: str, mask: np.ndarray, version: str, k: int) -> None:
        layer = self.layers[f"compare {role} mask"]
        layer.data[0] = mask  # in place: cheaper than new data
        layer.refresh()
        layer.metadata = {**layer.metadata, "roiseg_version": version, "slice": k}
