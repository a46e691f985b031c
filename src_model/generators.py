"""Driving the project's progress generators (training, segmentation, fine-tuning) to their end.

The long jobs are generators that yield progress and return their result, so a napari worker can
drive them and cancel between items. Scripts, the CLI and tests run the same generators with
:func:`drain`. No torch import: the napari side uses it before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")

__all__ = ["drain"]


def drain(gen: Generator[Any, Any, R], on_item: Callable[[Any], None] | None = None) -> R:
    """Run ``gen`` to its end, handing each yielded item to ``on_item``; return its return value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_item is not None:
            on_item(item)
