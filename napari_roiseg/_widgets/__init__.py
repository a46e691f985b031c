"""Dock widgets named in napari.yaml.

Importing this package imports napari, Qt and magicgui but never torch: the model loads when a
widget first needs it.
"""

from __future__ import annotations

from .finetune_widget import FinetuneWidget
from .segment_widget import SegmentWidget

__all__ = ["FinetuneWidget", "SegmentWidget"]
