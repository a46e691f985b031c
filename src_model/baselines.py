"""The paper's comparison networks, with RPN-FCN's forward contract (empty boxes/scores).

* FCN-32s: VGG16 *with* pool5 (stride 32), fc6 7x7 conv, fc7, score, x32 transposed conv
  (kernel 64, bilinear init), crop (19 px for FCN's conv1_1 padding 100).
* FCN-noPool5: RPN-FCN without the RPN and without ROI convolution (fc6 is a plain conv), trained
  with the segmentation loss over all pixels ("FCN-noPool5-scratch" in Table 1).
* U-Net: Ronneberger et al., padded 3x3 convs (+ batch norm, so it trains from scratch at small
  batch sizes), ``unet_depth`` poolings, ``unet_base_channels`` doubled per level.

All train on ``loss_seg`` = mean pixel cross-entropy over all pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import VGG16Backbone
from .config import ModelConfig
from .contract import check_images, check_targets, eval_outputs, pad_to_multiple
from .head import FCNHead
from .losses import seg_loss

__all__ = ["FCN", "FCN32s", "FCNNoPool5", "UNet", "build_baseline"]


class _SegOnly(nn.Module):
    """Shared forward for segmentation-only networks: subclasses implement ``logits``."""

    config: ModelConfig
    size_divisible: int

    def logits(self, padded: Tensor, size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        score_threshold: float | None = None,  # accepted for a uniform contract; no ROIs here
        top_k: int | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"loss_seg"}``; eval: per-image dicts with empty ``boxes``/``scores``."""
        check_images(images)
        if self.training:
            check_targets(images, targets)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        logits = self.logits(pad_to_multiple(images, self.size_divisible), size)
        if not self.training:
            return eval_outputs(logits)
        assert targets is not None
        masks = torch.stack([t["masks"] for t in targets]).to(logits.device)
        return {"loss_seg": seg_loss(logits, masks, None, self.config.seg_loss)}


class FCN(_SegOnly):
    """VGG16 backbone + plain FCN head (``FCNHead`` called without ROIs)."""

    def __init__(self, backbone: VGG16Backbone, head: FCNHead, config: ModelConfig) -> None:
        super().__init__()
        self.backbone, self.head, self.config = backbone, head, config
        self.size_divisible = int(head.geometry.stride)

    def logits(self, padded: Tensor, size: tuple[int, int]) -> Tensor:
        return self.head(self.backbone(padded), size)


class FCN32s(FCN):
    """FCN-32s (Long et al.): pool5 kept, x32 up-sampling."""


class FCNNoPool5(FCN):
    """RPN-FCN's segmentation path alone: no pool5, plain-conv fc6, loss over all pixels."""


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(_SegOnly):
    """U-Net on ``Tensor[N, 1, H, W]`` slices (input padded to a multiple of ``2**depth``, output
    cropped back), 2 output classes."""

    def __init__(self, config: ModelConfig, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.config = config
        self.size_divisible = 2**depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(1, chans[0])])
        self.down.extend(_double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.up_conv = nn.ModuleList(
            _double_conv(2 * chans[i], chans[i]) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(chans[0], 2, 1)

    def logits(self, padded: Tensor, size: tuple[int, int]) -> Tensor:
        skips = []
        x = padded
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips[:-1])):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.out(x)[..., : size[0], : size[1]]


def build_baseline(config: ModelConfig) -> nn.Module:
    """FCN32s / FCNNoPool5 / UNet from ``config`` (``config.arch`` picks)."""
    if config.arch == "unet":
        return UNet(config, config.unet_base_channels, config.unet_depth)
    if config.arch not in ("fcn32s", "fcn_nopool5"):
        raise ValueError(f"build_baseline: {config.arch!r} is not a baseline architecture")
    pool5 = config.arch == "fcn32s"
    backbone = VGG16Backbone(
        config.width_divisor, config.conv1_padding, config.ceil_mode, include_pool5=pool5
    )
    head = FCNHead.from_config(config, backbone)
    return (FCN32s if pool5 else FCNNoPool5)(backbone, head, config)
