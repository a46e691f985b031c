"""FCN-32s, FCN-noPool5 and U-Net follow the same forward contract as RPN-FCN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src_model.baselines import FCN32s, FCNNoPool5, UNet
from src_model.model import build_model

from .conftest import tiny_config

BASELINES = [("fcn32s", FCN32s), ("fcn_nopool5", FCNNoPool5), ("unet", UNet)]


def _targets(n: int, h: int, w: int, with_object: bool = True):
    out = []
    for i in range(n):
        m = torch.zeros(h, w, dtype=torch.int64)
        boxes = torch.zeros((0, 4))
        if with_object and i == 0:
            m[30:40, 20:30] = 1
            boxes = torch.tensor([[20.0, 30.0, 30.0, 40.0]])
        out.append({"boxes": boxes, "masks": m})
    return out


@pytest.mark.parametrize("arch,cls", BASELINES)
@pytest.mark.parametrize("size", [(96, 64), (75, 53)])
def test_train_and_eval_contract(arch, cls, size):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    assert isinstance(model, cls) and model.config.arch == arch
    model.train()
    images = torch.rand(2, 1, *size)
    losses = model(images, _targets(2, *size))
    assert set(losses) == {"loss_seg"} and torch.isfinite(losses["loss_seg"])
    losses["loss_seg"].backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images, score_threshold=0.5, top_k=3)  # accepted, ignored
    assert len(outputs) == 2
    for out in outputs:
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
        assert out["probabilities"].shape == size and out["probabilities"].dtype == torch.float32
        assert out["mask"].shape == size and out["mask"].dtype == torch.uint8
        assert ((out["probabilities"] >= 0) & (out["probabilities"] <= 1)).all()


@pytest.mark.parametrize("arch", ["fcn32s", "fcn_nopool5", "unet"])
def test_loss_is_mean_cross_entropy_over_all_pixels(arch):
    torch.manual_seed(0)
    # No dropout; batch norm uses batch statistics in train mode, so both calls agree.
    model = build_model(tiny_config(arch, dropout=0.0)).train()
    images = torch.rand(1, 1, 64, 64)  # a multiple of every stride: no padding involved
    targets = _targets(1, 64, 64)
    with torch.no_grad():
        loss = model(images, targets)["loss_seg"]
        logits = model.logits(images, (64, 64))
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets[0]["masks"][None]))


def test_empty_targets_are_fine():
    for arch, _ in BASELINES:
        model = build_model(tiny_config(arch)).train()
        losses = model(torch.rand(2, 1, 64, 48), _targets(2, 64, 48, with_object=False))
        losses["loss_seg"].backward()
        assert torch.isfinite(losses["loss_seg"])


def test_fcn_nopool5_shares_rpn_fcn_segmentation_weights():
    rpn_fcn = build_model(tiny_config("rpn_fcn"))
    nopool5 = build_model(tiny_config("fcn_nopool5"))
    seg_keys = {k for k in rpn_fcn.state_dict() if not k.startswith("rpn.")}
    assert seg_keys == set(nopool5.state_dict())
