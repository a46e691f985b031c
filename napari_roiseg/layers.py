"""Segmentation results as napari layers: box rows -> rectangles, masks -> a Labels layer.

Two parts. Pure conversions (numpy only, tested without a viewer): :func:`filter_boxes` picks the
boxes worth drawing, :func:`box_rectangles` / :func:`box_features` turn box rows into Shapes data.
Layer helpers (they take a viewer, never import napari at module level): :func:`add_result_layers`
shows a finished result; :class:`ResultLayers` keeps one image's Labels and Shapes layers up to date
across runs and never overwrites a mask the user has painted on.

Box rows are ``(slice, y1, x1, y2, x2, score)`` (``segment.BOX_COLUMNS``). Rectangle vertices are
those numbers used directly as napari data coordinates, so that ``_writer.write_boxes`` turns the
Shapes layer back into the very rows it was made from. (In the model's convention pixel ``(i, j)``
is the square ``[j, j+1) x [i, i+1)`` while napari centres it on ``(i, j)``: drawn boxes sit half a
pixel down-right of the pixel edges, invisible at ultrasound resolutions.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_TOP_K = 3
BOX_COLORMAP = "plasma"  # score 0.5 -> magenta, 1.0 -> yellow: both stand out on grey speckle
# Labels-layer metadata: per-slice ``review.slice_stats`` rows (the review queue reads them)
STATS_KEY = "roiseg_stats"
# Labels-layer metadata: the model's own mask (S, H, W) as written to the layer, before any edit
# (the Review and Fine-tune widgets compare the annotator's corrections with it)
PREDICTION_KEY = "roiseg_prediction"

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_TOP_K",
    "PREDICTION_KEY",
    "STATS_KEY",
    "ResultLayers",
    "add_boxes_layer",
    "add_result_layers",
    "append_boxes",
    "as_slices",
    "box_features",
    "box_rectangles",
    "filter_boxes",
    "image_array",
    "set_boxes",
    "transform_kwargs",
]


# --------------------------------------------------------------------------- pure conversions


def _rows(boxes: Any) -> np.ndarray:
    rows = np.asarray(boxes, dtype=np.float32)
    if rows.size == 0:
        return np.zeros((0, 6), np.float32)
    if rows.ndim != 2 or rows.shape[1] != 6:
        raise ValueError(f"boxes must be an (N, 6) array of rows slice, y1, x1, y2, x2, score; "
                         f"got shape {rows.shape}")
    return rows


def filter_boxes(boxes: Any, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
                 top_k: int | None = DEFAULT_TOP_K) -> np.ndarray:
    """The boxes worth drawing: score >= ``score_threshold``, at most ``top_k`` best per slice.

    Parameters
    ----------
    boxes : array (N, 6)
        Rows ``slice, y1, x1, y2, x2, score``.
    score_threshold : float or None
        Keep rows whose score is at least this (None: all scores, NaN included).
    top_k : int or None
        Keep at most this many rows per slice, highest scores first (None: no limit; 0: none).

    Returns
    -------
    array (M, 6) float32
        The kept rows sorted by slice, then by decreasing score; equal scores keep input order.
    """
    rows = _rows(boxes)
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be None (no limit) or >= 0, got {top_k}")
    if score_threshold is not None:
        rows = rows[rows[:, 5] >= score_threshold]
    rows = rows[np.lexsort((-rows[:, 5], rows[:, 0]))]  # lexsort is stable
    if top_k is not None and len(rows):
        starts = np.flatnonzero(np.r_[True, rows[1:, 0] != rows[:-1, 0]])
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        rows = rows[rank < top_k]
    return rows


def box_rectangles(boxes: Any, ndim: int = 3) -> np.ndarray:
    """Rectangle vertices for napari Shapes, one rectangle per box row.

    Returns ``(N, 4, 3)`` vertices ``(slice, y, x)`` (``ndim=3``: each rectangle lies on its box's
    slice) or ``(N, 4, 2)`` vertices ``(y, x)`` (``ndim=2``, for a 2D image), in the order
    ``(y1, x1), (y1, x2), (y2, x2), (y2, x1)``.
    """
    if ndim not in (2, 3):
        raise ValueError(f"boxes are drawn on 2D or 3D images, not {ndim}D")
    rows = _rows(boxes)
    s, y1, x1, y2, x2 = (rows[:, i] for i in range(5))
    ys = np.stack([y1, y1, y2, y2], axis=1)
    xs = np.stack([x1, x2, x2, x1], axis=1)
    parts = [ys, xs] if ndim == 2 else [np.repeat(s[:, None], 4, axis=1), ys, xs]
    return np.stack(parts, axis=2).astype(np.float64)


def box_features(boxes: Any) -> dict[str, np.ndarray]:
    """The Shapes layer's features table: ``score`` (float) and ``slice`` (int) per box."""
    rows = _rows(boxes)
    return {"score": rows[:, 5].astype(np.float64), "slice": rows[:, 0].astype(np.int64)}


def _is_layer(obj: Any) -> bool:
    # An object can only be a napari layer if napari is already imported: no import needed here.
    napari = sys.modules.get("napari")
    return napari is not None and isinstance(obj, napari.layers.Layer)


def image_array(image: Any) -> tuple[Any, Any]:
    """The pixel data to segment from an array or a napari Image layer: ``(data, layer)``.

    ``data`` is the layer's (full-resolution) array, ``(S, H, W)`` or ``(H, W)``, not copied;
    ``layer`` is the Image layer or None for an array. Raises ValueError (or TypeError) with a
    message saying what would work for RGB images, other layer types and images that are not
    2D or 3D.
    """
    if not _is_layer(image):
        arr = np.asarray(image) if not hasattr(image, "ndim") else image
        if arr.ndim not in (2, 3):
            raise ValueError(f"the image has shape {tuple(arr.shape)}: the model segments "
                             "(slices, height, width) volumes or single 2D slices")
        return arr, None
    from napari.layers import Image

    if not isinstance(image, Image):
        raise TypeError(f"layer '{image.name}' is a {type(image).__name__} layer; choose an "
                        "Image layer to segment")
    if image.rgb:
        raise ValueError(
            f"'{image.name}' is an RGB image but the model segments grayscale ultrasound. "
            "Convert it first: right-click the layer > Split RGB and segment one channel, or in "
            "the console viewer.add_image(layer.data.mean(-1)).")
    data = image.data[0] if image.multiscale else image.data
    if data.ndim not in (2, 3):
        raise ValueError(
            f"'{image.name}' has {data.ndim} dimensions {tuple(data.shape)}: the model segments "
            "(slices, height, width) volumes or single 2D images. Add one 3D part as its own "
            "layer first, e.g. viewer.add_image(layer.data[0]).")
    return data, image


def layer_spacing_mm(layer: Any) -> tuple[float, ...] | None:
    """The pixel spacing in mm of an image layer (its ``scale``), when its unit is known: the
    reader's ``metadata["unit"]`` or napari's own ``units`` (e.g. the sample's mm). None for
    arrays and for layers in pixels or an unknown unit (the model then takes slices as they
    are; see ``src_model.resolution``)."""
    if layer is None or not hasattr(layer, "scale"):
        return None
    from .io.volumes import spacing_in_mm

    unit = (getattr(layer, "metadata", None) or {}).get("unit")
    if unit is None:
        units = getattr(layer, "units", None)
        if units is not None and len(units):
            unit = str(units[-1])
    return spacing_in_mm(tuple(float(v) for v in layer.scale), unit)


def resolve_spacing(image: Any, spacing: Any) -> Any:
    """``spacing`` as given, or for "auto" the image layer's pixel size in mm
    (:func:`layer_spacing_mm`; None for arrays): the API's ``spacing=`` argument."""
    if isinstance(spacing, str) and spacing == "auto":
        return layer_spacing_mm(image)
    return spacing


def transform_kwargs(image_layer: Any) -> dict[str, Any]:
    """Layer keyword arguments that place an overlay exactly on ``image_layer`` (anisotropic
    spacing, offsets, rotations): scale, translate, rotate, shear and affine."""
    if image_layer is None:
        return {}
    return {
        "scale": tuple(float(v) for v in image_layer.scale),
        "translate": tuple(float(v) for v in image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }


def _apply_transform(layer: Any, image_layer: Any) -> None:
    for key, value in transform_kwargs(image_layer).items():
        current = np.asarray(getattr(layer, key) if key != "affine" else layer.affine.affine_matrix)
        if current.shape != np.shape(value) or not np.allclose(current, value):
            setattr(layer, key, value)


# --------------------------------------------------------------------------- layers in a viewer


def _shapes_kwargs(boxes: np.ndarray, ndim: int) -> dict[str, Any]:
    return {
        "data": list(box_rectangles(boxes, ndim)),
        "shape_type": "rectangle",
        "features": box_features(boxes),
        "edge_color": "score",
        "edge_colormap": BOX_COLORMAP,
        "edge_contrast_limits": (0.0, 1.0),
        "edge_width": 1.0,
        "face_color": "transparent",
        "text": {"string": "{score:.2f}", "size": 8, "color": "yellow", "anchor": "upper_left"},
    }


def add_boxes_layer(viewer: Any, boxes: Any, *, ndim: int = 3, image_layer: Any = None,
                    name: str = "boxes") -> Any:
    """Add a Shapes layer of ``boxes`` (rows as given; filter them first) and return it."""
    kwargs = _shapes_kwargs(_rows(boxes), ndim)
    data = kwargs.pop("data")
    return viewer.add_shapes(data, name=name, ndim=ndim, **kwargs,
                             **transform_kwargs(image_layer))


def set_boxes(layer: Any, boxes: Any) -> None:
    """Replace every shape of ``layer`` (made by :func:`add_boxes_layer`) by ``boxes``."""
    rows = _rows(boxes)
    layer.data = list(box_rectangles(rows, layer.ndim))
    # Shapes.data keeps the old features when the layer is emptied: set them after the data.
    _set_box_features(layer, box_features(rows))


def as_slices(data: Any) -> np.ndarray:
    """Layer data (or a mask) as ``(S, H, W)``: a 2D one is one slice. Not copied."""
    arr = np.asarray(data)
    return arr[None] if arr.ndim == 2 else arr


def append_boxes(layer: Any, boxes: Any) -> None:
    """Add ``boxes`` to the shapes of ``layer`` (made by :func:`add_boxes_layer`), keeping the
    ones it has: only the new rectangles are triangulated, which is what lets a volume run draw
    its boxes batch by batch (a full :func:`set_boxes` of ~140 boxes costs ~55 ms with napari
    0.9's pure-Python triangulation)."""
    rows = _rows(boxes)
    if not len(rows):
        return
    new = box_features(rows)
    old = {name: np.asarray(layer.features[name]) for name in new}
    style = _shapes_kwargs(rows, layer.ndim)
    layer.add(style["data"], shape_type=style["shape_type"], edge_width=style["edge_width"],
              face_color=style["face_color"])
    _set_box_features(layer, {name: np.concatenate([old[name], new[name]]) for name in new})


def _set_box_features(layer: Any, features: dict[str, np.ndarray]) -> None:
    """Give ``layer``'s boxes these features, then recompute colours and text from the scores."""
    layer.features = features
    layer.refresh_colors(update_color_mapping=False)
    layer.text.refresh(layer.features)


def _default_names(image_layer: Any) -> tuple[str, str]:
    base = image_layer.name if image_layer is not None else "segmentation"
    return f"{base} mask", f"{base} boxes"


def add_result_layers(viewer: Any, image_layer: Any, labels: np.ndarray, boxes: Any, *,
                      score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
                      top_k: int | None = DEFAULT_TOP_K,
                      stats: np.ndarray | None = None) -> tuple[Any, Any]:
    """Show a finished segmentation: a Labels layer of ``labels`` and a Shapes layer of the boxes
    that pass :func:`filter_boxes`, both placed on ``image_layer`` (may be None).

    ``labels`` has the image's shape, ``(S, H, W)`` or ``(H, W)``; ``stats`` (per-slice review
    rows, ``VolumeSegmentation.stats``) go to the Labels layer's ``metadata[STATS_KEY]``, and the
    model's mask as shown, ``(S, H, W)`` read-only, to ``metadata[PREDICTION_KEY]`` (what the
    annotator's edits are compared with). Returns ``(labels_layer, shapes_layer)``.

    Layers of those names that hold nothing yet (an all-zero Labels layer of the same shape, a
    Shapes layer without shapes: the Segment dock makes such layers when an image is chosen) are
    filled rather than joined by a second layer of the same name.
    """
    labels_name, boxes_name = _default_names(image_layer)
    labels = np.array(labels, dtype=np.uint8, copy=True)  # painting must not change the caller's array
    prediction = labels.copy()  # the layer's own data changes as the annotator paints
    prediction.flags.writeable = False
    metadata = {PREDICTION_KEY: as_slices(prediction)}
    if stats is not None:
        metadata[STATS_KEY] = np.asarray(stats)
    rows = filter_boxes(boxes, score_threshold, top_k)
    labels_layer = _empty_layer(viewer, labels_name, "Labels", labels.shape)
    if labels_layer is None:
        labels_layer = viewer.add_labels(labels, name=labels_name, metadata=metadata,
                                         **transform_kwargs(image_layer))
    else:
        labels_layer.data = labels
        labels_layer.metadata = {**labels_layer.metadata, **metadata}
        _apply_transform(labels_layer, image_layer)
    shapes_layer = _empty_layer(viewer, boxes_name, "Shapes", None)
    if shapes_layer is None or shapes_layer.ndim != labels.ndim:
        shapes_layer = add_boxes_layer(viewer, rows, ndim=labels.ndim, image_layer=image_layer,
                                       name=boxes_name)
    else:
        _apply_transform(shapes_layer, image_layer)
        set_boxes(shapes_layer, rows)
    return labels_layer, shapes_layer


def _empty_layer(viewer: Any, name: str, kind: str, shape: tuple[int, ...] | None) -> Any:
    """The layer called ``name`` if it is a ``kind`` ("Labels" or "Shapes") layer that holds
    nothing (Labels: all zero, of ``shape``; Shapes: no shapes), else None."""
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    if type(layer).__name__ != kind:
        return None
    if kind == "Labels":
        data = layer.data
        empty = isinstance(data, np.ndarray) and data.shape == shape and not data.any()
    else:
        empty = layer.nshapes == 0
    return layer if empty else None


def plane_shown(viewer: Any, layer: Any) -> int | None:
    """The slice of the 3D ``layer`` the viewer draws when it draws exactly one 2D plane of it,
    across its first axis; None when it may draw more (a 3D view, other displayed axes, another
    number of dimensions, no viewer)."""
    dims = getattr(viewer, "dims", None)
    if (dims is None or layer is None or layer.ndim != 3 or dims.ndim != 3
            or dims.ndisplay != 2 or tuple(dims.displayed) != (1, 2)):
        return None
    position = layer.world_to_data(dims.point)[0]
    return int(np.clip(np.round(position), 0, layer.data.shape[0] - 1))


class ResultLayers:
    """The Labels and Shapes layers that show one image's segmentation, updated run after run.

    The mask layer is updated in place only while it still holds exactly what was last written
    to it; once the user has painted on it, the next write goes to a new layer (napari suffixes
    its name) and :meth:`prepare` returns a message saying so. Both layers follow the image
    layer's scale, translation, rotation, shear and affine. The mask layer's
    ``metadata[PREDICTION_KEY]`` is the model's output as written to it (``(S, H, W)``, kept up
    to date slice by slice; the very array this object compares the layer with, not a copy).

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The segmented image, ``(S, H, W)`` or ``(H, W)``; its name prefixes the layer names.
    """

    def __init__(self, viewer: Any, image_layer: Any) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.ndim = int(image_layer.ndim)
        self.labels_name, self.boxes_name = _default_names(image_layer)
        self.labels_layer: Any = None
        self.boxes_layer: Any = None
        self._written: np.ndarray | None = None  # (S, H, W) copy of what the mask layer got

    # the model works on (S, H, W); a 2D image's layers hold (H, W)
    def _as_volume(self, data: np.ndarray) -> np.ndarray:
        return data[None] if self.ndim == 2 else data

    def _alive(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    @property
    def boxes_alive(self) -> bool:
        """True while the boxes layer exists in the viewer."""
        return self._alive(self.boxes_layer)

    def labels_edited(self) -> bool:
        """True when the mask layer no longer holds what was last written to it."""
        if not self._alive(self.labels_layer) or self._written is None:
            return False
        data = self._as_volume(np.asarray(self.labels_layer.data))
        return data.shape != self._written.shape or not np.array_equal(data, self._written)

    def prepare(self, labels: np.ndarray) -> str | None:
        """Get a mask layer ready for a run; call before writing with the model's label volume
        ``(S, H, W)`` as it is now (slices of earlier runs included).

        Creates the layer if there is none (or it was deleted), starts a new one if the user
        edited the current one, else keeps it. Returns a message for the user when a new layer
        was started to keep their edits, else None.
        """
        message = None
        if self._alive(self.labels_layer) and self.labels_edited():
            old = self.labels_layer.name
            self._new_labels_layer(labels)
            message = (f"'{old}' was edited since the last run, so it is left as it is; "
                       f"the new results go to '{self.labels_layer.name}'.")
        elif not self._alive(self.labels_layer):
            self._new_labels_layer(labels)
        else:
            _apply_transform(self.labels_layer, self.image_layer)
        return message

    def _new_labels_layer(self, labels: np.ndarray) -> None:
        # ``_written`` is both what this object compares the layer with and the layer's model
        # prediction (metadata): write_slices updates it in place, so the metadata follows. A
        # layer left behind (edited) keeps its own array: the prediction it was shown.
        self._written = np.array(labels, dtype=np.uint8, copy=True)
        data = self._written.copy()
        self.labels_layer = self.viewer.add_labels(
            data[0] if self.ndim == 2 else data, name=self.labels_name,
            metadata={PREDICTION_KEY: self._written}, **transform_kwargs(self.image_layer))

    def write_slices(self, labels: np.ndarray, slices: Iterable[int]) -> str | None:
        """Copy ``labels[k]`` for each ``k`` in ``slices`` into the mask layer and redraw it.

        If the user painted on one of those slices since it was last written (e.g. during a
        long run), a new layer is started first; the message saying so is returned.
        """
        index = np.fromiter((int(k) for k in slices), dtype=np.int64)
        message = None
        if self._written is None or not self._alive(self.labels_layer):
            self.prepare(labels)
        else:
            current = self._as_volume(self.labels_layer.data)
            if current.shape != self._written.shape or not np.array_equal(
                    current[index], self._written[index]):
                message = self.prepare(labels)
        if len(index):
            target = self._as_volume(self.labels_layer.data)
            target[index] = labels[index]
            self._written[index] = labels[index]
            if self._shows_any(index):  # napari reads the others from the data when shown
                self.labels_layer.refresh()
        return message

    def _shows_any(self, index: np.ndarray) -> bool:
        """Whether the viewer draws one of slices ``index`` of the mask now: only a 3D
        mask seen slice by slice along its first axis can skip the redraw (30-60 ms with
        software OpenGL, per batch of a volume run) of slices it does not show."""
        shown = plane_shown(self.viewer, self.labels_layer)
        return shown is None or bool(np.isin(shown, index))

    def set_stats(self, stats: np.ndarray | None) -> None:
        """Keep per-slice review rows (``VolumeSegmentation.stats``) in the mask layer's
        ``metadata[STATS_KEY]``, where the Review widget finds them."""
        if stats is not None and self._alive(self.labels_layer):
            self.labels_layer.metadata = {**self.labels_layer.metadata,
                                          STATS_KEY: np.array(stats, copy=True)}

    def show_boxes(self, boxes: Any, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
                   top_k: int | None = DEFAULT_TOP_K) -> int:
        """Draw the boxes that pass :func:`filter_boxes`; returns how many are drawn.

        The Shapes layer is derived data: it is rebuilt from ``boxes`` every time (edits to it
        are not kept).
        """
        rows = filter_boxes(boxes, score_threshold, top_k)
        if self._alive(self.boxes_layer):
            _apply_transform(self.boxes_layer, self.image_layer)
            set_boxes(self.boxes_layer, rows)
        else:
            self.boxes_layer = add_boxes_layer(self.viewer, rows, ndim=self.ndim,
                                               image_layer=self.image_layer, name=self.boxes_name)
        return len(rows)

    def add_boxes(self, boxes: Any, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
                  top_k: int | None = DEFAULT_TOP_K) -> int:
        """Draw the boxes of further slices (rows that pass :func:`filter_boxes`) beside the
        ones drawn; returns how many were added. For slices not drawn yet: a slice's top-k is
        applied to the rows given, not to what the layer holds."""
        rows = filter_boxes(boxes, score_threshold, top_k)
        if not self._alive(self.boxes_layer):
            self.show_boxes(rows, None, None)
        else:
            append_boxes(self.boxes_layer, rows)
        return len(rows)
