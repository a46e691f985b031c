"""Dock widgets named in napari.yaml: the main dock with every step, and one dock per step.

Importing this package imports napari, Qt and magicgui but never torch: the model loads when a
dock first needs it.
"""

from __future__ import annotations

from .finetune_widget import FinetuneWidget
from .main_dock import RoisegDock
from .review_widget import ReviewWidget
from .segment_widget import SegmentWidget

__all__ = ["FinetuneWidget", "ReviewWidget", "RoisegDock", "SegmentWidget"]
