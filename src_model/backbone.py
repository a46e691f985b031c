"""VGG16 feature extractor (conv1_1..conv5_3, optionally pool5) and ImageNet weight loading.

The layers are torchvision's ``vgg16().features`` (``torchvision.models.vgg.cfgs["D"]``: 3x3
convolutions with ReLU, 2x2 max pools) in the same order, so ``self.features`` has torchvision's
indices (``features.0`` = conv1_1 ... ``features.28`` = conv5_3, ``features.30`` = pool5) and a
torchvision ``vgg16`` state_dict loads by name. Differences are options: conv1_1 padding, ceil-mode
pooling, channels divided by ``width_divisor``, and pool5 dropped (stride 16) unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs

from .geometry import GridGeometry, sequential_geometry

__all__ = ["VGG16Backbone", "load_imagenet_vgg16", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Backbone(nn.Module):
    """VGG16 convolutional features of a grayscale slice.

    Parameters
    ----------
    width_divisor
        Divides every channel count (64..512); 1 matches ImageNet weights.
    conv1_padding
        Padding of conv1_1 (torchvision: 1; FCN: 100; the authors: 50).
    ceil_mode
        Max pools round output sizes up (Caffe) instead of down.
    include_pool5
        Keep pool5 (stride 32, FCN-32s) instead of stopping at conv5_3 (stride 16).

    Input ``Tensor[N, 1, H, W]`` in [0, 1] (``N, 3, H, W`` is accepted too); the gray channel is
    repeated to RGB and normalised with ImageNet mean/std so ImageNet weights see what they expect.
    Output ``Tensor[N, out_channels, h, w]`` on the grid ``self.geometry`` (see
    ``src_model.geometry``).
    """

    def __init__(
        self,
        width_divisor: int = 1,
        conv1_padding: int = 1,
        ceil_mode: bool = False,
        include_pool5: bool = False,
    ) -> None:
        super().__init__()
        if width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"width_divisor {width_divisor} must divide 64")
        layers: list[nn.Module] = []
        in_channels = 3
        cfg = list(cfgs["D"]) if include_pool5 else list(cfgs["D"])[:-1]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
            else:
                out_channels = int(v) // width_divisor
                padding = conv1_padding if in_channels == 3 else 1
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=padding),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.geometry: GridGeometry = sequential_geometry(self.features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def freeze_blocks(self, n: int) -> int:
        """Stop training the first ``n`` conv blocks (conv1_x .. convn_x): their weights get no
        gradient and nothing is back-propagated through them, so a training step skips their
        backward pass (the full-resolution blocks cost most). Returns the parameters frozen."""
        frozen, block = 0, 0
        for layer in self.features:
            if block >= n:
                break
            if isinstance(layer, nn.MaxPool2d):
                block += 1
            for p in layer.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen

    def skip_geometry(self) -> dict[int, tuple[int, GridGeometry]]:
        """The block outputs a decoder can fuse: ``{stride: (channels, geometry)}`` for the last
        ReLU of every block before a pool (conv1_2 at stride 1, conv2_2 at 2, conv3_3 at 4,
        conv4_3 at 8)."""
        out: dict[int, tuple[int, GridGeometry]] = {}
        channels = 3
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            if isinstance(layer, nn.MaxPool2d):
                geometry = sequential_geometry(self.features[:i])
                out[int(geometry.stride)] = (channels, geometry)
        return out

    def _normalise(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                "expected images Tensor[N, 1, H, W] (grayscale in [0, 1]); "
                f"got {list(images.shape)}"
            )
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        # channels_last: oneDNN's convolutions and pools run 2-10x faster on CPU in this layout
        # (measured: 18 ms vs 33-180 ms for the fast preset's backbone on 2 cores); the layout
        # propagates to every later layer and changes no value.
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward_with_skips(
        self, images: Tensor, strides: tuple[int, ...]
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Like :meth:`forward`, plus the block outputs at ``strides`` (see
        :meth:`skip_geometry`) as ``{stride: Tensor[N, C_s, h_s, w_s]}``."""
        wanted = set(strides)
        skips: dict[int, Tensor] = {}
        x = self._normalise(images)
        stride = 1
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                if stride in wanted:
                    skips[stride] = x
                stride *= 2
            x = layer(x)
        missing = wanted - set(skips)
        if missing:
            raise ValueError(f"no skip features at strides {sorted(missing)}; available: "
                             f"{sorted(self.skip_geometry())}")
        return x, skips

    def forward(self, images: Tensor) -> Tensor:
        """``Tensor[N, 1 or 3, H, W]`` in [0, 1] -> ``Tensor[N, out_channels, h, w]``."""
        return self.features(self._normalise(images))


def _read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ImageNet weights file {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncation, refused globals...
        raise ValueError(
            f"could not read {str(path)!r} as a torch state_dict ({type(exc).__name__}: {exc}); "
            "expected a file saved with torch.save(torchvision.models.vgg16().state_dict())"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} is not a state_dict (a dict of tensors such as 'features.0.weight')"
        )
    return state


def load_imagenet_vgg16(
    backbone: VGG16Backbone,
    path: str | os.PathLike,
    head: nn.Module | None = None,
) -> list[str]:
    """Load VGG16 weights saved in torchvision's ``vgg16`` state_dict format into ``backbone``.

    ``features.N.weight/bias`` must all be present with the backbone's shapes (width divisor 1 for
    real ImageNet weights). ``classifier.*`` keys are ignored unless ``head`` is given and its
    ``fc6``/``fc7`` convolutions have the shapes of VGG16's fully connected layers: then, as FCN
    did, ``classifier.0.weight [4096, 25088]`` is reshaped to fc6's ``[4096, 512, 7, 7]`` and
    ``classifier.3.weight [4096, 4096]`` to fc7's ``[4096, 4096, 1, 1]`` (the paper preset). Narrow
    heads (the fast preset) keep their random initialisation.

    Returns the names of the parameters that were loaded (``features.0.weight``, ...,
    ``fc6.weight``...).

    Raises
    ------
    ValueError
        The file is missing or not a state_dict, lacks backbone keys, or has other shapes (e.g.
        full-width weights into a backbone built with ``width_divisor`` > 1). The message lists the
        offending keys and what would work.
    """
    state = _read_state_dict(path)
    own = backbone.features.state_dict()
    missing = [f"features.{k}" for k in own if f"features.{k}" not in state]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks {len(missing)} VGG16 feature keys ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); expected torchvision's vgg16 state_dict keys "
            "'features.N.weight' / 'features.N.bias'"
        )
    wrong = [
        f"features.{k}: file {list(state[f'features.{k}'].shape)} vs model {list(v.shape)}"
        for k, v in own.items()
        if state[f"features.{k}"].shape != v.shape
    ]
    if wrong:
        hint = ""
        if state["features.0.weight"].shape[0] != own["0.weight"].shape[0]:
            width = (
                64 // state["features.0.weight"].shape[0]
                if state["features.0.weight"].shape[0]
                else "?"
            )
            hint = (
                f"; the file holds a width-divisor-{width} VGG16 but the backbone was built with "
                f"width_divisor={64 // own['0.weight'].shape[0]}"
            )
        raise ValueError(
            f"shape mismatch loading {str(path)!r}: {'; '.join(wrong[:3])}"
            f"{' ...' if len(wrong) > 3 else ''}{hint}"
        )
    backbone.features.load_state_dict({k: state[f"features.{k}"] for k in own})
    loaded = [f"features.{k}" for k in own]
    if head is not None:
        loaded += _load_classifier_as_conv(head, state)
    return loaded


def _load_classifier_as_conv(head: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """FCN's "convolutionalisation": VGG16 fc6/fc7 (Linear) -> 7x7 / 1x1 convolutions, when the
    shapes fit (the flattening order of torchvision's classifier input is C, H, W)."""
    loaded: list[str] = []
    for fc_key, conv_name in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
        conv = getattr(head, conv_name, None)
        weight, bias = state.get(f"{fc_key}.weight"), state.get(f"{fc_key}.bias")
        if not isinstance(conv, nn.Conv2d) or weight is None or bias is None:
            continue
        if weight.shape != (conv.weight.shape[0], conv.weight[0].numel()) or conv.bias is None:
            continue
        if bias.shape != conv.bias.shape:
            continue
        with torch.no_grad():
            conv.weight.copy_(weight.view_as(conv.weight))
            conv.bias.copy_(bias)
        loaded += [f"{conv_name}.weight", f"{conv_name}.bias"]
    return loaded
