"""Reading volumes and writing results, with no napari and no torch.

``volumes`` reads every supported format as ``(slices, height, width)`` (``read_volume``) and
holds the public writers; ``formats`` loads each file format; ``writers`` writes ImageJ TIFF and
boxes CSV atomically (``atomic_path``: a temporary file renamed into place, with the
permissions a plain write gets); ``reader`` and ``writer`` are the npe2 contributions.
"""

from __future__ import annotations

from .volumes import (
    SUPPORTED_FORMATS,
    Volume,
    VolumeReadError,
    VolumeReadWarning,
    atomic_path,
    plain_write_mode,
    read_boxes_csv,
    read_volume,
    write_boxes_csv,
    write_labels_tiff,
    write_volume_tiff,
)

__all__ = ["SUPPORTED_FORMATS", "Volume", "VolumeReadError", "VolumeReadWarning", "atomic_path",
           "plain_write_mode", "read_boxes_csv", "read_volume", "write_boxes_csv",
           "write_labels_tiff", "write_volume_tiff"]
