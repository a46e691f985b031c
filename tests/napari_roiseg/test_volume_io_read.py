"""read_volume on every supported format, with files the tests write themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_roiseg.io.volumes import Volume, natural_key, read_volume

SPACING = (2.5, 0.3, 0.2)


def assert_volume(vol: Volume, expected: np.ndarray, spacing=SPACING) -> None:
    assert vol.data.shape == expected.shape
    assert vol.data.dtype == expected.dtype
    np.testing.assert_array_equal(vol.data, expected)
    np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6)


def test_imagej_tiff_keeps_spacing_and_unit(tmp_path, volume):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1 / SPACING[2], 1 / SPACING[1]),
        metadata={"axes": "ZYX", "spacing": SPACING[0], "unit": "mm"},
    )
    vol = read_volume(path)
    assert_volume(vol, volume)
    assert (vol.name, vol.unit, vol.source) == ("scan", "mm", str(path))


def test_ome_tiff_physical_size(tmp_path, volume):
    path = tmp_path / "scan.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeZ": 2.5, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.2}
    tifffile.imwrite(path, volume, ome=True, metadata=metadata)
    vol = read_volume(path)
    assert_volume(vol, volume)
    assert vol.name == "scan"


def test_plain_multipage_tiff_has_unit_spacing(tmp_path, volume):
    path = tmp_path / "pages.tiff"
    tifffile.imwrite(path, volume, photometric="minisblack", compression="zlib")
    assert_volume(read_volume(path), volume, spacing=(1.0, 1.0, 1.0))


def test_tiff_written_frame_by_frame_is_one_volume(tmp_path, volume):
    path = tmp_path / "frames.tif"
    with tifffile.TiffWriter(path) as writer:
        for frame in volume:  # one series per page
            writer.write(frame, contiguous=False)
    assert_volume(read_volume(path), volume, spacing=(1.0, 1.0, 1.0))


def test_large_uncompressed_tiff_is_memory_mapped(tmp_path, volume):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "ZYX"})
    mapped = read_volume(path, mmap=True)
    assert isinstance(mapped.data, np.memmap)
    np.testing.assert_array_equal(mapped.data, volume)
    assert not isinstance(read_volume(path, mmap=False).data, np.memmap)


def test_big_endian_tiff_becomes_native(tmp_path, volume):
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, volume.astype(">u2"), byteorder=">")
    vol = read_volume(path)
    assert vol.data.dtype.isnative
    np.testing.assert_array_equal(vol.data, volume)


def test_single_2d_image_is_one_slice(tmp_path, volume):
    Image.fromarray(volume[0]).save(tmp_path / "one.png")
    tifffile.imwrite(tmp_path / "one.tif", volume[0])
    for name in ("one.png", "one.tif"):
        vol = read_volume(tmp_path / name)
        assert vol.data.shape == (1, *volume.shape[1:])
        np.testing.assert_array_equal(vol.data[0], volume[0])


def test_png_folder_is_stacked_in_natural_order(tmp_path, volume):
    folder = tmp_path / "frames"
    folder.mkdir()
    names = [f"frame{i * 5}.png" for i in range(len(volume))]  # frame0, frame5, frame10...
    for name, frame in zip(names, volume):
        Image.fromarray(frame).save(folder / name)
    (folder / ".hidden.png").write_bytes(b"")  # ignored, like notes and thumbnails
    (folder / "notes.txt").write_text("ignored")
    vol = read_volume(folder)
    assert_volume(vol, volume, spacing=(1.0, 1.0, 1.0))
    assert vol.name == "frames"
    shuffled = [folder / n for n in reversed(names)]
    assert_volume(read_volume(shuffled), volume, spacing=(1.0, 1.0, 1.0))


def test_natural_key_orders_numbers_by_value():
    names = ["f10.png", "f2.png", "F1.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f10.png"]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_gray_content_in_colour_png_becomes_one_channel(tmp_path, volume, mode):
    gray = Image.fromarray(volume[0])
    gray.convert(mode).save(tmp_path / "gray.png")
    vol = read_volume(tmp_path / "gray.png")
    assert vol.data.shape == (1, *volume.shape[1:])
    np.testing.assert_array_equal(vol.data[0], volume[0])


def test_16bit_png(tmp_path, volume):
    data = volume[0].astype(np.uint16) * 257
    Image.fromarray(data).save(tmp_path / "deep.png")
    vol = read_volume(tmp_path / "deep.png")
    np.testing.assert_array_equal(vol.data[0], data)


def test_multiframe_dicom(write_dicom, volume):
    vol = read_volume(write_dicom(volume))
    assert_volume(vol, volume)
    assert (vol.unit, vol.name) == ("mm", "scan")


def test_rgb_dicom_with_gray_content(write_dicom, volume):
    rgb = np.repeat(volume[..., np.newaxis], 3, axis=-1)
    assert_volume(read_volume(write_dicom(rgb, rgb=True)), volume)


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_nifti_is_reordered_to_slices_rows_columns(write_nifti, volume, name):
    vol = read_volume(write_nifti(volume, name))
    assert_volume(vol, volume)
    assert (vol.name, vol.unit) == ("scan", "mm")


def test_uncompressed_nifti_can_be_memory_mapped(write_nifti, volume):
    vol = read_volume(write_nifti(volume, "scan.nii"), mmap=True)
    assert isinstance(vol.data.base, np.memmap) or isinstance(vol.data, np.memmap)
    np.testing.assert_array_equal(vol.data, volume)


@pytest.mark.parametrize(("module", "suffix"), [("pydicom", ".dcm"), ("nibabel", ".nii")])
def test_missing_optional_reader_says_how_to_install(tmp_path, monkeypatch, module, suffix):
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"\0" * 512)
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail
    with pytest.raises(ImportError, match=r"pip install 'napari-roiseg\[io\]'"):
        read_volume(path)


def test_volume_is_frozen(tmp_path, volume):
    tifffile.imwrite(tmp_path / "v.tif", volume)
    vol = read_volume(tmp_path / "v.tif")
    with pytest.raises(AttributeError):
        vol.name = "other"  # type: ignore[misc]
    assert isinstance(vol.source, str) and Path(vol.source).name == "v.tif"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_imagej_stack_whose_only_axis_is_c_is_read_as_slices(tmp_path, volume, dtype):
    # tifffile's default for a 3D array with imagej=True: axes CYX, channels=N, no slices
    from napari_roiseg.io.volumes import VolumeReadWarning

    path = tmp_path / "default.tif"
    tifffile.imwrite(path, volume.astype(dtype), imagej=True)
    assert tifffile.TiffFile(path).series[0].axes == "CYX"
    with pytest.warns(VolumeReadWarning, match=r"only stack axis is C \(5 channels.*read as a"):
        read = read_volume(path)
    np.testing.assert_array_equal(read.data, volume.astype(dtype))


def test_reader_says_when_channels_were_read_as_slices(tmp_path, volume, monkeypatch):
    import napari_roiseg.io.reader as reader

    shown = []
    monkeypatch.setattr(reader, "show_warning", shown.append)
    path = tmp_path / "default.tif"
    tifffile.imwrite(path, volume, imagej=True)
    [(data, _, kind)] = reader.read_layers(str(path))
    assert kind == "image" and data.shape == volume.shape
    assert len(shown) == 1 and "read as a volume of slices (Z)" in shown[0]
