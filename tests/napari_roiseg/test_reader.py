"""The npe2 reader: which paths it claims, what it returns, and how bad files are reported."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_roiseg.io import reader as _reader
from napari_roiseg.io.reader import napari_get_reader


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(_reader, "show_error", shown.append)
    return shown


@pytest.mark.parametrize(
    "name", ["a.tif", "a.TIFF", "a.ome.tif", "a.png", "a.dcm", "a.nii", "a.nii.gz"]
)
def test_claims_supported_names(tmp_path, name):
    assert napari_get_reader(str(tmp_path / name)) is _reader.read_layers


@pytest.mark.parametrize("path", ["a.txt", "a.csv", "", [], None, 3, ["a.png", "b.txt"]])
def test_declines_others_without_raising(path):
    assert napari_get_reader(path) is None


def test_claims_folders_with_frames_only(tmp_path):
    assert napari_get_reader(str(tmp_path)) is None
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "f1.png")
    assert napari_get_reader(str(tmp_path)) is _reader.read_layers


def test_reads_volume_with_spacing_as_scale(tmp_path, volume, errors):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path, volume, imagej=True, resolution=(5, 5), metadata={"axes": "ZYX", "spacing": 2.0}
    )
    [(data, kwargs, layer_type)] = napari_get_reader(str(path))(str(path))
    np.testing.assert_array_equal(data, volume)
    assert layer_type == "image"
    assert kwargs["name"] == "scan"
    np.testing.assert_allclose(kwargs["scale"], (2.0, 0.2, 0.2))
    assert kwargs["metadata"]["source"] == str(path)
    assert errors == []


def test_reads_a_stacked_list_of_frames(tmp_path, volume):
    paths = []
    for i, frame in enumerate(volume):
        paths.append(str(tmp_path / f"f{i}.png"))
        Image.fromarray(frame).save(paths[-1])
    [(data, _, _)] = napari_get_reader(paths)(paths)
    np.testing.assert_array_equal(data, volume)


def test_bad_file_shows_one_error_and_returns_no_layers(tmp_path, errors):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\0garbage")
    assert napari_get_reader(str(path))(str(path)) == [(None,)]
    assert len(errors) == 1
    assert "'broken.tif' is truncated or corrupt" in errors[0]


def test_bad_file_through_napari_open_keeps_napari_running(tmp_path, roiseg_plugin):
    """viewer.open() with our plugin: one notification, no layer, no exception."""
    from napari.components import ViewerModel
    from napari.utils.notifications import notification_manager

    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    received = []
    notification_manager.notification_ready.connect(received.append)
    try:
        viewer = ViewerModel()
        assert viewer.open(str(path), plugin="napari-roiseg") == []
    finally:
        notification_manager.notification_ready.disconnect(received.append)
    assert len(viewer.layers) == 0
    messages = [str(n.message) for n in received]
    assert any("'empty.tif' is empty (0 bytes)" in m for m in messages), messages


def test_good_file_through_napari_open(tmp_path, volume, roiseg_plugin):
    from napari.components import ViewerModel

    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "ZYX", "spacing": 3.0})
    viewer = ViewerModel()
    [layer] = viewer.open(str(path), plugin="napari-roiseg")
    assert layer.name == "scan"
    assert tuple(layer.scale) == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(layer.data, volume)
