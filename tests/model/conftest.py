"""Shared fixtures for the src_model tests: tiny configs and a phantom-like synthetic slice."""

from __future__ import annotations

import numpy as np
import torch

from src_model.config import ModelConfig, get_preset

# Everything here must stay fast on a 2-core CPU shared with other test suites. One thread: the
# tensors are tiny, and when the cores are busy a second OpenMP thread turns every small op into a
# wait at a barrier (measured: 20 training steps of the overfit test took 0.7 s with 1 thread and
# 8 s with 2 on a loaded machine).
torch.set_num_threads(1)

TINY_OVERRIDES = dict(
    width_divisor=16,  # VGG16 channels 4..32
    fc6_channels=16,
    fc7_channels=16,
    unet_base_channels=4,
    unet_depth=3,
    rpn_post_nms_top_n_train=200,
    rpn_post_nms_top_n_test=50,
    # The paper's head and loss: the contract tests below run on it; tests/model/
    # test_refine_head.py covers the refinement head (tiny_config(decoder_channels=...)).
    decoder_channels=(),
    seg_loss="ce",
)


def tiny_config(arch: str = "rpn_fcn", **overrides) -> ModelConfig:
    """The fast preset shrunk to a few thousand parameters, for shape/contract tests."""
    return get_preset("fast", arch=arch, **{**TINY_OVERRIDES, **overrides})


def phantom_slice(
    height: int = 128, width: int = 96, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A toy ultrasound-like slice: Rayleigh speckle on layered tissue, a bright echogenic arc
    (the 'iliac line', unlabelled) and a bright elliptical blob under it as the labelled object.

    Returns ``(image float32 [H, W] in [0, 1], mask int64 [H, W] 0/1)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tissue = 0.25 + 0.1 * np.sin(yy / 9.0)
    arc = np.exp(-(((yy - 0.35 * height) - 0.004 * (xx - 0.3 * width) ** 2) ** 2) / 6.0)
    cy, cx = 0.55 * height, 0.5 * width
    blob = (((yy - cy) / 8.0) ** 2 + ((xx - cx) / 12.0) ** 2) <= 1.0
    clean = tissue + 0.6 * arc + 0.55 * blob
    speckle = rng.rayleigh(scale=0.8, size=(height, width)).astype(np.float32)
    image = np.clip(clean * speckle / 1.6, 0.0, 1.0).astype(np.float32)
    return image, blob.astype(np.int64)


def gt_box(mask: np.ndarray) -> torch.Tensor:
    """Tight box ``(min_col, min_row, max_col + 1, max_row + 1)``, ``Tensor[K, 4]``, K = 0 or 1."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.tensor(
        [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32
    )
