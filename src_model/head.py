"""FCN segmentation head: fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> score -> learned
transposed convolution (bilinear init) -> crop to the input size.

In RPN-FCN fc6 is the ROI convolution (the paper's only one). fc7 and score are 1x1 ROI
convolutions with the same cell mask: their biases would otherwise paint a constant logit over every
cell outside the ROIs (the authors' Caffe code let it leak). So the score map is exactly 0 outside
the ROI cells, and the transposed convolution (no bias) only spreads ROI-cell scores. Called without
ROIs the same module is the plain FCN head of the baselines (FCN-32s, FCN-noPool5).

``FCNHead.roi_impl`` (a runtime attribute, not a config field: checkpoints are unaffected) picks how
the ROI path is computed. "dense": three masked convolutions over the whole grid. "sparse": fc6 only
at the ROI cells (``roi_conv2d_gathered``), the activations stay gathered as ``[A, C]`` rows through
ReLU, dropout, fc7 and score (1x1 convolutions are linear layers on those rows), and only the
2-channel score map is scattered back onto the grid. "auto" (default): "sparse" when the ROI union
covers less than ``roi_conv.AUTO_SPARSE_BELOW`` of the fc6 cells. Both give the same logits and
gradients; in training the dropout masks are drawn in another order, so a seeded run differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import GridGeometry, layer_geometry, upsample_crop
from .roi_conv import (
    IMPLS,
    RoiConv2d,
    active_cells,
    boxes_to_cell_mask,
    choose_impl,
    output_size,
    roi_conv2d_gathered,
    scatter_cells,
)

__all__ = ["FCNHead", "FoldConvTranspose2d", "bilinear_kernel"]


def bilinear_kernel(channels: int, kernel: int) -> Tensor:
    """FCN's bilinear up-sampling filter, ``Tensor[channels, channels, kernel, kernel]``,
    class-to-same-class only (the transposed conv starts as plain bilinear interpolation)."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float64)
    filt1d = 1 - (og - centre).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel, kernel)
    for c in range(channels):
        weight[c, c] = filt
    return weight


class FoldConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same result) computed as one matrix product and
    ``F.fold`` (col2im). For FCN's up-sampling -- two classes, kernel 2 x stride, no padding --
    this is ~5x faster on CPU than PyTorch's generic transposed convolution (0.7 vs 3.5 ms for a
    367x192 slice on one thread)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        """``Tensor[N, C_in, h, w]`` -> ``Tensor[N, C_out, (h-1)*s + k, (w-1)*s + k]``."""
        if output_size is not None:
            raise ValueError("FoldConvTranspose2d has a fixed output size")
        n, c, h, w = input.shape
        k, s = self.kernel_size[0], self.stride[0]
        # Each input cell paints a k x k patch per output channel; fold adds the overlaps up.
        # One plain mm over all cells of the batch ([C_out*k*k, C_in] @ [C_in, N*h*w]): a
        # batched matmul with a weight that requires grad is ~15x slower on CPU.
        cells = input.transpose(0, 1).reshape(c, n * h * w)
        cols = torch.mm(self.weight.flatten(1).t(), cells)
        cols = cols.view(-1, n, h * w).transpose(0, 1)
        return F.fold(cols, ((h - 1) * s + k, (w - 1) * s + k), k, stride=s)


class FCNHead(nn.Module):
    """Scores per pixel from a stride-``s`` feature map.

    Parameters
    ----------
    in_channels
        Channels of the backbone output.
    in_geometry
        Geometry of the backbone output grid (``backbone.geometry``).
    fc6_kernel, fc6_padding, fc6_channels, fc7_channels, dropout
        As in ``ModelConfig``.
    num_classes
        2 (background, acetabulum).

    The up-sampling factor is the grid stride (16 without pool5, 32 with), its kernel twice that,
    and ``self.crop`` (``src_model.geometry.upsample_crop``) aligns output pixel ``crop + i`` with
    image pixel ``i``. ``self.geometry`` is the fc6 output grid, on which ROI cell masks are built.
    ``self.roi_impl`` ("dense", "sparse" or "auto", default "auto") picks the computation of the
    ROI path (see the module docstring); it is not saved in the state_dict.
    """

    def __init__(
        self,
        in_channels: int,
        in_geometry: GridGeometry,
        fc6_kernel: int = 7,
        fc6_padding: int = 0,
        fc6_channels: int = 4096,
        fc7_channels: int = 4096,
        dropout: float = 0.5,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.fc6 = RoiConv2d(in_channels, fc6_channels, fc6_kernel, padding=fc6_padding)
        self.fc7 = RoiConv2d(fc6_channels, fc7_channels, 1)
        self.score = RoiConv2d(fc7_channels, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.geometry = layer_geometry(in_geometry, fc6_kernel, 1, fc6_padding)
        factor = int(self.geometry.stride)
        self.upscore = FoldConvTranspose2d(num_classes, num_classes, 2 * factor, factor)
        self.crop = upsample_crop(self.geometry, 2 * factor, factor)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # FCN zero-initialises the classifier: the first steps then learn from fc7's features
        # instead of fighting a random score map.
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        with torch.no_grad():
            self.upscore.weight.copy_(bilinear_kernel(num_classes, 2 * factor))
        self.roi_impl = "auto"

    @property
    def roi_impl(self) -> str:
        """How the ROI path is computed: "dense", "sparse" or "auto" (see the module doc)."""
        return self._roi_impl

    @roi_impl.setter
    def roi_impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"unknown roi_impl {value!r}; choose one of {', '.join(IMPLS)}")
        self._roi_impl = value

    @classmethod
    def from_config(cls, config, backbone) -> "FCNHead":
        """The head a ``ModelConfig`` describes, on top of ``backbone`` (any VGG16Backbone)."""
        return cls(backbone.out_channels, backbone.geometry, config.fc6_kernel,
                   config.fc6_padding, config.fc6_channels, config.fc7_channels, config.dropout)
    def cell_mask(self, features: Tensor, rois: list[Tensor]) -> Tensor:
        """ROI union on the fc6 output grid: ``Tensor[N, 1, h6, w6] bool``."""
        size = output_size(tuple(features.shape[-2:]), self.fc6)
        mask = boxes_to_cell_mask(rois, size, self.geometry.stride, self.geometry.offset)
        return mask.to(features.device)

    def _sparse_scores(self, features: Tensor, mask: Tensor) -> Tensor:
        """fc6 -> fc7 -> score at the ROI cells only, as ``[A, C]`` rows; returns the score map
        ``Tensor[N, num_classes, h6, w6]``, exactly 0 outside ``mask``."""
        cells = active_cells(mask)
        fc6 = self.fc6
        x = roi_conv2d_gathered(
            features, fc6.weight, fc6.bias, cells,
            stride=fc6.stride[0], padding=fc6.padding[0], dilation=fc6.dilation[0],  # type: ignore[index]
        )
        x = self.drop6(self.relu(x))
        x = self.drop7(self.relu(F.linear(x, self.fc7.weight.flatten(1), self.fc7.bias)))
        x = F.linear(x, self.score.weight.flatten(1), self.score.bias)
        return scatter_cells(x, cells, (mask.shape[0], x.shape[1], *mask.shape[-2:]))

    def forward(
        self, features: Tensor, image_size: tuple[int, int], rois: list[Tensor] | None = None
    ) -> Tensor:
        """Score logits per pixel.

        Parameters
        ----------
        features
            ``Tensor[N, C, h, w]`` from the backbone.
        image_size
            ``(H, W)`` of the slices (before any padding).
        rois
            One ``Tensor[K_n, 4]`` per image (``x1, y1, x2, y2`` in image pixels) for the ROI
            convolution, or None for a plain FCN head.

        Returns
        -------
        ``Tensor[N, num_classes, H, W]`` logits; with ``rois`` exactly 0 wherever no ROI cell
        reaches.
        """
        mask = None if rois is None else self.cell_mask(features, rois)
        if mask is not None and choose_impl(self.roi_impl, mask) == "sparse":
            # The gathered fc6 reads a channels_last input as it is (no layout copy).
            x = self.upscore(self._sparse_scores(features, mask))
        else:
            # The backbone runs channels_last; fc6's 7x7 convolution on the small stride-16 grid
            # is 2x faster on CPU in the standard layout (one thread: 7 vs 14 ms, fast preset).
            features = features.contiguous()
            x = self.drop6(self.relu(self.fc6(features, mask)))
            x = self.drop7(self.relu(self.fc7(x, mask)))
            x = self.upscore(self.score(x, mask))
        h, w = int(image_size[0]), int(image_size[1])
        if x.shape[-2] < self.crop + h or x.shape[-1] < self.crop + w:
            raise ValueError(
                f"the up-sampled scores ({x.shape[-2]}x{x.shape[-1]}, crop {self.crop}) do not "
                f"cover the {h}x{w} slice; pad the input to a multiple of the stride "
                f"({int(self.geometry.stride)}) before the backbone"
            )
        return x[..., self.crop : self.crop + h, self.crop : self.crop + w]
