"""Localisation unit: Faster R-CNN's RPN from torchvision's detection blocks, and the choice of the
ROIs handed to the ROI convolution.

Two small adaptations of torchvision, nothing re-implemented:

* :class:`GridAnchorGenerator` centres the anchors on the feature cells' receptive-field centres
  (``src_model.geometry``). torchvision's ``AnchorGenerator`` puts cell ``i`` at ``i * (H // h)``,
  which is off by half a stride for conv1_1 padding 1 and by ~40 px for the paper's padding 50
  (where it would not even get the stride right).
* :class:`RoiSegRPN` returns the proposals' objectness scores as well as the boxes (torchvision's
  ``RegionProposalNetwork.forward`` computes and drops them); the eval output reports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import box_iou

from .config import ModelConfig
from .geometry import GridGeometry

__all__ = [
    "GridAnchorGenerator",
    "RoiSegRPN",
    "build_rpn",
    "drop_burned_in",
    "prefilter_scores",
    "select_test_rois",
    "select_training_rois",
]


class GridAnchorGenerator(AnchorGenerator):
    """torchvision ``AnchorGenerator`` (same base anchors: ``sizes`` x ``aspect_ratios`` =
    height/width, rounded) with anchors centred at ``geometry.offset + geometry.stride * (c, r)``
    for feature cell ``(r, c)``. One feature map only."""

    def __init__(
        self,
        sizes: tuple[int, ...],
        aspect_ratios: tuple[float, ...],
        geometry: GridGeometry,
    ) -> None:
        super().__init__(sizes=(tuple(sizes),), aspect_ratios=(tuple(aspect_ratios),))
        self.geometry = geometry

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Returns one ``Tensor[h * w * A, 4]`` of anchors per image (identical for all)."""
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        device = feature_maps[0].device
        stride = torch.tensor(int(self.geometry.stride), dtype=torch.int64, device=device)
        # float32 even under float16 autocast: anchor coordinates of a few hundred px need it.
        self.set_cell_anchors(torch.float32, device)
        per_level = self.grid_anchors(grid_sizes, [[stride, stride]] * len(grid_sizes))
        anchors = torch.cat(per_level) + self.geometry.offset
        return [anchors for _ in image_list.image_sizes]


class RoiSegRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` whose forward also returns the proposal scores.

    ``forward(images, features, targets)`` -> ``(boxes, scores, losses)`` with one
    ``Tensor[P, 4]`` of proposals (``x1, y1, x2, y2``, clipped to the image, after NMS, best first)
    and one ``Tensor[P]`` of sigmoid objectness per image; ``losses`` holds ``loss_objectness`` and
    ``loss_rpn_box_reg`` in training (an image with no GT box contributes negatives only), else {}.
    """

    def forward(  # type: ignore[override]
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        # Same steps as torchvision's RegionProposalNetwork.forward, keeping the scores.
        feature_list = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Decode in float32 (torchvision would decode in the deltas' dtype, float16 under autocast).
        proposals = self.box_coder.decode(pred_bbox_deltas.detach().float(), anchors)
        proposals = proposals.view(num_images, -1, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness, images.image_sizes, num_anchors_per_level
        )
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError(
                    "the RPN needs targets (a 'boxes' Tensor[K, 4] per image) in training"
                )
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, scores, losses

    def filter_proposals(  # type: ignore[override]
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's ``filter_proposals``, with the NMS over a prefix of the best proposals.

        Greedy NMS keeps a box or not from the boxes scoring higher only, so the first
        ``post_nms_top_n`` boxes it keeps from the best ``m`` proposals are the first it keeps
        from all of them once ``m`` holds that many survivors. torchvision's CPU NMS is
        quadratic and in training nearly every box survives IoU 0.7: at 384 x 512 (6912
        anchors, 2000 kept) it spent ~170 ms an image, a third of a fine-tuning step; the best
        2500 take ~30 ms. The prefix starts at ``1.25 * post_nms_top_n`` and doubles for the
        images that keep too few, unless the prefix already reaches below ``score_thresh``
        (then no later box could pass it: the eval-time case, where few boxes are kept).

        The result is torchvision's (tests: random clusters and the model's own proposals)
        except among exactly equal scores: ``topk`` over a prefix may list tied boxes in another
        order than over all boxes, so they come out in that order and, where tied boxes overlap,
        NMS may keep the other one. In float32 this was seen only as order, on the shipped
        model's ~1e-5 background scores; under float16 autocast ties are common (a review found
        different survivors in a third of fp16-rounded cases). Both are valid NMS: torchvision's
        own order among ties is arbitrary too. One feature level only (this RPN's); otherwise
        torchvision's as is.
        """
        n, total = proposals.shape[0], proposals.shape[1]
        pre, post = int(self.pre_nms_top_n()), int(self.post_nms_top_n())
        limit = min(pre, total)
        take = -(-5 * post // 4)
        if len(num_anchors_per_level) != 1 or 2 * take > limit or n == 0:
            # a prefix over half the boxes saves little and a second pass would cost more
            # (the fast preset's eval: 600 before NMS, 300 after)
            return super().filter_proposals(proposals, objectness, image_shapes,
                                            num_anchors_per_level)
        scores_all = objectness.detach().reshape(n, -1)
        out_boxes: list[Tensor | None] = [None] * n
        out_scores: list[Tensor | None] = [None] * n
        todo = list(range(n))
        while todo:
            take = min(take, limit)
            rows = torch.tensor(todo, device=proposals.device)
            best = scores_all[rows].topk(take, dim=1).indices
            prefix = scores_all[rows[:, None], best]  # best first
            boxes, scores = super().filter_proposals(
                proposals[rows[:, None], best], prefix, [image_shapes[i] for i in todo], [take])
            # the prefix's lowest score under the threshold: every later box is lower still
            reached = torch.sigmoid(prefix[:, -1]) < self.score_thresh
            left = []
            for j, i in enumerate(todo):
                if len(boxes[j]) >= post or take == limit or bool(reached[j]):
                    out_boxes[i], out_scores[i] = boxes[j], scores[j]
                else:
                    left.append(i)
            todo, take = left, take * 2
        return out_boxes, out_scores  # type: ignore[return-value]


def build_rpn(config: ModelConfig, in_channels: int, geometry: GridGeometry) -> RoiSegRPN:
    """The RPN of ``config`` on a feature map with ``in_channels`` channels laid out on
    ``geometry`` (``backbone.geometry``): torchvision's ``RPNHead`` (3x3 conv + 1x1 objectness /
    box deltas) and the config's anchors, IoU thresholds, sampling and NMS settings."""
    anchor_generator = GridAnchorGenerator(config.anchor_sizes, config.aspect_ratios, geometry)
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RoiSegRPN(
        anchor_generator,
        head,
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
    )


@contextlib.contextmanager
def prefilter_scores(rpn: RegionProposalNetwork, threshold: float | None) -> Iterator[None]:
    """Inside the block, an eval-mode ``rpn`` drops proposals scoring below ``threshold`` before
    NMS instead of letting :func:`select_test_rois` drop them after it.

    The ROIs are the same: greedy NMS decides whether a box survives only from boxes scoring
    higher, so the boxes at or above the threshold keep exactly the same fate (torchvision's CPU
    NMS sorts stably, so even tied scores keep their order), and the comparison is the same
    ``scores >= threshold`` on the same tensor (torchvision's ``score_thresh`` filter). It saves
    the quadratic NMS over hundreds of low-scoring boxes (fast preset, threshold 0.5: ~2.5 of
    ~30 ms per 367x192 slice on 2 CPU cores). No effect in training or with ``threshold`` None.
    """
    previous = rpn.score_thresh
    if threshold is not None and not rpn.training:
        rpn.score_thresh = max(float(previous), float(threshold))
    try:
        yield
    finally:
        rpn.score_thresh = previous


def select_training_rois(
    proposals: list[Tensor],
    gt_boxes: list[Tensor],
    iou_thresh: float = 0.5,
    max_rois: int = 50,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """ROIs for the segmentation branch in training (the authors' rule).

    Per image: the GT boxes plus the (detached) proposals whose IoU with a GT box is
    >= ``iou_thresh``, at most ``max_rois`` in all; the GT boxes are always kept and the proposals
    are sampled at random without replacement when there are too many. An image without a GT box
    gets no ROI (``Tensor[0, 4]``): nothing is segmented there and its seg loss is 0.

    ``proposals``/``gt_boxes``: one ``Tensor[P, 4]`` / ``Tensor[G, 4]`` per image.
    Returns one ``Tensor[K, 4]`` per image, GT boxes first.
    """
    rois = []
    for props, gt in zip(proposals, gt_boxes):
        gt = gt.detach().to(props.dtype)
        if gt.numel() == 0:
            rois.append(props.new_zeros((0, 4)))
            continue
        props = props.detach()
        if props.numel():
            best_iou = box_iou(props, gt).max(dim=1).values
            props = props[best_iou >= iou_thresh]
        room = max(max_rois - gt.shape[0], 0)
        if props.shape[0] > room:
            order = torch.randperm(props.shape[0], generator=generator, device="cpu")
            props = props[order[:room].to(props.device)]
        rois.append(torch.cat([gt, props]))
    return rois


def select_test_rois(
    proposals: list[Tensor],
    scores: list[Tensor],
    score_threshold: float | None = None,
    top_k: int | None = None,
    single_object: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """ROIs at test time: all post-NMS proposals (the authors' rule), optionally only those with
    ``score >= score_threshold`` and then the ``top_k`` best (proposals arrive best first), and
    with ``single_object`` only those of them that overlap the best one.

    Returns ``(boxes, scores)``: one ``Tensor[K, 4]`` and one ``Tensor[K]`` per image.
    """
    out_boxes, out_scores = [], []
    for boxes, s in zip(proposals, scores):
        order = torch.argsort(s, descending=True, stable=True)
        boxes, s = boxes[order], s[order]
        if score_threshold is not None:
            keep = s >= score_threshold
            boxes, s = boxes[keep], s[keep]
        if top_k is not None:
            boxes, s = boxes[:top_k], s[:top_k]
        if single_object and len(boxes) > 1:
            keep = box_iou(boxes[:1], boxes)[0] > 0
            boxes, s = boxes[keep], s[keep]
        out_boxes.append(boxes)
        out_scores.append(s)
    return out_boxes, out_scores


def drop_burned_in(
    proposals: list[Tensor],
    scores: list[Tensor],
    bright: Tensor,
    max_fraction: float = 0.15,
) -> tuple[list[Tensor], list[Tensor]]:
    """Drop the proposals whose salient pixels are largely burned-in overlay, with their scores.

    ``bright`` is ``Tensor[H, W]`` (one map for every image, as the segmentation engine passes a
    volume's) or ``[N, H, W]`` in image pixels, as :func:`src_model.preprocess.burned_in` makes
    it: 0 dark, 1 bright tissue, 2 burned in. A proposal is dropped when at least
    ``max_fraction`` of its salient (nonzero) pixels are burned in: what the detector fired on
    is a ruler, text, a bar or a logo, not tissue (boxes on the phantoms' structure hold none; a
    box on a ruler over tissue ~20-50 %). 0.15 rather than 0.25: no cost on 40 tuning sweeps,
    and boxes beside a ruler whose ticks cross them are caught (``scripts/overlay_rule_sweep.py``,
    ``docs/overlay_rule_sweep.json``). A pixel is in a box when its centre is
    (``roi_conv.boxes_to_pixel_mask``'s rule). Counts come from two integral images per map
    (made once for a shared map): O(H*W + K)."""
    h, w = int(bright.shape[-2]), int(bright.shape[-1])
    shared = _bright_integrals(bright) if bright.ndim == 2 else None
    out_boxes, out_scores = [], []
    for n, (boxes, s) in enumerate(zip(proposals, scores)):
        if len(boxes) == 0:
            out_boxes.append(boxes)
            out_scores.append(s)
            continue
        sums = shared if shared is not None else _bright_integrals(bright[n])
        # pixel (i, j) is in the box when x1 <= j + 0.5 <= x2: j from ceil(x1 - 0.5) to
        # floor(x2 - 0.5)
        b = boxes.detach().to(device=sums.device, dtype=torch.float32)
        c0 = torch.ceil(b[:, 0] - 0.5).clamp(0, w).long()
        c1 = torch.maximum((torch.floor(b[:, 2] - 0.5) + 1).clamp(0, w).long(), c0)
        r0 = torch.ceil(b[:, 1] - 0.5).clamp(0, h).long()
        r1 = torch.maximum((torch.floor(b[:, 3] - 0.5) + 1).clamp(0, h).long(), r0)
        count = sums[:, r1, c1] - sums[:, r0, c1] - sums[:, r1, c0] + sums[:, r0, c0]
        keep = ~((count[0] > 0) & (count[1] >= max_fraction * count[0]))
        keep = keep.to(boxes.device)
        out_boxes.append(boxes[keep])
        out_scores.append(s[keep])
    return out_boxes, out_scores


def _bright_integrals(bright: Tensor) -> Tensor:
    """``Tensor[2, H+1, W+1]`` int32 integral images of a map's bright (>= 1) and burned-in
    (>= 2) pixels; integer counts are exact and need no float64, which MPS lacks."""
    h, w = int(bright.shape[-2]), int(bright.shape[-1])
    sums = torch.zeros((2, h + 1, w + 1), dtype=torch.int32, device=bright.device)
    sums[0, 1:, 1:] = (bright >= 1).to(torch.int32).cumsum(0).cumsum(1)
    sums[1, 1:, 1:] = (bright >= 2).to(torch.int32).cumsum(0).cumsum(1)
    return sums
