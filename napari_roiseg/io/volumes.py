"""Read 3D ultrasound volumes from TIFF, PNG/TIFF frames, DICOM and NIfTI; write TIFF and CSV.

Pure numpy + tifffile (+ Pillow for PNG, pydicom / nibabel when installed): no napari import, so
scripts, the CLI and tests use the same functions as the napari reader and writers.

Every volume comes back as ``(slices, height, width)`` = napari's ``(z, y, x)``, with the voxel
``spacing`` in the same order. Problems with a file raise :class:`VolumeReadError` whose message
says what was wrong and what would work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from napari_roiseg.io.formats import (
    FRAME_SUFFIXES,
    RawVolume,
    VolumeReadError,
    VolumeReadWarning,
    load_dicom,
    load_nifti,
    load_png,
    load_tiff,
)
from napari_roiseg.io.writers import (
    atomic_path,
    plain_write_mode,
    read_boxes_csv,
    write_boxes_csv,
    write_labels_tiff,
    write_volume_tiff,
)

__all__ = [
    "Volume",
    "VolumeReadError",
    "VolumeReadWarning",
    "read_volume",
    "spacing_in_mm",
    "write_labels_tiff",
    "write_volume_tiff",
    "write_boxes_csv",
    "read_boxes_csv",
    "atomic_path",
    "plain_write_mode",
    "SUPPORTED_FORMATS",
]

PathLike = Union[str, "os.PathLike[str]"]

SUPPORTED_FORMATS = (
    "a TIFF stack (.tif/.tiff, ImageJ or OME), a 2D PNG/TIFF image, a folder or list of 2D "
    "PNG/TIFF frames, a multi-frame DICOM (.dcm) or a NIfTI file (.nii/.nii.gz)"
)
EXPECTED_SHAPE = "expected a 3D grayscale volume (slices, height, width) or a 2D image"
MIN_SIDE = 8  # thinner slices are almost always a wrong axis order, never ultrasound
MMAP_MIN_BYTES = 64 * 2**20  # below this, reading into RAM is faster and holds no file handle


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D grayscale volume and where it came from.

    Attributes
    ----------
    data : numpy.ndarray
        ``(slices, height, width)``, real numeric dtype in native byte order (bool becomes
        uint8). May be a read-only ``numpy.memmap`` for large uncompressed files.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` from the file's metadata, 1.0 where the file gives none.
    source : str
        The path (or the first frame's path) that was read.
    name : str
        A short display name (file stem or folder name).
    unit : str or None
        The spacing unit as stored in the file (``"mm"``, ``"micron"``...), None if unknown.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    name: str
    unit: str | None = None

    @property
    def spacing_mm(self) -> tuple[float, float, float] | None:
        """``spacing`` in mm when the file says its unit (None when it does not): what the
        model's resolution matching (``src_model.resolution``) needs."""
        return spacing_in_mm(self.spacing, self.unit)


# Length units as files and napari write them -> mm.
_UNIT_MM = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "cm": 10.0, "centimeter": 10.0,
            "m": 1000.0, "meter": 1000.0, "metre": 1000.0, "um": 1e-3, "µm": 1e-3, "μm": 1e-3,
            "micron": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3, "nm": 1e-6}


def spacing_in_mm(spacing: Sequence[float] | None, unit: Any) -> tuple[float, ...] | None:
    """``spacing`` converted to mm from ``unit`` (a name such as "mm", "micron", "cm"); None when
    the unit is unknown or missing, or a size is not positive."""
    factor = _UNIT_MM.get(str(unit).strip().lower()) if unit is not None else None
    if factor is None or spacing is None:
        return None
    values = tuple(float(v) * factor for v in spacing)
    return values if all(np.isfinite(v) and v > 0 for v in values) else None


def read_volume(path: PathLike | Sequence[PathLike], *, mmap: bool | None = None) -> Volume:
    """Read a volume (or a single 2D image) as ``(slices, height, width)``.

    Parameters
    ----------
    path : path-like or sequence of path-likes
        One of: a multi-page / ImageJ / OME TIFF; a single 2D PNG or TIFF, returned as a
        one-slice volume ``(1, H, W)``; a folder of 2D PNG/TIFF frames or a list of frame paths,
        stacked in natural order (``frame2`` before ``frame10``); a multi-frame DICOM (needs
        pydicom); a NIfTI file (needs nibabel). RGB(A) content whose colour channels are equal
        (grayscale saved as colour) becomes one channel.
    mmap : bool or None
        Memory-map uncompressed TIFF and NIfTI data instead of loading it. None (default) maps
        files of 64 MiB or more.

    Returns
    -------
    Volume
        The data with spacing ``(z, y, x)``. NIfTI voxel axes ``(i, j, k)`` become
        ``(k, j, i)`` (slice, row, column) without applying the affine, the same array order as
        SimpleITK's ``GetArrayFromImage``. PNG frames carry no spacing (1.0); DICOM spacing is
        in mm.

    Raises
    ------
    VolumeReadError
        If the file is missing, empty, truncated, corrupt, of an unsupported format, colour,
        not 2D/3D, or thinner than 8 pixels per side.
    ImportError
        If a DICOM or NIfTI file needs pydicom / nibabel and it is not installed.
    """
    if isinstance(path, (str, os.PathLike)):
        target = Path(path)
        if target.is_dir():
            frames = _frames_in_folder(target)
            return _read_frames(frames, name=target.name, source=str(target), mmap=mmap)
        return _read_file(target, mmap=mmap)
    paths = [Path(p) for p in path]
    if not paths:
        raise VolumeReadError(f"No files given: expected {SUPPORTED_FORMATS}.")
    if len(paths) == 1:
        return read_volume(paths[0], mmap=mmap)
    name = paths[0].parent.name or _stem(paths[0])
    return _read_frames(sorted(paths, key=natural_key), name=name, source=str(paths[0]), mmap=mmap)


def natural_key(path: PathLike) -> list[object]:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    parts = re.split(r"(\d+)", Path(path).name.lower())
    return [int(p) if p.isdigit() else p for p in parts]


def _read_file(path: Path, *, mmap: bool | None) -> Volume:
    raw = _load_raw(path, mmap=mmap)
    data = to_volume_array(raw, label=f"'{path.name}'")
    check_finite(data, label=f"'{path.name}'")
    return Volume(data, _clean_spacing(raw.spacing), str(path), _stem(path), raw.unit)


def check_finite(data: np.ndarray, *, label: str) -> None:
    """Refuse floating-point volumes holding NaN or infinite values, saying how many.

    Reads slice by slice and releases each slice's pages of a memory-mapped volume, so resident
    memory stays at about one slice. NaN or infinity
    would turn every normalised slice into NaN (or all zeros), and napari cannot pick contrast
    limits for them, so they are refused here rather than giving an empty mask later.
    """
    if data.dtype.kind != "f":
        return
    from src_model.mmap_pages import release_slices

    n_nan = n_inf = 0
    for i, plane in enumerate(data):
        n_nan += int(np.isnan(plane).sum())
        n_inf += int(np.isinf(plane).sum())
        release_slices(data, i, i + 1)  # a memory-mapped volume's pages go back as we go
    if n_nan or n_inf:
        raise VolumeReadError(
            f"{label} holds {n_nan} NaN and {n_inf} infinite values (of {data.size}): the "
            "intensities must be finite numbers. Replace them before opening the volume, e.g. "
            "np.nan_to_num(data, nan=0.0, posinf=data[np.isfinite(data)].max(), neginf=0.0), "
            "or export it again."
        )


def _load_raw(path: Path, *, mmap: bool | None) -> RawVolume:
    """Check that the file can be a volume, pick the format from its name, and load it."""
    if not path.exists():
        raise VolumeReadError(f"'{path}' does not exist: expected {SUPPORTED_FORMATS}.")
    if not path.is_file():
        raise VolumeReadError(f"'{path}' is not a regular file: expected {SUPPORTED_FORMATS}.")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise VolumeReadError(
            f"'{path.name}' cannot be opened ({exc.strerror}): check that you may read it."
        ) from exc
    size = path.stat().st_size
    if size == 0:
        raise VolumeReadError(
            f"'{path.name}' is empty (0 bytes); the file was probably not saved completely. "
            "Export it again."
        )
    use_mmap = size >= MMAP_MIN_BYTES if mmap is None else mmap
    kind = _sniff_format(path) or _format_of(path)  # the content wins over a wrong extension
    loaders = {"tiff": load_tiff, "png": load_png, "dicom": load_dicom, "nifti": load_nifti}
    try:
        return loaders[kind](path, mmap=use_mmap)
    except (VolumeReadError, ImportError):
        raise
    except MemoryError as exc:
        raise VolumeReadError(
            f"'{path.name}' ({size / 2**20:.0f} MiB on disk) does not fit in memory: save it "
            "uncompressed (it is then memory-mapped) or crop it into smaller volumes."
        ) from exc
    except Exception as exc:  # noqa: BLE001 -- library errors become one actionable message
        raise VolumeReadError(
            f"'{path.name}' could not be read as {_FORMAT_NAMES[kind]}: it is truncated, "
            f"corrupt or not really {_FORMAT_NAMES[kind]} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}). "  # one line: the CLI prints one line
            "Export or copy the file again."
        ) from exc


_FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "dicom": "DICOM", "nifti": "NIfTI"}


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".dcm", ".dicom")) or _has_dicom_magic(path):
        return "dicom"
    raise VolumeReadError(
        f"'{path.name}' has an unsupported file type: expected {SUPPORTED_FORMATS}."
    )


def _sniff_format(path: Path) -> str | None:
    """The format the file's first bytes identify, None when they identify none we read.

    A file renamed by hand (a TIFF saved as ``scan.nii``, a PNG as ``.tif``) is then read as
    what it is; gzip content counts as NIfTI only under a NIfTI name (it could be anything).
    """
    with open(path, "rb") as fh:
        head = fh.read(352)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "nifti"
    if head[:2] == b"\x1f\x8b" and path.name.lower().endswith((".nii", ".nii.gz")):
        return "nifti"
    return None


def _has_dicom_magic(path: Path) -> bool:
    # DICOM files often have no extension; the standard puts "DICM" after a 128-byte preamble.
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _frames_in_folder(folder: Path) -> list[Path]:
    frames = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_SUFFIXES
    ]
    if not frames:
        raise VolumeReadError(
            f"Folder '{folder.name}' contains no PNG or TIFF frames: expected a folder of 2D "
            "PNG/TIFF images of equal size (one per slice). DICOM and NIfTI files are opened "
            "one file at a time."
        )
    return sorted(frames, key=natural_key)


def _read_frames(frames: list[Path], *, name: str, source: str, mmap: bool | None) -> Volume:
    """Stack 2D frames of equal shape and dtype into one volume."""
    slices: list[np.ndarray] = []
    for frame in frames:
        if frame.is_dir() or _format_of(frame) not in ("png", "tiff"):
            raise VolumeReadError(
                f"'{frame.name}' cannot be a frame of a stack: expected 2D PNG or TIFF frames."
            )
        image = to_volume_array(_load_raw(frame, mmap=False), label=f"Frame '{frame.name}'")
        if image.shape[0] != 1:
            raise VolumeReadError(
                f"Frame '{frame.name}' holds {image.shape[0]} slices: a stack needs 2D frames. "
                "Open a multi-page file on its own."
            )
        if slices and (image.shape != slices[0].shape or image.dtype != slices[0].dtype):
            raise VolumeReadError(
                f"Frame '{frame.name}' is {image.shape[1:]} {image.dtype} but '{frames[0].name}' "
                f"is {slices[0].shape[1:]} {slices[0].dtype}: all frames of a stack must have "
                "the same size and bit depth."
            )
        slices.append(image)
    data = np.concatenate(slices)
    check_finite(data, label=f"Frames of '{name}'")
    return Volume(data, (1.0, 1.0, 1.0), source, name)


def to_volume_array(raw: RawVolume, *, label: str) -> np.ndarray:
    """Turn loaded pixel data into ``(slices, H, W)``: drop gray-colour channels, check shape.

    Parameters
    ----------
    raw : RawVolume
        Loaded data with its channel axis (if any) and channel kind.
    label : str
        How to name the source in error messages, e.g. ``"'scan.tif'"``.
    """
    data = raw.data
    if raw.channel_axis is not None:
        data = _gray_from_channels(data, raw.channel_axis, raw.channel_kind, raw, label)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        fix = (" Save one 3D volume per file (e.g. one time point or channel)."
               if data.ndim > 3 else "")
        raise VolumeReadError(f"{label} has shape {_shape_text(raw)}: {EXPECTED_SHAPE}.{fix}")
    if min(data.shape[1:]) < MIN_SIDE:
        raise VolumeReadError(
            f"{label} has shape {_shape_text(raw)}, i.e. slices of {data.shape[1]}x{data.shape[2]}"
            f" pixels: {EXPECTED_SHAPE} with height and width of at least {MIN_SIDE} pixels. "
            "Check the axis order (the last two axes must be height and width)."
        )
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind not in "uif":
        raise VolumeReadError(
            f"{label} holds {data.dtype} pixels: expected integer or floating-point intensities."
        )
    if not data.dtype.isnative:
        # torch and vispy need native byte order; big-endian files are converted (loads them).
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _gray_from_channels(
    data: np.ndarray, axis: int, kind: str, raw: RawVolume, label: str
) -> np.ndarray:
    """Keep one channel if the colour channels are equal; colour images are refused."""
    data = np.moveaxis(data, axis, -1)
    count = data.shape[-1]
    if kind == "rgb" and count == 2:  # gray + alpha
        return data[..., 0]
    compare = data[..., :3] if kind == "rgb" and count == 4 else data  # ignore alpha
    if kind == "rgb" and count not in (3, 4):
        raise VolumeReadError(f"{label} has {count} samples per pixel: {EXPECTED_SHAPE}.")
    first = compare[..., 0]
    if all(np.array_equal(first, compare[..., c]) for c in range(1, compare.shape[-1])):
        return first
    if kind == "rgb":
        what, fix = "colour (RGB) content", "Convert it to grayscale (8- or 16-bit) first."
        if raw.axes.startswith("S"):  # planar RGB: what tifffile.imwrite makes of 3-4 slices
            fix += " If these are slices, save them with photometric='minisblack' (tifffile)."
    else:
        what = f"{count} different channels"
        fix = "Keep one channel, or if the channels are really slices, save them as the Z axis."
    raise VolumeReadError(
        f"{label} has shape {_shape_text(raw)} with {what}: {EXPECTED_SHAPE}. {fix}"
    )


def _shape_text(raw: RawVolume) -> str:
    return f"{tuple(raw.data.shape)}" + (f" (axes {raw.axes})" if raw.axes else "")


def _clean_spacing(spacing: Sequence[float | None]) -> tuple[float, float, float]:
    # Files often store 0, NaN or nothing for an unknown size; napari needs a positive scale.
    def ok(v: float | None) -> float:
        return float(v) if v is not None and np.isfinite(v) and v > 0 else 1.0

    z, y, x = spacing
    return ok(z), ok(y), ok(x)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".nii.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
