"""Per-format loaders behind :func:`napari_roiseg.io.volumes.read_volume`.

Each loader returns a :class:`RawVolume`: the pixel array as the library gives it, where its
colour/channel axis is, and the spacing ``(z, y, x)`` found in the metadata (None = unknown).
Shape checks and the grayscale conversion happen once, in ``volume_io.to_volume_array``.
Library exceptions are left to propagate; ``read_volume`` turns them into one message.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

FRAME_SUFFIXES = (".png", ".tif", ".tiff")
IO_EXTRA_HINT = "pip install 'napari-roiseg[io]'"


class VolumeReadError(ValueError):
    """A file could not be read as a volume; the message says why and what would work."""


VolumeReadError.__module__ = "napari_roiseg.io.volumes"  # its public home


class VolumeReadWarning(UserWarning):
    """A file was read, but not literally as its metadata says (the message says how)."""


VolumeReadWarning.__module__ = "napari_roiseg.io.volumes"


@dataclass(frozen=True, eq=False)
class RawVolume:
    """Pixel data straight from a file, before shape normalisation.

    Attributes
    ----------
    data : numpy.ndarray
        Any shape; ``(slices, H, W)`` after the channel axis is removed if the file is valid.
    channel_axis : int or None
        Axis holding colour samples or channels, None for grayscale.
    channel_kind : str
        ``"rgb"`` for colour samples (RGB, RGBA, gray+alpha), ``"channels"`` for separate
        channels (e.g. a TIFF ``C`` axis), which must all be equal to be accepted.
    axes : str
        The file's axis letters when known (tifffile's ``series.axes``), for error messages.
    spacing : tuple
        ``(z, y, x)`` voxel size, None for unknown entries.
    unit : str or None
        Unit of the spacing as stored in the file.
    """

    data: np.ndarray
    channel_axis: int | None = None
    channel_kind: str = "rgb"
    axes: str = ""
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    unit: str | None = None


# --- TIFF ---------------------------------------------------------------------------------------


def load_tiff(path: Path, *, mmap: bool) -> RawVolume:
    """Multi-page, ImageJ or OME TIFF via tifffile; spacing from ImageJ or OME metadata."""
    with _tifffile_problems() as problems, tifffile.TiffFile(path) as tif:
        series = _page_series(tif) if tif.series else []
        _check_tiff_complete(path, tif, series, problems)
        if not series:
            raise VolumeReadError(f"'{path.name}' contains no images: expected a TIFF stack.")
        spacing, unit = _tiff_spacing(tif)
        first = series[0]
        if len(series) > 1:
            data, axes = np.stack([s.asarray() for s in series]), "I" + first.axes
        elif mmap and first.dataoffset is not None:  # contiguous and uncompressed
            data, axes = tifffile.memmap(path, series=0, mode="r"), first.axes
            data = data.reshape(first.shape)  # tifffile.memmap may keep length-1 axes
        else:
            data, axes = first.asarray(), first.axes
        _check_tiff_complete(path, tif, series, problems)
        if _channels_are_slices(tif, axes):
            axes = "ZYX"
            warnings.warn(
                f"'{path.name}' is an ImageJ stack whose only stack axis is C ({data.shape[0]} "
                "channels, no slices): read as a volume of slices (Z), as "
                "tifffile.imwrite(path, volume, imagej=True) writes one. Save it with "
                "metadata={'axes': 'ZYX'} to say so in the file.", VolumeReadWarning,
                stacklevel=2)
    channel_axis, kind = _tiff_channel_axis(axes)
    return RawVolume(data, channel_axis, kind, axes, spacing, unit)


def _channels_are_slices(tif: tifffile.TiffFile, axes: str) -> bool:
    """A grayscale ImageJ file whose only stack axis is C: what ``tifffile.imwrite(p, vol,
    imagej=True)`` writes for a 3D array (axes CYX, ``channels=N``, no ``slices``). ImageJ
    itself never writes a volume that way, so these channels are a volume's slices."""
    meta = tif.imagej_metadata or {}
    return (tif.is_imagej and axes == "CYX" and meta.get("mode", "grayscale") == "grayscale"
            and int(meta.get("slices", 1) or 1) == 1 and int(meta.get("frames", 1) or 1) == 1)


def _page_series(tif: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """The image series to read: the first one, or all 2D ones if they are frames of a stack.

    Scripts that write a stack frame by frame (``TiffWriter.write`` per slice) produce one
    series per page; those are stacked when they are all 2D with the same shape and dtype.
    """
    first = tif.series[0]
    frames = (
        len(tif.series) > 1
        and not (tif.is_imagej or tif.is_ome)
        and first.ndim == 2
        and all(s.shape == first.shape and s.dtype == first.dtype for s in tif.series)
    )
    return list(tif.series) if frames else [first]


# tifffile recovers from a truncated or broken page chain by logging a warning and returning
# fewer pages; for a volume that silently loses slices, so these warnings are errors here.
_TIFF_CORRUPTION_SIGNS = (
    "invalid page offset",
    "invalid offset to first page",
    "failed to reshape",
    "invalid or corrupted",
    "truncated",
    "failed to read",
)


@contextlib.contextmanager
def _tifffile_problems() -> Iterator[list[str]]:
    """Collect tifffile's warning messages (and keep them off stderr) while reading."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _check_tiff_complete(
    path: Path,
    tif: tifffile.TiffFile,
    series: list[tifffile.TiffPageSeries],
    problems: list[str],
) -> None:
    for message in problems:
        if any(sign in message for sign in _TIFF_CORRUPTION_SIGNS):
            raise VolumeReadError(
                f"'{path.name}' is truncated or corrupt (tifffile: {message}). "
                "Export or copy the file again."
            )
    ends = [
        offset + count
        for one in series
        for page in one.pages
        if page is not None
        for offset, count in zip(page.dataoffsets, page.databytecounts)
    ]
    ends += [one.dataoffset + one.nbytes for one in series if one.dataoffset is not None]
    size = tif.filehandle.size
    if ends and max(ends) > size:
        raise VolumeReadError(
            f"'{path.name}' is truncated: its image data needs {max(ends)} bytes but the file "
            f"has {size}. Export or copy the file again."
        )


def _tiff_channel_axis(axes: str) -> tuple[int | None, str]:
    if "S" in axes:  # samples per pixel: RGB(A) or gray + alpha
        return axes.index("S"), "rgb"
    if "C" in axes:
        return axes.index("C"), "channels"
    return None, "rgb"


def _tiff_spacing(tif: tifffile.TiffFile) -> tuple[tuple[float | None, ...], str | None]:
    """ImageJ (resolution tags + ``spacing``) or OME (``PhysicalSize*``) voxel size.

    Plain TIFFs carry no trustworthy z spacing and often a meaningless 72 dpi resolution, so
    they get no spacing at all rather than an x/y that disagrees with z.
    """
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        xres, yres = tif.pages.first.resolution
        x = 1.0 / xres if xres else None
        y = 1.0 / yres if yres else None
        unit = meta.get("unit")
        return (meta.get("spacing", 1.0), y, x), str(unit) if unit else None
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        unit = pixels.get("PhysicalSizeXUnit", "µm" if "PhysicalSizeX" in pixels else None)
        sizes = (pixels.get(f"PhysicalSize{a}") for a in "ZYX")
        return tuple(_float_or_none(v) for v in sizes), unit
    return (None, None, None), None


# --- PNG ----------------------------------------------------------------------------------------

# Palette and exotic colour modes are converted to RGB(A) so that the gray-content check applies.
_PIL_MODES_TO_CONVERT = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")


def load_png(path: Path, *, mmap: bool) -> RawVolume:
    """One 2D PNG via Pillow. PNG has no voxel size we can trust, so spacing stays unknown."""
    from PIL import Image  # Pillow is imported only when a PNG is opened

    del mmap  # compressed: nothing to map
    with Image.open(path) as image:
        image.load()  # decode now so truncation raises here, inside our error handling
        if image.mode in _PIL_MODES_TO_CONVERT:
            alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        data = np.asarray(image)
    if data.dtype == bool:
        data = data.astype(np.uint8) * 255
    return RawVolume(data, -1 if data.ndim == 3 else None, "rgb", "")


# --- DICOM --------------------------------------------------------------------------------------


def load_dicom(path: Path, *, mmap: bool) -> RawVolume:
    """Single- or multi-frame DICOM via pydicom; spacing in mm.

    Frames become slices. Stored values are returned as they are (no rescale slope, no VOI
    LUT), which is what ultrasound stores anyway.
    """
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError(f"Reading DICOM files needs pydicom: {IO_EXTRA_HINT}") from exc

    del mmap  # pydicom decodes into memory
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise VolumeReadError(f"'{path.name}' is a DICOM file without image data (no PixelData).")
    try:
        data = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise VolumeReadError(
            f"'{path.name}' stores its pixels as '{name}', which pydicom cannot decode here "
            f"({exc}). Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or export "
            "the volume uncompressed."
        ) from exc
    samples = int(ds.get("SamplesPerPixel", 1))
    return RawVolume(data, -1 if samples > 1 else None, "rgb", "", _dicom_spacing(ds), "mm")


def _dicom_spacing(ds: Any) -> tuple[float | None, float | None, float | None]:
    """PixelSpacing (row, column) and SpacingBetweenSlices / SliceThickness, in mm.

    Enhanced multi-frame objects keep them in the shared functional groups; ultrasound objects
    often only have calibrated regions (PhysicalDelta in cm).
    """
    sources = [ds]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        if measures:
            sources.insert(0, measures[0])
    y = x = z = None
    for item in sources:
        if y is None and item.get("PixelSpacing"):
            y, x = (float(v) for v in item.PixelSpacing[:2])
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if z is None and item.get(key) not in (None, ""):
                z = float(item.get(key))
    regions = ds.get("SequenceOfUltrasoundRegions")
    if y is None and regions:
        region = regions[0]
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        if units == (3, 3):
            x = 10.0 * float(region.PhysicalDeltaX)  # cm -> mm
            y = 10.0 * float(region.PhysicalDeltaY)
    return z, y, x


# --- NIfTI --------------------------------------------------------------------------------------


def load_nifti(path: Path, *, mmap: bool) -> RawVolume:
    """NIfTI-1/2 via nibabel, voxel axes ``(i, j, k)`` reordered to ``(k, j, i)``.

    The affine is not applied: slices are the third voxel axis, rows the second, columns the
    first, as SimpleITK's ``GetArrayFromImage`` orders them. Spacing comes from ``pixdim``.
    """
    try:
        import nibabel
    except ImportError as exc:
        raise ImportError(f"Reading NIfTI files needs nibabel: {IO_EXTRA_HINT}") from exc

    image = _open_nifti(nibabel, path, mmap)
    data = np.asanyarray(image.dataobj)
    zooms = [float(v) for v in image.header.get_zooms()[:3]] + [None, None, None]
    unit = image.header.get_xyzt_units()[0]
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) time/vector axis
        data = data[..., 0]
    channel_axis = None
    if data.dtype.names:  # RGB24 / RGBA32 voxels
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
        channel_axis = -1
    spatial = data.ndim - (channel_axis is not None)
    axes = "XYZT"[:spatial] if spatial <= 4 else ""
    if spatial in (2, 3):
        order = list(range(spatial))[::-1] + list(range(spatial, data.ndim))
        data = data.transpose(order)
        axes = axes[::-1]
    return RawVolume(
        data,
        channel_axis,
        "rgb",
        axes + ("S" if channel_axis is not None else ""),
        (zooms[2] if spatial == 3 else None, zooms[1], zooms[0]),
        None if unit == "unknown" else unit,
    )


def _open_nifti(nibabel: Any, path: Path, mmap: bool) -> Any:
    """``nibabel.load`` picks the parser from the file name; a NIfTI file under another name
    (``.tif``, or an uncompressed file called ``.nii.gz``) is parsed from its bytes instead."""
    import gzip

    with open(path, "rb") as fh:
        head = fh.read(2)
    gz = head == b"\x1f\x8b"
    name = path.name.lower()
    if (name.endswith(".nii.gz") and gz) or (name.endswith(".nii") and not gz):
        return nibabel.load(path, mmap="r" if mmap else False)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    klass = nibabel.Nifti2Image if raw[4:8] == b"n+2\x00" else nibabel.Nifti1Image
    return klass.from_bytes(raw)


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
