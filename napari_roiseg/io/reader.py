"""npe2 reader contribution: open volumes with :func:`napari_roiseg.io.volumes.read_volume`.

napari imports this module to ask every plugin whether it can read a path, so it stays light
(numpy, tifffile, napari notifications; never torch).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from napari.utils.notifications import show_error, show_warning

from napari_roiseg.io.formats import FRAME_SUFFIXES
from napari_roiseg.io.volumes import VolumeReadError, VolumeReadWarning, read_volume

PathOrPaths = Union[str, Sequence[str]]
LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[PathOrPaths], list[LayerData]]

_FILE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm", ".nii", ".nii.gz")

# napari's documented "read, but no layers" value. Returning it after show_error() gives the
# user exactly one message: raising instead makes napari 0.9 add its own "Tried opening with
# napari-roiseg, but failed" dialog or an exception notification, and returning [] makes it
# either try another reader or raise "returned no data" on top of our notification.
_NO_LAYERS: list = [(None,)]


def napari_get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """Return :func:`read_layers` if ``path`` looks like a volume this plugin reads, else None.

    Only names are checked (napari calls this for every file it opens); contents are checked
    when reading. Never raises.
    """
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if paths and all(_looks_readable(Path(p)) for p in paths):
            return read_layers
    except Exception:  # noqa: BLE001 -- a reader hook must never break napari's open dialog
        pass
    return None


def _looks_readable(path: Path) -> bool:
    if path.is_dir():
        return any(
            p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")
            for p in path.iterdir()
        )
    return path.name.lower().endswith(_FILE_SUFFIXES)


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one volume (file, folder of frames, or stacked list of frames) as an image layer.

    Returns
    -------
    list of (data, kwargs, "image")
        ``kwargs`` has ``name``, ``scale`` (the voxel spacing ``(z, y, x)``) and ``metadata``
        (``source``, ``spacing``, ``unit``). For a file that cannot be read, an error
        notification with the reason is shown and no layer is returned.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", VolumeReadWarning)
            volume = read_volume(path)
    except (VolumeReadError, ImportError) as exc:
        show_error(str(exc))
        return _NO_LAYERS
    for warning in caught:  # how the file was read differs from its metadata: say so, once
        if issubclass(warning.category, VolumeReadWarning):
            show_warning(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    metadata = {"source": volume.source, "spacing": volume.spacing, "unit": volume.unit}
    kwargs = {"name": volume.name, "scale": volume.spacing, "metadata": metadata}
    return [(volume.data, kwargs, "image")]
