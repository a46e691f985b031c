"""ROI convolution (Zhang et al., ISBI 2018, Eq. 1-2): a convolution evaluated only inside boxes.

``y[n, :, i, j] = 1[(i, j) in union of the ROIs of image n] * (conv(x, w)[n, :, i, j] + b)``

Outside the union the output is exactly zero (bias included: the authors' Caffe layer added the
bias everywhere, which we do not copy). Gradients follow Eq. 2: only output positions inside the
union contribute to the gradients of the input, the weight and the bias; the authors' backward
mask was shifted by one cell relative to the forward one, which we do not copy either.

The layout follows torchvision's custom ops: a plain function :func:`roi_conv2d`, a thin module
:class:`RoiConv2d`, and a slow pure reference :func:`roi_conv2d_reference` for the tests. The
function takes the ROI union as a *cell mask* on its output grid; :func:`boxes_to_cell_mask` turns
image-pixel boxes into that mask and :func:`boxes_to_pixel_mask` gives the pixel-level union used by
the segmentation loss and the eval masking.

Implementations (``impl``): "dense" convolves everywhere and masks (cost independent of the ROIs);
"sparse" computes only the active cells -- im2col of those cells, one matmul, scatter
(:func:`roi_conv2d_gathered`, :func:`scatter_cells`), cost proportional to the ROI area; "auto"
picks "sparse" below :data:`AUTO_SPARSE_BELOW` coverage. ``scripts/bench_roi_conv.py`` measures them.

Box -> cell rule (see ``src_model.geometry`` for the coordinates)
----------------------------------------------------------------
Boxes are ``x1, y1, x2, y2`` in continuous image coordinates (pixel ``(i, j)`` is the square
``[j, j+1) x [i, i+1)``). Output cell ``(r, c)`` of a grid ``(stride s, offset o)`` is centred at
image position ``(o + s*c, o + s*r)``; its footprint is the ``s x s`` square centred there. The cell
is *active* iff its footprint overlaps the box with positive area::

    o + s*c - s/2 < x2  and  o + s*c + s/2 > x1      (same for rows with y1, y2)

Cells outside the grid simply do not exist (boxes are clamped to the grid); a box that lies
entirely outside the grid activates nothing; an image with no boxes has no active cell. Because
footprints tile the plane, every pixel whose centre is inside a (non-degenerate) box lies in the
footprint of an active cell.

Box -> pixel rule: pixel ``(i, j)`` is inside the box iff its centre is:
``x1 <= j + 0.5 <= x2`` and ``y1 <= i + 0.5 <= y2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .roi_conv_sparse import (
    active_cells,
    conv_out_size,
    roi_conv2d_gathered,
    scatter_cells,
)

__all__ = [
    "AUTO_SPARSE_BELOW",
    "IMPLS",
    "RoiConv2d",
    "active_cells",
    "boxes_to_cell_mask",
    "boxes_to_cell_rects",
    "rects_to_mask",
    "boxes_to_pixel_mask",
    "choose_impl",
    "output_size",
    "roi_conv2d",
    "roi_conv2d_gathered",
    "roi_conv2d_reference",
    "scatter_cells",
]

IMPLS = ("dense", "sparse", "auto")

# "auto" takes the gathered (sparse) path when fewer than this fraction of the output cells are
# active. Measured with scripts/bench_roi_conv.py (see that script's docstring for the numbers):
# the gathered path costs roughly (fraction x a full im2col + matmul), which stays below the dense
# convolution up to ~45-90% coverage depending on the shape (the small fast-preset layers break
# even near 45-50%); 0.35 leaves a margin so "auto" stays at or below the dense cost.
AUTO_SPARSE_BELOW = 0.35


def _union_of_index_boxes(
    r0: Tensor, r1: Tensor, c0: Tensor, c1: Tensor, shape: tuple[int, int]
) -> Tensor:
    """Union of the half-open index rectangles ``[r0, r1) x [c0, c1)`` on a grid ``shape``.

    O(K + H*W) via a 2-D difference array, so hundreds of test-time proposals cost no more than
    one. Indices are clamped to the grid. Returns ``Tensor[H, W] bool``.
    """
    h, w = shape
    r0, r1 = r0.clamp(0, h), r1.clamp(0, h)
    c0, c1 = c0.clamp(0, w), c1.clamp(0, w)
    keep = (r1 > r0) & (c1 > c0)
    r0, r1, c0, c1 = r0[keep], r1[keep], c0[keep], c1[keep]
    diff = torch.zeros((h + 1, w + 1), dtype=torch.int32, device=r0.device)
    ones = torch.ones_like(r0, dtype=torch.int32)
    diff.index_put_((r0, c0), ones, accumulate=True)
    diff.index_put_((r0, c1), -ones, accumulate=True)
    diff.index_put_((r1, c0), -ones, accumulate=True)
    diff.index_put_((r1, c1), ones, accumulate=True)
    return diff.cumsum(0).cumsum(1)[:h, :w] > 0


# Up to this many boxes in a CPU batch, rectangles are filled by slicing: ~10x cheaper than the
# difference array's dozen tensor ops, which the ROI head pays once per decoder level.
FEW_BOXES = 16


def _boxes_union(boxes_per_image: list[Tensor], shape: tuple[int, int],
                 rule: Callable[..., tuple[Any, ...]]) -> Tensor:
    """``Tensor[N, H, W] bool``: per image, the union of the half-open index rectangles
    ``rule(x1, y1, x2, y2, floor, ceil) -> (r0, r1, c0, c1)`` of its boxes on a grid ``shape``.

    ``rule`` is written once and evaluated either on Python floats (``math.floor``/``ceil``)
    for a few finite boxes on the CPU, whose rectangles are then filled by slicing, or on
    float64 tensors (``torch.floor``/``ceil``) drawn with a difference array
    (:func:`_union_of_index_boxes`).
    """
    h, w = shape
    if not boxes_per_image:
        return torch.zeros((0, h, w), dtype=torch.bool)
    rects = _few_rects(boxes_per_image, shape, rule)
    if rects is not None:
        return rects_to_mask(rects, (len(boxes_per_image), h, w))
    checked = [_check_boxes(b) for b in boxes_per_image]
    masks = []
    for b in checked:
        # clamped to the grid (+-1) before the integer cast, which huge coordinates overflow
        r0, r1, c0, c1 = (v.clamp(-1, size + 1).long() for v, size in zip(
            rule(*b.unbind(1), torch.floor, torch.ceil), (h, h, w, w)))
        masks.append(_union_of_index_boxes(r0, r1, c0, c1, (h, w)))
    return torch.stack(masks)


def _few_rects(boxes_per_image: list[Tensor], shape: tuple[int, int],
               rule: Callable[..., tuple[Any, ...]]) -> list[tuple[int, int, int, int, int]] | None:
    """The index rectangles ``(image, r0, r1, c0, c1)`` of up to ``FEW_BOXES`` finite CPU boxes,
    clipped to the grid, empty ones dropped; None when the boxes must take the tensor path
    (more boxes, another device, a NaN or infinity). The coordinates are read as Python floats
    (doubles: exact for any float tensor), so the rule's arithmetic is the tensor path's
    float64."""
    for b in boxes_per_image:
        _check_shape(b)
    if sum(int(b.shape[0]) for b in boxes_per_image) > FEW_BOXES or any(
            b.device.type != "cpu" for b in boxes_per_image):
        return None
    h, w = shape
    try:  # math.floor of a NaN / infinity raises: the tensor path takes those
        raw = [(i, *rule(*row, math.floor, math.ceil))
               for i, b in enumerate(boxes_per_image) for row in b.detach().tolist()]
    except (ValueError, OverflowError):
        return None
    rects = []
    for i, r0, r1, c0, c1 in raw:
        r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        if r1 > r0 and c1 > c0:
            rects.append((i, r0, r1, c0, c1))
    return rects


def rects_to_mask(rects: list[tuple[int, int, int, int, int]], shape: tuple[int, ...]) -> Tensor:
    """A CPU ``Tensor[*shape] bool`` (N first, grid last two) with the index rectangles
    ``(image, r0, r1, c0, c1)`` set; drawn in NumPy, ~4x cheaper than torch slice fills."""
    mask = np.zeros(shape, dtype=bool)
    for i, r0, r1, c0, c1 in rects:
        mask[i, ..., r0:r1, c0:c1] = True
    return torch.from_numpy(mask)


def _check_shape(boxes: Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must be Tensor[K, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
        )


def _check_boxes(boxes: Tensor) -> Tensor:
    _check_shape(boxes)
    # float64 keeps the floor/ceil below exact for any coordinate (MPS has no float64; float32
    # is exact there too for power-of-two strides).
    dtype = torch.float32 if boxes.device.type == "mps" else torch.float64
    return boxes.detach().to(dtype)


def boxes_to_cell_mask(
    boxes_per_image: list[Tensor],
    out_size: tuple[int, int],
    stride: float,
    offset: float,
) -> Tensor:
    """Cells of a feature grid whose footprint overlaps any box of their image.

    Parameters
    ----------
    boxes_per_image
        One ``Tensor[K_n, 4]`` per image, ``x1, y1, x2, y2`` in image pixels; ``K_n`` may be 0.
    out_size
        ``(Ho, Wo)`` of the grid.
    stride, offset
        Grid geometry: cell ``(r, c)`` is centred at image position
        ``(offset + stride * c, offset + stride * r)``. See the module docstring for the rule.

    Returns
    -------
    Tensor[N, 1, Ho, Wo] bool, on the device of the boxes.
    """
    ho, wo = int(out_size[0]), int(out_size[1])
    return _boxes_union(boxes_per_image, (ho, wo), _cell_rule(stride, offset))[:, None]


def boxes_to_cell_rects(
    boxes_per_image: list[Tensor],
    out_size: tuple[int, int],
    stride: float,
    offset: float,
) -> list[tuple[int, int, int, int, int]] | None:
    """The cell rectangles :func:`boxes_to_cell_mask` fills, without drawing them:
    ``[(image, r0, r1, c0, c1), ...]`` (half-open, clipped to the grid, empty ones dropped), for
    callers that want a window's bounds without scanning a mask. None when the boxes take the
    mask's tensor path (more than ``FEW_BOXES`` boxes, a GPU, a non-finite coordinate): use the
    mask then."""
    return _few_rects(boxes_per_image, (int(out_size[0]), int(out_size[1])),
                      _cell_rule(stride, offset))


def _cell_rule(stride: float, offset: float) -> Callable[..., tuple[Any, ...]]:
    """The index rectangle of the cells whose footprint overlaps a box (module docstring)."""
    half = stride / 2.0

    def rule(x1, y1, x2, y2, floor, ceil):  # python floats or tensors
        # o + s*c - s/2 < x2  <=>  c < (x2 - o + s/2) / s  <=>  c < ceil(that)
        # o + s*c + s/2 > x1  <=>  c > (x1 - o - s/2) / s  <=>  c >= floor(that) + 1
        return (floor((y1 - offset - half) / stride) + 1, ceil((y2 - offset + half) / stride),
                floor((x1 - offset - half) / stride) + 1, ceil((x2 - offset + half) / stride))

    return rule


def boxes_to_pixel_mask(boxes_per_image: list[Tensor], image_size: tuple[int, int]) -> Tensor:
    """Pixel-level union of the boxes: pixel ``(i, j)`` is inside a box iff its centre
    ``(j + 0.5, i + 0.5)`` is (borders included).

    Parameters
    ----------
    boxes_per_image
        One ``Tensor[K_n, 4]`` per image (``x1, y1, x2, y2``); ``K_n`` may be 0.
    image_size
        ``(H, W)``.

    Returns
    -------
    Tensor[N, H, W] bool.
    """
    h, w = int(image_size[0]), int(image_size[1])

    def rule(x1, y1, x2, y2, floor, ceil):  # python floats or tensors
        # x1 <= j + 0.5  <=>  j >= ceil(x1 - 0.5);   j + 0.5 <= x2  <=>  j <= floor(x2 - 0.5)
        return ceil(y1 - 0.5), floor(y2 - 0.5) + 1, ceil(x1 - 0.5), floor(x2 - 0.5) + 1

    return _boxes_union(boxes_per_image, (h, w), rule)


def _check_mask(
    input: Tensor, weight: Tensor, mask: Tensor, stride: int, padding: int, dilation: int
) -> None:
    n, _, h, w = input.shape
    kh, kw = weight.shape[-2:]
    expected = (
        n,
        1,
        conv_out_size(h, kh, stride, padding, dilation),
        conv_out_size(w, kw, stride, padding, dilation),
    )
    if tuple(mask.shape) != expected or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool Tensor{list(expected)} (one channel, the conv output size); "
            f"got {mask.dtype} Tensor{list(mask.shape)}"
        )


def choose_impl(impl: str, mask: Tensor) -> str:
    """Resolve ``impl`` ("dense", "sparse" or "auto") for ``mask``: "auto" becomes "sparse" when
    fewer than :data:`AUTO_SPARSE_BELOW` of the output cells are active, else "dense"."""
    if impl not in IMPLS:
        raise ValueError(f"unknown roi_conv2d impl {impl!r}; available: {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    total = mask.numel()
    active = int(mask.sum()) if total else 0
    return "sparse" if active < AUTO_SPARSE_BELOW * total else "dense"


def roi_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    impl: str = "dense",
) -> Tensor:
    """ROI convolution (Eq. 1): ``conv2d(input, weight, bias)`` where ``mask`` is True, 0 elsewhere.

    Parameters
    ----------
    input
        ``Tensor[N, C_in, H, W]``.
    weight, bias
        ``Tensor[C_out, C_in, kh, kw]`` and ``Tensor[C_out]`` (or None), as for ``F.conv2d``.
    mask
        ``Tensor[N, 1, Ho, Wo] bool``: the ROI union on the *output* grid
        (:func:`boxes_to_cell_mask`).
    stride, padding, dilation
        As for ``F.conv2d`` (square only; zero padding).
    impl
        ``"dense"``: convolve everywhere, then zero the positions outside the mask. Autograd then
        gives exactly Eq. 2: the masked-out positions' upstream gradient is zeroed before it
        reaches input, weight or bias. Cost independent of the ROI area.
        ``"sparse"``: compute only the active cells (:func:`roi_conv2d_gathered`: im2col of those
        cells and one matmul) and scatter them into a zero output; cost follows the ROI area.
        Same numbers as "dense" up to float rounding, same Eq. 2 gradients.
        ``"auto"``: "sparse" below :data:`AUTO_SPARSE_BELOW` active fraction, else "dense".

    Returns
    -------
    ``Tensor[N, C_out, Ho, Wo]``, exactly zero where ``mask`` is False.
    """
    _check_mask(input, weight, mask, stride, padding, dilation)
    if choose_impl(impl, mask) == "sparse":
        cells = active_cells(mask)
        values = roi_conv2d_gathered(input, weight, bias, cells, stride, padding, dilation)
        return scatter_cells(values, cells, (input.shape[0], weight.shape[0], *mask.shape[-2:]))
    out = F.conv2d(input, weight, bias, stride=stride, padding=padding, dilation=dilation)
    # masked_fill (not a multiply) so that a non-finite value outside the ROIs cannot leak as NaN.
    return out.masked_fill(~mask, 0.0)


def roi_conv2d_reference(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Tensor:
    """Slow literal transcription of Eq. 1 for tests: loops over the active output positions and
    computes each one as an explicit sum of ``w * z`` over the window. Positions never computed
    stay zero and are not in the autograd graph, so the gradients are Eq. 2 by construction."""
    _check_mask(input, weight, mask, stride, padding, dilation)
    n, _, _, _ = input.shape
    cout, _, kh, kw = weight.shape
    ho, wo = mask.shape[-2:]
    x = F.pad(input, (padding, padding, padding, padding))
    out = input.new_zeros((n, cout, ho, wo))
    for b, r, c in mask[:, 0].nonzero().tolist():
        rows = slice(r * stride, r * stride + dilation * (kh - 1) + 1, dilation)
        cols = slice(c * stride, c * stride + dilation * (kw - 1) + 1, dilation)
        patch = x[b, :, rows, cols]  # [C_in, kh, kw]
        value = (weight * patch[None]).sum(dim=(1, 2, 3))
        if bias is not None:
            value = value + bias
        out[b, :, r, c] = value
    return out


class RoiConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``forward(input, mask)`` is :func:`roi_conv2d`.

    It subclasses ``nn.Conv2d`` so that its parameters have the same names and initialisation as a
    plain convolution (a checkpoint of FCN-noPool5 loads into RPN-FCN and vice versa). With
    ``mask=None`` it is an ordinary convolution.
    """

    def __init__(self, *args, impl: str = "dense", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("RoiConv2d supports groups=1, numeric zero padding only")
        if any(v[0] != v[1] for v in (self.stride, self.padding, self.dilation)):
            raise ValueError("RoiConv2d supports square stride/padding/dilation only")
        if impl not in IMPLS:
            raise ValueError(f"unknown roi_conv2d impl {impl!r}; available: {', '.join(IMPLS)}")
        self.impl = impl

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``Tensor[N, C_in, H, W]`` and an optional ``Tensor[N, 1, Ho, Wo] bool`` mask ->
        ``Tensor[N, C_out, Ho, Wo]``."""
        if mask is None:
            return super().forward(input)
        return roi_conv2d(
            input,
            self.weight,
            self.bias,
            mask,
            stride=self.stride[0],
            padding=self.padding[0],  # type: ignore[index]
            dilation=self.dilation[0],
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl!r}"


def output_size(size: tuple[int, int], layer: nn.Conv2d) -> tuple[int, int]:
    """Spatial size of ``layer``'s output for an input of spatial ``size`` ``(H, W)``."""
    return tuple(  # type: ignore[return-value]
        conv_out_size(s, k, st, p, d)
        for s, k, st, p, d in zip(
            size, layer.kernel_size, layer.stride, layer.padding, layer.dilation
        )
    )
