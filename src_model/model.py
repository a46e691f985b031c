"""RPN-FCN (Zhang et al., ISBI 2018): VGG16 backbone -> RPN -> ROI-conv FCN head, and the builder.

:class:`RPNFCN` only wires parts passed in (torchvision ``GeneralizedRCNN`` style), so each part can
be built by hand in a test; :func:`build_model` turns a ``ModelConfig`` into a model of any
architecture (the baselines live in ``src_model.baselines``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from .backbone import VGG16Backbone
from .config import ModelConfig
from .contract import check_images, check_targets, eval_outputs, pad_to_multiple
from .head import FCNHead
from .refine_head import RoiRefineHead
from .losses import seg_loss
from .roi_conv import boxes_to_pixel_mask
from .rpn import RoiSegRPN, build_rpn, drop_burned_in, select_test_rois, select_training_rois

__all__ = ["RPNFCN", "build_model", "count_parameters", "grow_boxes"]


class RPNFCN(nn.Module):
    """End-to-end detection-segmentation network with ROI convolution.

    ``forward(images Tensor[N, 1, H, W], targets=None, *, score_threshold=None, top_k=None)``:

    * training: ``targets`` (one dict per image: ``boxes Tensor[K, 4]`` with K = 0 or 1,
      ``masks Tensor[H, W]`` int 0/1) -> ``{"loss_objectness", "loss_rpn_box_reg", "loss_seg"}``.
      ROIs = GT box + proposals with IoU >= ``roi_iou_thresh``; ``loss_seg`` is the pixel
      cross-entropy (+ soft Dice with ``seg_loss="dice_ce"``) inside their pixel union (0 for
      slices without object).
    * eval: one dict per image: ``boxes Tensor[K, 4]`` (the ROIs used), ``scores Tensor[K]``
      (sigmoid objectness), ``probabilities Tensor[H, W]`` (foreground, 0 outside the ROIs),
      ``mask Tensor[H, W] uint8``. ROIs = all post-NMS proposals, filtered by ``score_threshold``
      and ``top_k`` (None: the config's ``test_score_threshold`` / ``test_top_k``); the head
      and the region see them grown by ``test_roi_margin`` px (``boxes`` are the RPN's).
    """

    def __init__(
        self, backbone: VGG16Backbone, rpn: RoiSegRPN, head: FCNHead | RoiRefineHead,
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.backbone, self.rpn, self.head, self.config = backbone, rpn, head, config
        self.size_divisible = int(head.geometry.stride)

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        score_threshold: float | None = None,
        top_k: int | None = None,
        burned_in: Tensor | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """``burned_in`` (eval only): a stack's overlay map
        (:func:`~src_model.preprocess.burned_in`, ``Tensor[H, W]`` or ``[N, H, W]``); proposals
        whose salient pixels are largely burned-in overlay are dropped before the test filter
        (:func:`~src_model.rpn.drop_burned_in`), so they neither paint a mask nor take the
        structure's top-k place."""
        check_images(images)
        if self.training:
            check_targets(images, targets)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        padded = pad_to_multiple(images, self.size_divisible)
        strides = getattr(self.head, "skip_strides", ())
        if strides:
            features, skips = self.backbone.forward_with_skips(padded, strides)
        else:
            features, skips = self.backbone(padded), None
        image_list = ImageList(padded, [size] * images.shape[0])
        proposals, scores, losses = self.rpn(image_list, {"0": features}, targets)
        if self.training:
            assert targets is not None
            gt = [t["boxes"] for t in targets]
            rois = select_training_rois(
                proposals, gt, self.config.roi_iou_thresh, self.config.roi_batch_size_per_image
            )
        else:
            thr = self.config.test_score_threshold if score_threshold is None else score_threshold
            k = self.config.test_top_k if top_k is None else top_k
            if burned_in is not None:
                proposals, scores = drop_burned_in(proposals, scores,
                                                   burned_in.to(features.device))
            rois, scores = select_test_rois(proposals, scores, thr, k,
                                            self.config.test_single_object)
        head_rois = rois if self.training else grow_boxes(rois, self.config.test_roi_margin, size)
        logits = (self.head(features, size, head_rois, skips) if skips is not None
                  else self.head(features, size, head_rois))
        region = boxes_to_pixel_mask(head_rois, size).to(logits.device)
        if not self.training:
            return eval_outputs(logits, rois, scores, region)
        masks = torch.stack([t["masks"] for t in targets]).to(logits.device)
        return {**losses, "loss_seg": seg_loss(logits, masks, region, self.config.seg_loss)}


def grow_boxes(boxes: list[Tensor], margin: float, size: tuple[int, int]) -> list[Tensor]:
    """Each ``Tensor[K, 4]`` (x1, y1, x2, y2) grown by ``margin`` px on every side, clipped to
    the image ``size`` (H, W); the same list when ``margin`` is 0."""
    if not margin:
        return boxes
    grow = torch.tensor([-margin, -margin, margin, margin])
    hi = torch.tensor([size[1], size[0], size[1], size[0]])
    return [torch.minimum(torch.clamp(b + grow.to(b), min=0), hi.to(b)) for b in boxes]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _build_rpn_fcn(config: ModelConfig) -> RPNFCN:
    backbone = VGG16Backbone(config.width_divisor, config.conv1_padding, config.ceil_mode)
    rpn = build_rpn(config, backbone.out_channels, backbone.geometry)
    head: FCNHead | RoiRefineHead = (
        RoiRefineHead.from_config(config, backbone) if config.decoder_channels
        else FCNHead.from_config(config, backbone))
    return RPNFCN(backbone, rpn, head, config)


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of ``config.arch`` ("rpn_fcn", "fcn32s", "fcn_nopool5",
    "unet"); ``model.config`` is ``config``. Raises ValueError for inconsistent geometry."""
    if config.arch == "rpn_fcn":
        return _build_rpn_fcn(config)
    from .baselines import build_baseline

    return build_baseline(config)
