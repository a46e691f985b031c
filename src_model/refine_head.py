"""ROI refinement head: the paper's fc6/fc7 at stride 16, then a U-Net-style decoder whose every
layer is an ROI convolution, so the mask is drawn at stride 2 (or 1) and the cost still follows the
ROI area.

    conv5_3 --fc6 (7x7 ROI conv)--fc7 (1x1)--+                       stride 16
                                              up x2, concat conv4_3 -> 3x3 ROI conv    stride 8
                                              up x2, concat conv3_3 -> 3x3 ROI conv    stride 4
                                              up x2, concat conv2_2 -> 3x3 ROI conv    stride 2
                                              score (1x1 ROI conv) -> bilinear x2 -> crop

Level ``s`` is active on the ROI union on its own grid (``boxes_to_cell_mask`` with stride ``s``
and offset ``s / 2``); every layer at that level is :func:`src_model.roi_conv.roi_conv2d` with that
mask, so it is exactly zero outside the union, gradients flow only from inside (Eq. 2), and the
"sparse" path computes only the active cells. A slice without ROIs costs only the backbone and RPN.

Why: the paper's head scores at stride 16 and up-samples x16 once, which cannot draw a band 6-10 px
thick (``docs/ablation_head.json`` measures it). Geometry needs grids that nest (cell ``r`` at
stride ``s`` covers pixels ``s*r .. s*r+s-1``): the fast preset's conv1_1 padding 1 and floor
pooling; the paper preset's padding 50 does not nest and is refused with a clear message.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import GridGeometry, layer_geometry
from .roi_conv import (IMPLS, RoiConv2d, boxes_to_cell_mask, boxes_to_cell_rects, output_size,
                       rects_to_mask)

__all__ = ["RoiRefineHead", "refine_head_reference"]


def _nests(geometry: GridGeometry) -> bool:
    return math.isclose(geometry.offset, geometry.stride / 2.0)


class RoiRefineHead(nn.Module):
    """Scores per pixel from conv5_3 and the backbone's block outputs, inside the ROIs only.

    Parameters
    ----------
    in_channels, in_geometry
        conv5_3's channels and grid (``backbone.out_channels``, ``backbone.geometry``).
    skips
        ``backbone.skip_geometry()``: ``{stride: (channels, geometry)}`` of the block outputs.
    decoder_channels
        Output channels of the decoder levels, coarse to fine; level ``i`` runs at stride
        ``16 / 2**(i + 1)`` (so 3 levels end at stride 2, 4 at stride 1).
    fc6_kernel, fc6_padding, fc6_channels, fc7_channels, dropout
        As in ``ModelConfig`` (fc6 must keep the grid: ``fc6_padding == fc6_kernel // 2``).
    num_classes
        2 (background, structure).
    """

    def __init__(
        self,
        in_channels: int,
        in_geometry: GridGeometry,
        skips: dict[int, tuple[int, GridGeometry]],
        decoder_channels: tuple[int, ...],
        fc6_kernel: int = 7,
        fc6_padding: int = 3,
        fc6_channels: int = 256,
        fc7_channels: int = 256,
        dropout: float = 0.5,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.geometry = layer_geometry(in_geometry, fc6_kernel, 1, fc6_padding)
        self.skip_strides = tuple(
            int(self.geometry.stride) // 2 ** (i + 1) for i in range(len(decoder_channels))
        )
        grids = [self.geometry] + [skips[s][1] for s in self.skip_strides if s in skips]
        if (not decoder_channels or len(grids) != len(decoder_channels) + 1
                or not all(_nests(g) for g in grids)):
            raise ValueError(
                f"the refinement head needs feature grids that nest (cell r at stride s covering "
                f"pixels s*r..s*r+s-1) at strides {(16, *self.skip_strides)}; got "
                f"{[(g.stride, g.offset) for g in grids]}. Use conv1_padding=1, ceil_mode=False "
                "and fc6_padding = fc6_kernel // 2 (the fast preset), at most 4 decoder levels"
            )
        self.fc6 = RoiConv2d(in_channels, fc6_channels, fc6_kernel, padding=fc6_padding,
                             impl="auto")
        self.fc7 = RoiConv2d(fc6_channels, fc7_channels, 1, impl="auto")
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.decoder = nn.ModuleList()
        previous = fc7_channels
        for stride, channels in zip(self.skip_strides, decoder_channels):
            self.decoder.append(
                RoiConv2d(previous + skips[stride][0], channels, 3, padding=1, impl="auto"))
            previous = channels
        self.score = RoiConv2d(previous, num_classes, 1, impl="auto")
        for conv in (self.fc6, self.fc7, *self.decoder):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        for conv in self.decoder:
            # The decoder's inputs are channels-last (the backbone's layout); oneDNN reorders an
            # NCHW weight to match on every call, which on a 5 % window was ~6 % of the head
            # (batch 1). Loading a state dict copies into these tensors and keeps the layout.
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)

    @property
    def roi_impl(self) -> str:
        """``impl`` of the head's ROI convolutions ("dense", "sparse" or "auto"), kept so that
        both heads answer the same setting; this head's ``forward`` does not go through it:
        fc6, fc7, the decoder levels and the score compute exactly their window's active bounds
        (see ``forward``), which is what "sparse" aims at, whatever the setting."""
        return self.fc6.impl

    @roi_impl.setter
    def roi_impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"unknown roi_impl {value!r}; choose one of {', '.join(IMPLS)}")
        for conv in (self.fc6, self.fc7, *self.decoder, self.score):
            conv.impl = value

    @classmethod
    def from_config(cls, config, backbone) -> RoiRefineHead:
        """The head a ``ModelConfig`` with ``decoder_channels`` describes, on ``backbone``."""
        return cls(backbone.out_channels, backbone.geometry, backbone.skip_geometry(),
                   config.decoder_channels, config.fc6_kernel, config.fc6_padding,
                   config.fc6_channels, config.fc7_channels, config.dropout)

    def cell_mask(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        """ROI union on the fc6 output grid: ``Tensor[N, 1, h16, w16] bool``."""
        size = output_size(tuple(features.shape[-2:]), self.fc6)
        return _level_cells(rois, size, self.geometry.stride, features.device)[0]

    def forward(
        self,
        features: Tensor,
        image_size: tuple[int, int],
        rois: list[Tensor],
        skips: dict[int, Tensor],
    ) -> Tensor:
        """``Tensor[N, num_classes, H, W]`` logits, exactly 0 at cells outside the ROIs.

        ``features`` is conv5_3 ``Tensor[N, C, h16, w16]`` of the padded batch, ``skips`` the
        block outputs at ``self.skip_strides``, ``rois`` one ``Tensor[K_n, 4]`` per image.
        """
        if any(s not in skips for s in self.skip_strides):
            raise ValueError(f"the refinement head needs skip features at strides "
                             f"{self.skip_strides} (backbone.forward_with_skips)")
        size = output_size(tuple(features.shape[-2:]), self.fc6)
        mask, bounds = _level_cells(rois, size, self.geometry.stride, features.device)
        h, w = int(image_size[0]), int(image_size[1])
        logits = features.new_zeros((features.shape[0], self.score.out_channels, h, w))
        if bounds is None:  # no ROI in the batch: nothing to draw, the decoder never runs
            return logits + 0.0 * self.score.bias.sum()  # keeps the graph for backward
        # Every level runs on its own window: the bounding rectangle of its active cells
        # ("bounds") plus a one-cell halo of that level (all a 3x3 convolution at an active cell
        # reads). Outputs are computed on the bounds only and padded with the zeros the mask
        # would put on the halo. Fine cells nest in coarse ones, so a level's window lies inside
        # the coarser window scaled x2, and the up-sampled coarse values it needs are there.
        # Inputs a layer reads beyond the grid's edge are zeros, as the full convolution pads.
        # Same numbers as the full grid.
        window = _grow(bounds, 1, mask.shape[-2:])
        x = self.drop6(F.relu(_conv_on(self.fc6, features, (0, 0), bounds, mask, im2col=True)))
        x = self.drop7(F.relu(_conv_on(self.fc7, x, bounds[::2], bounds, mask, im2col=True)))
        x = _pad_to(x, bounds, window)
        r0, r1, c0, c1 = window
        for stride, conv in zip(self.skip_strides, self.decoder):
            skip = skips[stride]
            cells, bounds = _level_cells(rois, tuple(skip.shape[-2:]), stride, skip.device)
            assert bounds is not None  # a coarse active cell always has an active child
            fine = _grow(bounds, 1, cells.shape[-2:])
            f0, f1, g0, g1 = fine
            up = F.interpolate(x, scale_factor=2, mode="nearest")
            up = up[..., f0 - 2 * r0:f1 - 2 * r0, g0 - 2 * c0:g1 - 2 * c0]
            inp = _cat(up, skip[..., f0:f1, g0:g1])
            # on the CPU, the wide stride-8 level (fc7 + conv4_3 channels) as one GEMM when no
            # gradient is wanted (inference: ~8 % of the window path at batch 1); oneDNN's
            # convolution when training, whose backward is cheaper than the columns' (unfold)
            gemm = stride == 8 and not torch.is_grad_enabled() and inp.device.type == "cpu"
            x = _pad_to(F.relu(_conv_on(conv, inp, (f0, g0), bounds, cells, im2col=gemm)),
                        bounds, fine)
            r0, r1, c0, c1 = fine
        # the 1x1 score on the finest level's bounds as one small GEMM, zeros on its halo (the
        # bilinear up-sampling below reads them)
        x = _pad_to(_conv_on(self.score, x, (r0, c0), bounds, cells, im2col=True), bounds, fine)
        finest = self.skip_strides[-1]
        if finest > 1:
            # align_corners=False puts input cell i at pixel s*i + s/2 - 0.5: the nesting grid.
            # (NCHW first: with 2 channels, CPU bilinear is ~2.5x slower on channels-last.)
            x = F.interpolate(x.contiguous(), scale_factor=finest, mode="bilinear",
                              align_corners=False)
        y0, x0 = r0 * finest, c0 * finest
        y1, x1 = min(h, y0 + x.shape[-2]), min(w, x0 + x.shape[-1])
        logits[..., y0:y1, x0:x1] = x[..., : y1 - y0, : x1 - x0]
        return logits


def _level_cells(rois: list[Tensor], size: tuple[int, int], stride: float,
                 device) -> tuple[Tensor, tuple[int, int, int, int] | None]:
    """The ROI union on a nesting grid of ``stride`` (offset ``stride / 2``) and ``size``:
    ``(Tensor[N, 1, h, w] bool, bounds)`` with ``bounds`` as :func:`_active_window` gives them.
    A few CPU boxes (the usual case) are drawn and bounded from their cell rectangles, which
    skips scanning the mask (a few reductions per level, ~1 ms a slice); otherwise the mask is
    drawn and scanned."""
    rects = boxes_to_cell_rects(rois, size, stride, stride / 2.0)
    if rects is None:
        mask = boxes_to_cell_mask(rois, size, stride, stride / 2.0).to(device)
        return mask, _active_window(mask)
    mask = rects_to_mask(rects, (len(rois), 1, int(size[0]), int(size[1])))
    if not rects:
        return mask.to(device), None
    bounds = (min(r[1] for r in rects), max(r[2] for r in rects),
              min(r[3] for r in rects), max(r[4] for r in rects))
    return mask.to(device), bounds


def _active_window(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Rows ``r0:r1`` and columns ``c0:c1`` of the smallest rectangle holding every active cell
    of the batch; None without any."""
    rows, cols = mask.any(dim=3).any(dim=(0, 1)), mask.any(dim=2).any(dim=(0, 1))
    if not bool(rows.any()):
        return None
    r = rows.nonzero()[:, 0]
    c = cols.nonzero()[:, 0]
    return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


def _grow(rect: tuple[int, int, int, int], by: int, size) -> tuple[int, int, int, int]:
    """``rect`` (r0, r1, c0, c1) grown by ``by`` cells on each side, clipped to grid ``size``."""
    r0, r1, c0, c1 = rect
    return max(0, r0 - by), min(int(size[0]), r1 + by), max(0, c0 - by), min(int(size[1]), c1 + by)


def _pad_to(x: Tensor, inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> Tensor:
    """``x`` covering rectangle ``inner`` zero-padded to cover ``outer`` (which holds it)."""
    pads = (inner[2] - outer[2], outer[3] - inner[3], inner[0] - outer[0], outer[1] - inner[1])
    return F.pad(x, pads) if any(pads) else x


def _conv_on(conv: RoiConv2d, x: Tensor, origin: tuple[int, int],
             bounds: tuple[int, int, int, int], mask: Tensor, im2col: bool = False) -> Tensor:
    """``conv`` (stride 1, padding keeping the grid) evaluated on the output cells ``bounds``
    only and masked there (Eq. 1). ``x`` holds the grid from row/column ``origin`` on, with at
    least every in-grid input those cells read; reads beyond the grid's edge (``mask``'s size)
    are the zeros of the full convolution's padding. ``im2col``: one unfold + matmul instead of
    oneDNN's direct convolution, which suits the 7x7 fc6, the 1x1 fc7 and score on a small window
    better (oneDNN also reorders their weights on every such call), and the stride-8 decoder level
    at inference (its columns' backward costs more than oneDNN's, so training keeps the latter)."""
    r0, r1, c0, c1 = bounds
    p = int(conv.padding[0])  # type: ignore[index]
    h, w = mask.shape[-2:]
    need = (r0 - p, r1 + p, c0 - p, c1 + p)
    have = (max(0, need[0]), min(h, need[1]), max(0, need[2]), min(w, need[3]))
    crop = x[..., have[0] - origin[0]:have[1] - origin[0], have[2] - origin[1]:have[3] - origin[1]]
    crop = _pad_to(crop, have, need)
    if im2col:
        k, n, rows, cols = int(conv.kernel_size[0]), x.shape[0], r1 - r0, c1 - c0
        # im2col as a strided view and one copy (cheaper than F.unfold on a small crop): one
        # row per output cell, read from the channels-last crop, so the whole batch is one
        # cells x (C*k*k) GEMM against the weight as stored (a broadcast batched matmul costs
        # ~1.4x on the CPU; weight-major columns ~1.5x more on a 5 % window)
        nhwc = crop.permute(0, 2, 3, 1)  # N, H, W, C: a view, contiguous when channels-last
        if k == 1:
            columns = nhwc.reshape(n * rows * cols, -1)
            weight = conv.weight.flatten(1).t()
        elif conv.weight.is_contiguous(memory_format=torch.channels_last):
            # (kh, kw, C) columns against the channels-last weight as stored (a view)
            columns = nhwc.unfold(1, k, 1).unfold(2, k, 1).permute(0, 1, 2, 4, 5, 3)
            columns = columns.reshape(n * rows * cols, -1)
            weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1).t()
        else:
            columns = nhwc.unfold(1, k, 1).unfold(2, k, 1).reshape(n * rows * cols, -1)
            weight = conv.weight.flatten(1).t()
        out = (columns @ weight if conv.bias is None
               else torch.addmm(conv.bias, columns, weight))
        out = out.view(n, rows, cols, -1).permute(0, 3, 1, 2)  # NCHW, channels-last strides
    else:
        out = F.conv2d(crop, conv.weight, conv.bias)
    return out * mask[..., r0:r1, c0:c1]


def _cat(up: Tensor, skip: Tensor) -> Tensor:
    """Channel concat in the skip's memory layout (the backbone runs channels_last)."""
    return torch.cat([up.contiguous(memory_format=torch.channels_last), skip], dim=1)


def refine_head_reference(head: RoiRefineHead, features: Tensor, image_size: tuple[int, int],
                          rois: list[Tensor], skips: dict[int, Tensor]) -> Tensor:
    """The same head computed the plain way, for tests and benchmarks: every layer a dense
    convolution over the whole grid, masked to its level's ROI cells (Eq. 1 literally), then
    bilinear up-sampling and the crop. Equal to ``head(...)`` inside the ROI pixel union (dropout
    off); costs the full grid whatever the ROIs."""
    top = int(head.geometry.stride)
    mask = boxes_to_cell_mask(rois, tuple(features.shape[-2:]), top, top / 2).to(features.device)
    x = F.relu(F.conv2d(features, head.fc6.weight, head.fc6.bias,
                        padding=head.fc6.padding)) * mask
    x = F.relu(F.conv2d(x, head.fc7.weight, head.fc7.bias)) * mask
    for stride, conv in zip(head.skip_strides, head.decoder):
        skip = skips[stride]
        mask = boxes_to_cell_mask(rois, tuple(skip.shape[-2:]), stride, stride / 2).to(skip.device)
        up = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        x = F.relu(F.conv2d(torch.cat([up, skip], 1), conv.weight, conv.bias, padding=1)) * mask
    x = F.conv2d(x, head.score.weight, head.score.bias) * mask
    finest = head.skip_strides[-1]
    if finest > 1:
        x = F.interpolate(x, scale_factor=finest, mode="bilinear", align_corners=False)
    return x[..., : image_size[0], : image_size[1]]
