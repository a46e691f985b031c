"""napari-roiseg: segment small structures in 3D ultrasound with an RPN-FCN (ROI convolution).

Kept tiny on purpose: napari imports this package (and its reader) at start-up, so nothing here
may import torch or ``src_model.model``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("napari-roiseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["__version__"]
