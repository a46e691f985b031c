"""Pure-PyTorch side of napari-roiseg: the RPN-FCN model with ROI convolution and its baselines.

This file stays tiny on purpose: importing ``src_model`` must not import torch, so that the
numpy-only ``src_model.metrics`` can be used from the napari side (and from napari's start-up
path) without paying for torch. Import the submodules you need, e.g.
``from src_model.model import build_model``.
"""

__all__: list[str] = []
