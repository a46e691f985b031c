"""Model configuration: one frozen dataclass, two presets that differ only in numbers.

``paper`` reproduces the authors' released configuration (VGG16 at full width, conv1_1 padding 50,
ceil-mode pooling, a 7x7x4096 ROI-conv fc6 without padding, Faster R-CNN's RPN values with
128-512 px anchors). ``fast`` is the same code with smaller numbers so that a 367x192 slice runs in
about 25 ms on a 2-core CPU and the shipped checkpoint stays small (see the comments on
``_FAST``). No torch import here: the config must be readable (e.g. beside a checkpoint) without
building anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ARCHS", "ModelConfig", "PRESETS", "get_preset"]

ARCHS = ("rpn_fcn", "fcn32s", "fcn_nopool5", "unet")
SEG_LOSSES = ("ce", "dice_ce")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved inside every checkpoint.

    Backbone (VGG16 conv1_1..conv5_3; ``fcn32s`` adds pool5)
        ``width_divisor``: every VGG16 channel count is divided by it (1 = ImageNet-compatible).
        ``conv1_padding``: padding of conv1_1 (torchvision 1, FCN 100, the authors 50).
        ``ceil_mode``: pooling rounds sizes up (Caffe's rule, used by the authors).
    Head (fc6 -> fc7 -> score -> x16 transposed conv; fc6 is the ROI convolution in rpn_fcn)
        ``fc6_kernel`` / ``fc6_padding`` / ``fc6_channels``, ``fc7_channels``, ``dropout``.
        ``decoder_channels``: empty = the paper's head (score at stride 16, one x16 transposed
        conv); otherwise ``src_model.refine_head.RoiRefineHead``, one ROI-conv decoder level per
        entry at strides 8, 4, 2(, 1), fusing the backbone's block outputs (rpn_fcn only).
    Loss
        ``seg_loss``: "ce" (the paper: pixel cross-entropy) or "dice_ce" (cross-entropy + soft
        Dice of the foreground), both over the ROI union (rpn_fcn) or all pixels (baselines).
    RPN (torchvision's RegionProposalNetwork)
        ``anchor_sizes`` (px, square side before aspect ratios), ``aspect_ratios`` (height/width),
        ``rpn_*``: IoU thresholds, sampled anchors per image, NMS, pre/post-NMS top-n.
    ROIs fed to the ROI convolution
        Training: proposals + GT box with IoU >= ``roi_iou_thresh`` to the GT, at most
        ``roi_batch_size_per_image`` (GT always kept). Test: all post-NMS proposals, optionally
        only those with score >= ``test_score_threshold`` and/or the ``test_top_k`` best.
        ``test_single_object``: keep only the kept ROIs that overlap the best one (one structure
        per slice, as an acetabulum or a fetal head: far-off false boxes paint nothing).
        ``test_roi_margin`` (px) grows each test ROI on every side before the head: the mask may
        reach a structure's edge that a slightly tight box cuts (the boxes shown stay the RPN's).
    U-Net baseline
        ``unet_base_channels`` (channels of the first level, doubled per level), ``unet_depth``.
    Resolution reference (``src_model.resolution``: inference and fine-tuning resample to it)
        ``pixel_spacing_mm``: in-plane pixel size of the training slices, when known.
        ``frame_height_px``: height of the training frames, when their pixel size was unknown.
    """

    arch: str = "rpn_fcn"
    preset: str = "custom"
    # backbone
    width_divisor: int = 1
    conv1_padding: int = 1
    ceil_mode: bool = False
    # head
    fc6_kernel: int = 7
    fc6_padding: int = 3
    fc6_channels: int = 4096
    fc7_channels: int = 4096
    dropout: float = 0.5
    decoder_channels: tuple[int, ...] = ()
    seg_loss: str = "ce"
    # RPN
    anchor_sizes: tuple[int, ...] = (128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 12000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    # ROIs
    roi_iou_thresh: float = 0.5
    roi_batch_size_per_image: int = 50
    test_score_threshold: float | None = None
    test_top_k: int | None = None
    test_single_object: bool = False
    test_roi_margin: int = 0
    # U-Net baseline
    unet_base_channels: int = 64
    unet_depth: int = 4
    # resolution reference
    pixel_spacing_mm: float | None = None
    frame_height_px: int | None = None

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so equality and hashing work.
        object.__setattr__(self, "anchor_sizes", tuple(int(s) for s in self.anchor_sizes))
        object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        problems = self._problems()
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        p: list[str] = []
        if self.arch not in ARCHS:
            p.append(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.width_divisor < 1 or 64 % self.width_divisor:
            p.append(f"width_divisor {self.width_divisor} must divide 64 (1, 2, 4, 8, 16, 32, 64)")
        if self.conv1_padding < 0 or self.fc6_padding < 0:
            p.append("conv1_padding and fc6_padding must be >= 0")
        if self.fc6_kernel < 1 or self.fc6_channels < 1 or self.fc7_channels < 1:
            p.append("fc6_kernel, fc6_channels and fc7_channels must be >= 1")
        if self.decoder_channels and (self.arch != "rpn_fcn" or len(self.decoder_channels) > 4
                                      or min(self.decoder_channels) < 1):
            p.append("decoder_channels (the refinement head) takes 1-4 positive channel counts "
                     "and only arch 'rpn_fcn'")
        if self.seg_loss not in SEG_LOSSES:
            p.append(f"seg_loss {self.seg_loss!r} is not one of {', '.join(SEG_LOSSES)}")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout {self.dropout} must be in [0, 1)")
        if not self.anchor_sizes or min(self.anchor_sizes) <= 0:
            p.append("anchor_sizes must be a non-empty tuple of positive pixel sizes")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            p.append("aspect_ratios must be a non-empty tuple of positive ratios")
        if not 0.0 <= self.rpn_bg_iou_thresh <= self.rpn_fg_iou_thresh <= 1.0:
            p.append("need 0 <= rpn_bg_iou_thresh <= rpn_fg_iou_thresh <= 1")
        if not 0.0 < self.rpn_positive_fraction <= 1.0:
            p.append("rpn_positive_fraction must be in (0, 1]")
        ints = (
            "rpn_batch_size_per_image",
            "rpn_pre_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_train",
            "rpn_post_nms_top_n_test",
            "roi_batch_size_per_image",
            "unet_base_channels",
            "unet_depth",
        )
        p.extend(f"{name} must be >= 1" for name in ints if getattr(self, name) < 1)
        if not 0.0 <= self.roi_iou_thresh <= 1.0:
            p.append("roi_iou_thresh must be in [0, 1]")
        if self.pixel_spacing_mm is not None and not self.pixel_spacing_mm > 0:
            p.append("pixel_spacing_mm must be None (unknown) or > 0")
        if self.frame_height_px is not None and self.frame_height_px < 16:
            p.append("frame_height_px must be None (unknown) or >= 16")
        if self.test_top_k is not None and self.test_top_k < 1:
            p.append("test_top_k must be None (all proposals) or >= 1")
        if self.test_roi_margin < 0:
            p.append("test_roi_margin must be >= 0 (pixels added to each side of a test ROI)")
        return p

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)
        out["anchor_sizes"] = list(self.anchor_sizes)
        out["aspect_ratios"] = list(self.aspect_ratios)
        out["decoder_channels"] = list(self.decoder_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (they usually mean a checkpoint
        from a newer version or a typo); missing keys take their defaults."""
        _check_keys(data)
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)


def _check_keys(data: dict[str, Any]) -> None:
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown ModelConfig keys: {', '.join(unknown)}; known keys are "
            f"{', '.join(sorted(known))}"
        )


_PAPER = ModelConfig(
    preset="paper",
    width_divisor=1,
    conv1_padding=50,  # the authors' roi-fcn: FCN's 100 halved
    ceil_mode=True,  # Caffe pools round up
    fc6_kernel=7,
    fc6_padding=0,
    fc6_channels=4096,
    fc7_channels=4096,
    anchor_sizes=(128, 256, 512),  # base 16 x scales (8, 16, 32)
    unet_base_channels=64,
)

_FAST = ModelConfig(
    preset="fast",
    # Channels / 4: 16x fewer multiply-adds in the VGG16 convolutions (~17 ms instead of ~140 ms
    # per 367x192 slice on 2 cores).
    width_divisor=4,
    # Padding 50 nearly doubles the area conv1 sees; padding 1 keeps the grid on the image
    # (cell (r, c) covers exactly pixels 16r..16r+15, 16c..16c+15).
    conv1_padding=1,
    ceil_mode=False,
    # fc6 keeps the 7x7 ROI convolution; padding 3 keeps the grid size and leaves the cells where
    # they are (offset 8, crop 8). 128 -> 256 channels: 1.6 M of the 2.75 M parameters.
    fc6_kernel=7,
    fc6_padding=3,
    fc6_channels=256,
    fc7_channels=256,
    # The paper's head scores at stride 16 and cannot draw a band 6-10 px thick; the ROI
    # refinement head decodes inside the ROIs down to stride 2 (conv4_3, conv3_3, conv2_2 skips).
    # docs/ablation_head.json (scripts/ablation_head.py): held-out pooled dice 0.38 (paper head)
    # -> 0.94 (refinement head), both with CE. Dice + CE lifts the paper head (0.66) but not the
    # refinement head (0.92; validation agrees), so the paper's CE stays the default loss.
    decoder_channels=(64, 32, 16),
    seg_loss="ce",
    # The acetabulum covers ~0.3% of a 367x192 slice: boxes of roughly 10-60 px a side. The
    # authors' 128-512 px anchors would match it only through the RPN's low-quality matches.
    # 16/32/64 px (three octaves, the smallest equal to the stride so anchors tile the slice)
    # x ratios 0.5/1/2 give every box in that range an anchor of similar size and shape.
    anchor_sizes=(16, 32, 64),
    # A 367x192 slice has only 23x12x9 = 2484 anchors, and torchvision's CPU NMS is quadratic
    # (1 thread: 30 ms for all of them, 6 ms for the best 1000, 3 ms for 600). 600 is the
    # fraction Faster R-CNN keeps (6000 of ~20k anchors on 600x1000) and still yields the 300
    # post-NMS proposals.
    rpn_pre_nms_top_n_test=600,
    # Test ROIs: proposals with objectness >= 0.5 (the paper feeds all 300, which on a small
    # object are mostly background). Validation during training then scores what a user gets;
    # the shipped model's filter is tuned on validation afterwards (make_default_model.py).
    test_score_threshold=0.5,
    unet_base_channels=16,
)

PRESETS: dict[str, ModelConfig] = {"fast": _FAST, "paper": _PAPER}

# FCN-32s needs its own conv1_1 padding: with pool5 (stride 32) and an unpadded 7x7 fc6, padding 50
# would leave the first 31 px of the slice uncovered by the up-sampled scores. The paper compared
# against "the original Caffe implementation for FCN-32s", i.e. padding 100.
_ARCH_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("paper", "fcn32s"): {"conv1_padding": 100},
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` ("fast" or "paper") with ``overrides`` applied.

    ``get_preset("paper", arch="fcn32s")`` also applies that baseline's published geometry
    (conv1_1 padding 100) unless ``conv1_padding`` is given explicitly.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    arch = overrides.get("arch", PRESETS[name].arch)
    changes = {**_ARCH_DEFAULTS.get((name, arch), {}), **overrides}
    if arch != "rpn_fcn":  # the refinement head is RPN-FCN's; baselines keep their own heads
        changes.setdefault("decoder_channels", ())
    return PRESETS[name].replace(**changes)
