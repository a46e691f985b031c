"""Bad inputs: each gives a VolumeReadError that says what is wrong and what would work."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_roiseg.io.volumes import VolumeReadError, read_volume


def test_missing_file(tmp_path):
    with pytest.raises(VolumeReadError, match=r"'.*nothing\.tif' does not exist: expected"):
        read_volume(tmp_path / "nothing.tif")


@pytest.mark.parametrize("name", ["empty.tif", "empty.png", "empty.dcm", "empty.nii.gz"])
def test_zero_byte_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(VolumeReadError, match=rf"'{name}' is empty \(0 bytes\).*Export it again"):
        read_volume(tmp_path / name)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])  # into header, pixels, last page
@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_tiff(tmp_path, volume, compression, fraction, mmap):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, volume, imagej=True, metadata={"axes": "ZYX"}, compression=compression)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * fraction)])
    message = r"'cut\.tif' (is truncated|could not be read as TIFF)"
    with pytest.raises(VolumeReadError, match=message):
        read_volume(cut, mmap=mmap)


def test_tiff_that_lost_its_last_pages(tmp_path, volume):
    """tifffile silently returns fewer pages for a broken page chain; we must not."""
    full = tmp_path / "full.tif"
    with tifffile.TiffWriter(full) as writer:
        for frame in volume:
            writer.write(frame, contiguous=False)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[:-200])
    with pytest.raises(VolumeReadError, match="truncated or corrupt|truncated"):
        read_volume(cut)


def test_corrupt_png(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VolumeReadError, match=r"'noise\.png' could not be read as PNG: .*corrupt"):
        read_volume(path)


def test_truncated_png(tmp_path, volume):
    full = tmp_path / "full.png"
    Image.fromarray(volume[0]).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(VolumeReadError, match=r"'cut\.png' could not be read as PNG: .*truncated"):
        read_volume(cut)


def test_4d_tiff(tmp_path):
    path = tmp_path / "x.tif"
    data = np.zeros((5, 3, 64, 64), np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TZYX"})
    message = (
        r"'x\.tif' has shape \(5, 3, 64, 64\) \(axes TZYX\): expected a 3D grayscale volume "
        r"\(slices, height, width\) or a 2D image"
    )
    with pytest.raises(VolumeReadError, match=message):
        read_volume(path)


def test_colour_png_is_refused(tmp_path, volume):
    rgb = np.stack([volume[0], volume[1], volume[2]], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(VolumeReadError, match=r"colour \(RGB\) content.*Convert it to grayscale"):
        read_volume(tmp_path / "colour.png")


def test_multichannel_imagej_stack_is_refused_with_a_hint(tmp_path, volume):
    # channels *and* slices: the channels are really channels, and they differ
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, np.stack([volume, volume[::-1]], axis=1), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.raises(VolumeReadError, match="2 different channels.*save them as the Z axis"):
        read_volume(path)


@pytest.mark.parametrize("shape", [(64, 3), (5, 64, 4), (2, 7, 64)])
def test_thin_slices_hint_at_axis_order(tmp_path, shape):
    path = tmp_path / "thin.tif"
    tifffile.imwrite(path, np.ones(shape, np.uint8), photometric="minisblack")
    with pytest.raises(VolumeReadError, match=r"at least 8 pixels.*Check the axis order"):
        read_volume(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.mha"
    path.write_bytes(b"not a volume")
    with pytest.raises(VolumeReadError, match=r"unsupported file type: expected a TIFF stack"):
        read_volume(path)


def test_folder_without_frames(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(VolumeReadError, match="contains no PNG or TIFF frames"):
        read_volume(tmp_path)


def test_frames_of_different_size(tmp_path, volume):
    Image.fromarray(volume[0]).save(tmp_path / "a1.png")
    Image.fromarray(volume[0, :20]).save(tmp_path / "a2.png")
    with pytest.raises(VolumeReadError, match=r"Frame 'a2\.png' is \(20, 48\).*same size"):
        read_volume(tmp_path)


def test_multipage_frame_in_a_folder(tmp_path, volume):
    tifffile.imwrite(tmp_path / "a1.tif", volume)
    tifffile.imwrite(tmp_path / "a2.tif", volume)
    with pytest.raises(VolumeReadError, match=r"holds 5 slices: a stack needs 2D frames"):
        read_volume(tmp_path)


def test_not_really_dicom(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"hello" * 100)
    pytest.importorskip("pydicom")
    with pytest.raises(VolumeReadError, match=r"'fake\.dcm' could not be read as DICOM"):
        read_volume(path)


def test_corrupt_nifti(tmp_path):
    pytest.importorskip("nibabel")
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    with pytest.raises(VolumeReadError, match=r"'bad\.nii\.gz' could not be read as NIfTI"):
        read_volume(path)


def test_truncated_nifti(write_nifti, volume, tmp_path):
    full = write_nifti(volume, "full.nii")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(VolumeReadError, match=r"'cut\.nii' could not be read as NIfTI"):
        read_volume(cut)


def test_three_slices_saved_as_planar_rgb_get_a_hint(tmp_path, volume):
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, volume[:3], photometric="rgb", planarconfig="separate")
    with pytest.raises(VolumeReadError, match="photometric='minisblack'"):
        read_volume(path)
