"""Which slice of a layer the viewer shows, and showing one: shared by the dock widgets.

Slices are data indices along the layer's first axis; the viewer works in world coordinates, so
both directions go through the layer's scale and translation.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
