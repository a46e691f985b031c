"""Where the cells of a feature map sit in the image, and how to crop an upsampled score map.

Coordinate convention (used everywhere in ``src_model``)
--------------------------------------------------------
Continuous image coordinates, torchvision style: pixel ``(row i, col j)`` is the unit square
``[j, j + 1) x [i, i + 1)``, so its centre is ``(x, y) = (j + 0.5, i + 0.5)`` and the box
``(0, 0, W, H)`` covers the whole slice. The tight box of a mask is
``(min_col, min_row, max_col + 1, max_row + 1)``.

A feature grid is described by :class:`GridGeometry` ``(stride, offset)``: cell ``(r, c)`` has its
receptive-field centre at image position ``(x, y) = (offset + stride * c, offset + stride * r)``.
The image itself is the grid ``(1, 0.5)``. The ``stride x stride`` square centred there is the
cell's *footprint*; footprints of neighbouring cells tile the plane.

Layer rule: a convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and dilation
``d`` maps the input grid ``(S, o)`` to ``(S * s, o + S * ((k - 1) * d / 2 - p))``: output cell
``i`` reads input cells ``i * s - p ... i * s - p + (k - 1) * d``, whose centre is
``i * s + (k - 1) * d / 2 - p``. Ceil-mode pooling only appends cells at the end; it does not move
them.

Worked numbers (VGG16 conv5_3, no pool5): conv1_1 padding 1 -> ``(16, 8.0)``: cell ``(r, c)``
covers exactly pixels ``16r .. 16r+15``; conv1_1 padding 50 -> ``(16, -41.0)``, and the paper's
7x7 fc6 without padding moves it to ``(16, 7.0)``. FCN-32s (padding 100, pool5, 7x7 fc6) gives
``(32, 13.0)`` and the well-known crop of 19 px.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "GridGeometry",
    "IMAGE_GRID",
    "layer_geometry",
    "sequential_geometry",
    "upsample_crop",
]


@dataclass(frozen=True)
class GridGeometry:
    """Cell ``(r, c)`` of the grid is centred at image position
    ``(offset + stride * c, offset + stride * r)`` (continuous coordinates, see module doc)."""

    stride: float
    offset: float

    def cell_centre(self, index: int) -> float:
        """Image coordinate of the centre of cell ``index`` along one axis."""
        return self.offset + self.stride * index


IMAGE_GRID = GridGeometry(stride=1.0, offset=0.5)


def _pair(value: int | tuple[int, ...]) -> int:
    """Square kernels only: the model never uses anything else, so refuse to guess."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"geometry needs square kernels/strides/paddings, got {value}")
        return int(value[0])
    return int(value)


def layer_geometry(
    geometry: GridGeometry, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> GridGeometry:
    """Grid of the output of one conv/pool layer applied to a grid ``geometry`` (see module doc)."""
    return GridGeometry(
        stride=geometry.stride * stride,
        offset=geometry.offset + geometry.stride * ((kernel - 1) * dilation / 2.0 - padding),
    )


def sequential_geometry(
    layers: Iterable[nn.Module], geometry: GridGeometry = IMAGE_GRID
) -> GridGeometry:
    """Follow ``layers`` (Conv2d / MaxPool2d / AvgPool2d; element-wise layers are skipped) from
    the input grid ``geometry`` to the grid of their output."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            geometry = layer_geometry(
                geometry,
                _pair(layer.kernel_size),
                _pair(layer.stride),
                _pair(layer.padding),  # type: ignore[arg-type]
                _pair(layer.dilation),
            )
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = layer.stride if layer.stride is not None else layer.kernel_size
            dilation = getattr(layer, "dilation", 1)
            geometry = layer_geometry(
                geometry,
                _pair(layer.kernel_size),
                _pair(stride),
                _pair(layer.padding),
                _pair(dilation),
            )
        elif isinstance(layer, nn.Sequential):
            geometry = sequential_geometry(layer, geometry)
        elif isinstance(layer, (nn.ConvTranspose2d, nn.Upsample)):
            raise ValueError("sequential_geometry follows down-sampling layers only")
    return geometry


def upsample_crop(geometry: GridGeometry, kernel: int, stride: int) -> int:
    """Pixels to drop at the top/left of ``ConvTranspose2d(kernel, stride)`` applied to a grid
    ``geometry`` so that output pixel ``j`` lands on image pixel ``j - crop``.

    Input cell ``i`` is centred at output coordinate ``stride * i + kernel / 2`` (the kernel
    footprint of cell ``i`` is output pixels ``stride*i .. stride*i + kernel - 1``) and at image
    coordinate ``offset + geometry.stride * i``. Alignment therefore needs
    ``stride == geometry.stride`` and ``crop = kernel / 2 - offset``.

    Raises
    ------
    ValueError
        If the up-sampling factor differs from the grid stride, or the crop is negative or not a
        whole number of pixels (the output would then not cover the image's top-left corner, or
        be misaligned by a fraction of a pixel). The message says what to change.
    """
    if stride != geometry.stride:
        raise ValueError(
            f"the transposed convolution up-samples by {stride} but the feature grid has stride "
            f"{geometry.stride:g}; use stride {geometry.stride:g}"
        )
    crop = kernel / 2.0 - geometry.offset
    if crop < 0:
        raise ValueError(
            f"the up-sampled score map starts {-crop:g} px inside the image (grid offset "
            f"{geometry.offset:g} > kernel/2 = {kernel / 2:g}); increase conv1_padding or "
            "fc6_padding so that the first feature cell sits closer to the image's top-left"
        )
    if not math.isclose(crop, round(crop)):
        raise ValueError(
            f"crop {crop:g} is not a whole number of pixels: grid offset {geometry.offset:g} and "
            f"kernel {kernel} do not align; use an even kernel or change the paddings"
        )
    return int(round(crop))
