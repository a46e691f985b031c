"""VGG16 backbone: layer layout, output shapes, ImageNet weight loading."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from src_model.backbone import VGG16Backbone, load_imagenet_vgg16
from src_model.head import FCNHead


@pytest.fixture(scope="module")
def torchvision_features_file(tmp_path_factory):
    """torchvision's own vgg16 ``features`` state_dict (random init, 59 MB), saved with the
    ``features.`` prefix exactly as ``torchvision.models.vgg16().state_dict()`` names it."""
    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # == torchvision.models.vgg16().features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.save(state, path)
    return path, state


def test_layers_mirror_torchvision_vgg16_features():
    tv = make_layers(cfgs["D"])
    ours = VGG16Backbone(width_divisor=1, include_pool5=True)
    assert [type(m) for m in ours.features] == [type(m) for m in tv]
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in ours.features.state_dict().items()} == tv_shapes
    no_pool5 = VGG16Backbone(width_divisor=1)
    assert len(no_pool5.features) == len(tv) - 1


@pytest.mark.parametrize(
    "d,pad,ceil,pool5,in_hw,out_hw",
    [
        (16, 1, False, False, (96, 64), (6, 4)),
        (16, 1, False, True, (96, 64), (3, 2)),
        (16, 1, False, False, (97, 65), (6, 4)),
        (16, 1, True, False, (97, 65), (7, 5)),
        (16, 50, True, False, (96, 64), (13, 11)),
    ],
)
def test_output_shapes(d, pad, ceil, pool5, in_hw, out_hw):
    backbone = VGG16Backbone(d, pad, ceil, include_pool5=pool5)
    out = backbone(torch.rand(2, 1, *in_hw))
    assert out.shape == (2, 512 // d, *out_hw)
    assert backbone.out_channels == 512 // d


def test_grayscale_is_repeated_to_rgb_and_bad_shapes_rejected():
    backbone = VGG16Backbone(16).eval()
    gray = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(backbone(gray), backbone(gray.expand(-1, 3, -1, -1).clone()))
    with pytest.raises(ValueError, match=r"Tensor\[N, 1, H, W\]"):
        backbone(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="must divide 64"):
        VGG16Backbone(3)


def test_load_torchvision_file_into_full_width_backbone(torchvision_features_file):
    path, state = torchvision_features_file
    backbone = VGG16Backbone(width_divisor=1, conv1_padding=50, ceil_mode=True)
    loaded = load_imagenet_vgg16(backbone, path)
    assert len(loaded) == 26 and loaded[0] == "features.0.weight"
    torch.testing.assert_close(backbone.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(backbone.features[0].bias, state["features.0.bias"])


def test_full_width_file_into_narrow_backbone_is_a_clear_error(torchvision_features_file):
    path, _ = torchvision_features_file
    with pytest.raises(ValueError, match=r"width-divisor-1 VGG16 .* width_divisor=4"):
        load_imagenet_vgg16(VGG16Backbone(width_divisor=4), path)


def test_missing_keys_bad_files_and_classifier_conversion(tmp_path):
    backbone = VGG16Backbone(width_divisor=16)
    state = {f"features.{k}": v.clone() for k, v in backbone.features.state_dict().items()}

    partial = dict(state)
    del partial["features.28.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"lacks 1 VGG16 feature keys \(features.28.weight"):
        load_imagenet_vgg16(backbone, tmp_path / "partial.pth")

    with pytest.raises(ValueError, match="does not exist"):
        load_imagenet_vgg16(backbone, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not read"):
        load_imagenet_vgg16(backbone, tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        load_imagenet_vgg16(backbone, tmp_path / "list.pth")

    # FCN-style conversion: classifier.0 [out, C*7*7] -> fc6 [out, C, 7, 7]; classifier.3 -> fc7.
    head = FCNHead(backbone.out_channels, backbone.geometry, 7, 3, 8, 6, 0.5)
    fc6 = torch.randn(8, backbone.out_channels * 49)
    fc7 = torch.randn(6, 8)
    full = {
        **state,
        "classifier.0.weight": fc6,
        "classifier.0.bias": torch.randn(8),
        "classifier.3.weight": fc7,
        "classifier.3.bias": torch.randn(6),
        "classifier.6.weight": torch.randn(1000, 6),
        "classifier.6.bias": torch.randn(1000),
    }
    torch.save(full, tmp_path / "full.pth")
    loaded = load_imagenet_vgg16(backbone, tmp_path / "full.pth", head=head)
    assert loaded[-4:] == ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    torch.testing.assert_close(head.fc6.weight, fc6.view(8, backbone.out_channels, 7, 7))
    torch.testing.assert_close(head.fc7.weight[:, :, 0, 0], fc7)
    # A head whose shapes do not fit keeps its own initialisation.
    narrow = FCNHead(backbone.out_channels, backbone.geometry, 7, 3, 4, 4, 0.5)
    before = narrow.fc6.weight.clone()
    loaded = load_imagenet_vgg16(backbone, tmp_path / "full.pth", head=narrow)
    assert not any(name.startswith("fc") for name in loaded)
    torch.testing.assert_close(narrow.fc6.weight, before)
