"""Feature-grid geometry: receptive-field centres and the crop after the transposed convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src_model.backbone import VGG16Backbone
from src_model.config import get_preset
from src_model.geometry import IMAGE_GRID, GridGeometry, layer_geometry, upsample_crop
from src_model.head import FCNHead
from src_model.model import build_model


@pytest.mark.parametrize(
    "conv1_padding,ceil_mode,pool5,expected",
    [
        (1, False, False, GridGeometry(16, 8.0)),
        (1, True, False, GridGeometry(16, 8.0)),  # ceil mode appends cells, does not move them
        (50, True, False, GridGeometry(16, -41.0)),
        (100, True, True, GridGeometry(32, -83.0)),
    ],
)
def test_backbone_geometry_values(conv1_padding, ceil_mode, pool5, expected):
    backbone = VGG16Backbone(64, conv1_padding, ceil_mode, include_pool5=pool5)
    assert backbone.geometry == expected


def test_head_geometry_and_crop_of_the_presets():
    fast = build_model(get_preset("fast", width_divisor=16, fc6_channels=8, fc7_channels=8,
                                  decoder_channels=()))
    refine = build_model(get_preset("fast", width_divisor=16, fc6_channels=8, fc7_channels=8))
    assert (refine.head.geometry, refine.head.skip_strides) == (GridGeometry(16, 8.0), (8, 4, 2))
    paper_like = build_model(get_preset("paper", width_divisor=16, fc6_channels=8, fc7_channels=8))
    assert (fast.head.geometry, fast.head.crop) == (GridGeometry(16, 8.0), 8)
    assert (paper_like.head.geometry, paper_like.head.crop) == (GridGeometry(16, 7.0), 9)
    fcn32s = build_model(
        get_preset("paper", arch="fcn32s", width_divisor=16, fc6_channels=8, fc7_channels=8)
    )
    assert fcn32s.config.conv1_padding == 100
    assert (fcn32s.head.geometry, fcn32s.head.crop) == (GridGeometry(32, 13.0), 19)  # FCN's 19


def test_negative_crop_is_a_clear_error():
    with pytest.raises(ValueError, match="increase conv1_padding or fc6_padding"):
        build_model(
            get_preset(
                "paper",
                arch="fcn32s",
                conv1_padding=50,
                width_divisor=16,
                fc6_channels=8,
                fc7_channels=8,
            )
        )
    with pytest.raises(ValueError, match="stride"):
        upsample_crop(GridGeometry(16, 8.0), 64, 32)
    with pytest.raises(ValueError, match="whole number"):
        upsample_crop(GridGeometry(16, 7.5), 32, 16)


def _avgpool_twin(backbone: VGG16Backbone) -> nn.Sequential:
    """The backbone's layers with max pools replaced by average pools of the same geometry and all
    conv weights positive: the gradient of one output cell is then > 0 exactly on its receptive
    field, symmetric around the receptive-field centre."""
    layers = []
    for layer in backbone.features:
        if isinstance(layer, nn.MaxPool2d):
            layers.append(nn.AvgPool2d(2, 2, ceil_mode=layer.ceil_mode))
        elif isinstance(layer, nn.Conv2d):
            conv = nn.Conv2d(1, 1, 3, padding=layer.padding).double()
            nn.init.constant_(conv.weight, 1.0)
            nn.init.constant_(conv.bias, 0.0)
            layers.append(conv)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("conv1_padding,ceil_mode,cell", [(1, False, 6), (50, True, 9)])
def test_receptive_field_centre_matches_geometry(conv1_padding, ceil_mode, cell):
    backbone = VGG16Backbone(64, conv1_padding, ceil_mode)
    net = _avgpool_twin(backbone)
    x = torch.ones(1, 1, 256, 256, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[0, 0, cell, cell].backward()
    support = (x.grad[0, 0] > 0).nonzero()
    lo, hi = support.min(0).values, support.max(0).values
    assert (lo > 0).all() and (hi < 255).all(), "receptive field must lie inside the test image"
    centre = (lo + hi).double() / 2 + 0.5  # continuous coordinate of the support's centre
    expected = backbone.geometry.cell_centre(cell)
    assert centre.tolist() == [expected, expected]


@pytest.mark.parametrize("conv1_padding,fc6_padding", [(1, 3), (50, 0)])
def test_upsampled_cell_lands_on_its_receptive_field_centre(conv1_padding, fc6_padding):
    """An impulse in score cell (r, c) -> after the bilinear transposed conv and the crop, the
    output's centre of mass sits on that cell's image position."""
    backbone = VGG16Backbone(64, conv1_padding, conv1_padding == 50)
    head = FCNHead(backbone.out_channels, backbone.geometry, 7, fc6_padding, 4, 4, 0.0)
    score = torch.zeros(1, 2, 12, 10)
    r, c = 5, 4
    score[0, 1, r, c] = 1.0
    with torch.no_grad():
        up = head.upscore(score)[0, 1, head.crop :, head.crop :]
    ii, jj = torch.meshgrid(torch.arange(up.shape[0]), torch.arange(up.shape[1]), indexing="ij")
    cy = float((up * (ii + 0.5)).sum() / up.sum())
    cx = float((up * (jj + 0.5)).sum() / up.sum())
    assert cy == pytest.approx(head.geometry.cell_centre(r), abs=1e-4)
    assert cx == pytest.approx(head.geometry.cell_centre(c), abs=1e-4)


def test_layer_rule():
    g = layer_geometry(IMAGE_GRID, kernel=3, stride=1, padding=50)
    assert g == GridGeometry(1, -48.5)
    assert layer_geometry(GridGeometry(2, 1.0), kernel=2, stride=2) == GridGeometry(4, 2.0)


@pytest.mark.parametrize("preset", ["fast", "paper"])
@pytest.mark.parametrize("arch", ["rpn_fcn", "fcn32s", "fcn_nopool5"])
def test_scores_cover_every_input_size(preset, arch):
    """Padding to the stride + the crop always leave an output of exactly the input size."""
    model = build_model(
        get_preset(
            preset,
            arch=arch,
            width_divisor=64,
            fc6_channels=4,
            fc7_channels=4,
            rpn_post_nms_top_n_test=5,
        )
    ).eval()
    for size in [(17, 23), (64, 48), (97, 131)]:
        with torch.no_grad():
            out = model(torch.rand(1, 1, *size))[0]
        assert out["probabilities"].shape == size


def test_fold_transposed_conv_equals_convtranspose2d():
    from src_model.head import FoldConvTranspose2d

    torch.manual_seed(0)
    fold = FoldConvTranspose2d(2, 2, 32, 16).double()
    ref = nn.ConvTranspose2d(2, 2, 32, 16, bias=False).double()
    ref.load_state_dict(fold.state_dict())
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fold(x), ref(x))
    assert torch.autograd.gradcheck(fold, (x[:1, :, :2, :2].detach().requires_grad_(True),))
