"""npe2 writer contributions: labels -> ImageJ TIFF, shapes (boxes) -> CSV.

Thin adapters from napari layer data ``(data, meta)`` to :mod:`napari_roiseg.io.volumes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_roiseg.io.volumes import write_boxes_csv, write_labels_tiff


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a labels layer as an ImageJ TIFF whose spacing is the layer's scale.

    Parameters
    ----------
    path : str
        Target ``.tif`` path.
    data : array-like
        Labels ``(slices, H, W)`` or ``(H, W)``; for a multiscale layer the full resolution.
    meta : dict
        Layer attributes; ``scale`` gives the spacing, ``metadata["unit"]`` (set by this
        plugin's reader) the unit.

    Returns
    -------
    list of str
        The written path.
    """
    if meta.get("multiscale"):
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim not in (2, 3):
        raise ValueError(
            f"The labels layer has {labels.ndim} dimensions {labels.shape}: the TIFF writer "
            "saves (slices, height, width) or (height, width) labels."
        )
    scale = [float(s) for s in meta.get("scale", ())] or [1.0] * labels.ndim
    spacing = ([1.0] + scale[-2:]) if labels.ndim == 2 else scale[-3:]
    unit = (meta.get("metadata") or {}).get("unit")
    return [str(write_labels_tiff(path, labels, spacing=spacing, unit=unit))]


def write_boxes(path: str, data: Sequence[Any], meta: dict[str, Any]) -> list[str]:
    """Save a shapes layer of boxes as CSV rows ``slice,y1,x1,y2,x2,score``.

    Each shape is written as its axis-aligned bounding box in data (pixel) coordinates, so
    rectangles are exact and other shapes are boxed. The slice is the shape's first coordinate
    for 3D layers (0 for 2D). The score comes from ``features["score"]`` when the layer has
    it, else NaN.

    Raises
    ------
    ValueError
        If a shape spans several slices or the layer has more than 3 dimensions.
    """
    rows = [_box_row(np.asarray(vertices, dtype=float), i) for i, vertices in enumerate(data)]
    scores = _scores(meta.get("features"), len(rows))
    boxes = np.column_stack([np.asarray(rows).reshape(-1, 5), scores])
    return [str(write_boxes_csv(path, boxes))]


def _box_row(vertices: np.ndarray, index: int) -> list[float]:
    if vertices.ndim != 2 or vertices.shape[1] not in (2, 3):
        raise ValueError(
            f"Shape {index} has vertices of shape {vertices.shape}: the boxes CSV takes 2D or "
            "3D (slice, y, x) shapes."
        )
    if vertices.shape[1] == 3:
        slices = np.unique(np.round(vertices[:, 0]))
        if len(slices) != 1:
            raise ValueError(
                f"Shape {index} spans slices {slices.tolist()}: a box lies in one slice. "
                "Draw boxes in 2D view (one slice at a time)."
            )
        slice_index = float(slices[0])
    else:
        slice_index = 0.0
    (y1, x1), (y2, x2) = vertices[:, -2:].min(axis=0), vertices[:, -2:].max(axis=0)
    return [slice_index, y1, x1, y2, x2]


def _scores(features: Any, count: int) -> np.ndarray:
    # napari gives features as a pandas DataFrame; a plain dict of columns works too.
    try:
        column = features["score"]
    except (KeyError, TypeError, IndexError):
        return np.full(count, np.nan)
    scores = np.asarray(column, dtype=float).reshape(-1)
    return scores if len(scores) == count else np.full(count, np.nan)
