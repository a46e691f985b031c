"""The ``roiseg`` command (``main``) and what it runs: the demo, one training job (also run by
torchrun), and the comparison with the baselines. ``python -m napari_roiseg.cli segment ...``
runs the command as well (torchrun uses that form)."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
