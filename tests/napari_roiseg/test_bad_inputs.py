"""The bad-input battery (issue 8): every bad file or array through every entry point.

Each case goes to ``volume_io.read_volume``, the npe2 reader (``napari_get_reader`` and
``viewer.open``), ``roiseg segment`` (in-process ``cli.main``) and the dock widgets. A bad input
must give one specific message (key words asserted) or be handled correctly (a volume of the
right shape); no exception may escape, no file may change and no layer may appear or change.
The module prints ``bad-input battery: N cases`` when it ends.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torchvision")  # before napari draws: see api.prepare_torch_import

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_roiseg.io import reader as _reader  # noqa: E402
from napari_roiseg.cli import main  # noqa: E402
from napari_roiseg.io.volumes import VolumeReadError, read_volume  # noqa: E402

TRIED: list[str] = []  # one entry per (case, entry point) actually run


@pytest.fixture(scope="module", autouse=True)
def _report_count(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (f"bad-input battery: {len(TRIED)} cases ({len(set(c.split(':')[0] for c in TRIED))} "
            "distinct inputs, each through every entry point that takes it)")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even with output captured
            reporter.write_line(line)
    else:
        print(line)


def _volume(shape=(4, 64, 64), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, size=shape).astype(dtype)


# --------------------------------------------------------------------------- the file cases


@dataclass(frozen=True)
class FileCase:
    """A file to write, and either the key words of its error or the shape it reads as."""

    name: str
    make: Callable[[Path], Path]
    words: tuple[str, ...] = ()  # empty: the file is readable
    shape: tuple[int, ...] | None = None
    segments: bool = True  # readable and big enough for the model (the CLI then writes results)


def _tif(name, data, **kw):
    def make(folder: Path) -> Path:
        path = folder / name
        tifffile.imwrite(path, data, **kw)
        return path
    return make


def _bytes_of(name, source: Callable[[Path], Path], cut: Callable[[bytes], bytes]):
    def make(folder: Path) -> Path:
        sub = folder / "src"
        sub.mkdir(exist_ok=True)
        data = cut(source(sub).read_bytes())
        path = folder / name
        path.write_bytes(data)
        return path
    return make


def _png(name, data):
    def make(folder: Path) -> Path:
        from PIL import Image

        path = folder / name
        Image.fromarray(data).save(path)
        return path
    return make


def _nifti(name, data_zyx):
    def make(folder: Path) -> Path:
        nibabel = pytest.importorskip("nibabel")
        path = folder / name
        nibabel.save(nibabel.Nifti1Image(data_zyx.T, np.eye(4)), path)
        return path
    return make


def _dicom(name, data):
    def make(folder: Path) -> Path:
        pydicom = pytest.importorskip("pydicom")
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.NumberOfFrames = "US", data.shape[0]
        ds.Rows, ds.Columns = data.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.ascontiguousarray(data).tobytes()
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return make


def _empty(name):
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(b"")
        return path
    return make


def _garbage(name, size=4096):
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(np.random.default_rng(1).integers(0, 256, size, np.uint8).tobytes())
        return path
    return make


GRAY = dict(photometric="minisblack")
VOL = _volume()
NAN = VOL.astype(np.float32)
NAN[1, 3, 3] = np.nan
INF = VOL.astype(np.float64)
INF[2, :2, 0] = np.inf
RGB_COLOUR = np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)
RGBA_COLOUR = np.random.default_rng(3).integers(0, 255, (64, 64, 4), np.uint8)
HALF = lambda b: b[: len(b) // 2]  # noqa: E731
TRUNCATED = ("truncated", "again")
NOT_READ = ("could not be read", "corrupt", "again")

FILE_CASES = [
    # empty files
    *[FileCase(f"empty{ext}", _empty(f"e{ext}"), ("empty", "0 bytes"))
      for ext in (".tif", ".png", ".dcm", ".nii", ".nii.gz")],
    # truncated
    FileCase("truncated.tif", _bytes_of("t.tif", _tif("s.tif", VOL, **GRAY), HALF), TRUNCATED),
    FileCase("truncated.png", _bytes_of("t.png", _png("s.png", VOL[0]), HALF), TRUNCATED),
    FileCase("truncated.dcm", _bytes_of("t.dcm", _dicom("s.dcm", VOL), HALF), ("DICOM",)),
    FileCase("truncated.nii", _bytes_of("t.nii", _nifti("s.nii", VOL), HALF), NOT_READ),
    FileCase("truncated.nii.gz", _bytes_of("t.nii.gz", _nifti("s.nii.gz", VOL), HALF), NOT_READ),
    FileCase("truncated-header.tif", _bytes_of("h.tif", _tif("s.tif", VOL, **GRAY),
                                               lambda b: b[:6]), NOT_READ),
    # corrupt (random bytes, text)
    *[FileCase(f"corrupt{ext}", _garbage(f"c{ext}"), NOT_READ)
      for ext in (".tif", ".png", ".dcm", ".nii", ".nii.gz")],
    FileCase("text.tif", lambda f: (f / "x.tif").write_text("not an image\n" * 9) and f / "x.tif",
             ("could not be read as TIFF",)),
    # shapes
    FileCase("2d.tif", _tif("plane.tif", VOL[0]), shape=(1, 64, 64)),
    FileCase("rgb.tif", _tif("rgb.tif", RGB_COLOUR, photometric="rgb"), ("colour", "grayscale")),
    FileCase("rgb-gray.png", _png("g.png", np.repeat(VOL[0][..., None], 3, -1)),
             shape=(1, 64, 64)),
    FileCase("rgba.png", _png("rgba.png", RGBA_COLOUR), ("colour", "grayscale")),
    FileCase("4d.tif", _tif("4d.tif", _volume((2, 3, 64, 64)), **GRAY),
             ("shape (2, 3, 64, 64)", "3D", "one 3D volume per file")),
    FileCase("4d.nii.gz", _nifti("4d.nii.gz", _volume((2, 4, 64, 64))),
             ("shape", "3D", "one 3D volume per file")),
    FileCase("thin-x.tif", _tif("thin.tif", _volume((4, 64, 1)), **GRAY),
             ("64x1 pixels", "axis order")),
    FileCase("thin-y.tif", _tif("thin.tif", _volume((4, 1, 64)), **GRAY),
             ("1x64 pixels", "axis order")),
    FileCase("1-pixel.tif", _tif("px.tif", _volume((1, 1, 1)), **GRAY), ("1x1 pixels",)),
    FileCase("12px.tif", _tif("small.tif", _volume((4, 12, 12)), **GRAY), shape=(4, 12, 12),
             segments=False),
    # dtypes and values
    FileCase("bool.tif", _tif("b.tif", VOL > 100, **GRAY), shape=(4, 64, 64)),
    FileCase("uint16.tif", _tif("u16.tif", VOL.astype(np.uint16) * 300, **GRAY),
             shape=(4, 64, 64)),
    FileCase("int32.nii", _nifti("i32.nii", VOL.astype(np.int32) - 100), shape=(4, 64, 64)),
    FileCase("float32-nan.tif", _tif("nan.tif", NAN, **GRAY), ("1 NaN", "finite")),
    FileCase("float64-inf.nii.gz", _nifti("inf.nii.gz", INF), ("2 infinite", "finite")),
    FileCase("constant.tif", _tif("c.tif", np.full((4, 64, 64), 7, np.uint16), **GRAY),
             shape=(4, 64, 64)),
    FileCase("constant-float.dcm", _dicom("c.dcm", np.full((4, 64, 64), 9, np.uint8)),
             shape=(4, 64, 64)),
    # wrong extensions: read by content
    FileCase("tiff-named.nii", _bytes_of("t.nii", _tif("s.tif", VOL, **GRAY), bytes),
             shape=(4, 64, 64)),
    FileCase("png-named.tif", _bytes_of("p.tif", _png("s.png", VOL[0]), bytes),
             shape=(1, 64, 64)),
    FileCase("nifti-named.tif", _bytes_of("n.tif", _nifti("s.nii", VOL), bytes),
             shape=(4, 64, 64)),
    FileCase("nii-named.nii.gz", _bytes_of("n.nii.gz", _nifti("s.nii", VOL), bytes),
             shape=(4, 64, 64)),
    FileCase("dicom-named.png", _bytes_of("d.png", _dicom("s.dcm", VOL), bytes),
             shape=(4, 64, 64)),
    # names
    FileCase("spaces+non-ascii", lambda f: _tif("скан äö 1 .tif", VOL, **GRAY)(
        (f / "my scans ü").mkdir() or f / "my scans ü"), shape=(4, 64, 64)),
]
FILE_IDS = [c.name for c in FILE_CASES]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_message(message: str, case: FileCase) -> None:
    for word in case.words:
        assert word.lower() in message.lower(), f"{case.name}: {word!r} not in {message!r}"
    assert "Traceback" not in message


@pytest.fixture
def made(tmp_path, request) -> tuple[FileCase, Path, dict[str, str]]:
    case = request.param
    folder = tmp_path / "in"
    folder.mkdir()
    path = case.make(folder)
    return case, path, _digest(folder)


@pytest.mark.parametrize("made", FILE_CASES, ids=FILE_IDS, indirect=True)
def test_read_volume(made, tmp_path):
    case, path, before = made
    TRIED.append(f"{case.name}:read_volume")
    if case.words:
        with pytest.raises(VolumeReadError) as info:
            read_volume(path)
        _check_message(str(info.value), case)
    else:
        volume = read_volume(path)
        assert volume.data.shape == case.shape and volume.data.dtype.kind in "uif"
        assert np.isfinite(volume.data).all()
    assert _digest(tmp_path / "in") == before


@pytest.mark.parametrize("made", FILE_CASES, ids=FILE_IDS, indirect=True)
def test_npe2_reader(made, tmp_path, monkeypatch):
    case, path, before = made
    TRIED.append(f"{case.name}:napari_get_reader")
    errors: list[str] = []
    monkeypatch.setattr(_reader, "show_error", errors.append)
    reader = _reader.napari_get_reader(str(path))
    assert reader is not None, "every case has a name this plugin claims"
    layers = reader(str(path))
    if case.words:
        assert layers == [(None,)] and len(errors) == 1
        _check_message(errors[0], case)
    else:
        assert errors == [] and len(layers) == 1
        data, kwargs, kind = layers[0]
        assert kind == "image" and data.shape == case.shape and len(kwargs["scale"]) == 3
    assert _digest(tmp_path / "in") == before


@pytest.mark.parametrize("made", FILE_CASES, ids=FILE_IDS, indirect=True)
def test_cli_segment(made, tmp_path, capsys):
    case, path, before = made
    TRIED.append(f"{case.name}:roiseg segment")
    out = tmp_path / "out dir ü"
    rc = main(["segment", str(path), "--out", str(out), "--device", "cpu", "--quiet",
               "--batch-size", "4"])
    captured = capsys.readouterr()
    if case.words or not case.segments:
        assert rc == 1
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("roiseg: error:"), captured.err
        if case.words:
            _check_message(lines[0], case)
        else:
            assert "too small" in lines[0] and "16x16" in lines[0]
        assert not (out / "labels.tif").exists() and not (out / "boxes.csv").exists()
    else:
        assert rc == 0, captured.err
        assert tifffile.imread(out / "labels.tif").reshape(case.shape).shape == case.shape
    assert _digest(tmp_path / "in") == before


def test_napari_open_every_file(make_napari_viewer, tmp_path):
    """napari's own File > Open path: one notification per bad file, no layer, no exception."""
    viewer = make_napari_viewer()
    for i, case in enumerate(FILE_CASES):
        TRIED.append(f"{case.name}:viewer.open")
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        path = case.make(folder)
        start = len(notification_manager.records)
        before = len(viewer.layers)
        viewer.open(str(path), plugin="napari-roiseg")
        notes = [str(n.message) for n in notification_manager.records[start:]]
        if case.words:
            assert len(viewer.layers) == before and len(notes) == 1, (case.name, notes)
            _check_message(notes[0], case)
        else:
            assert len(viewer.layers) == before + 1 and viewer.layers[-1].data.shape == case.shape
            viewer.layers.clear()


# --------------------------------------------------------------------------- arrays in widgets


@dataclass(frozen=True)
class ArrayCase:
    name: str
    data: np.ndarray
    words: tuple[str, ...] = ()  # empty: segmenting works
    rgb: bool = False


ARRAY_CASES = [
    ArrayCase("2d", VOL[0]),
    ArrayCase("rgb", RGB_COLOUR, ("RGB", "grayscale"), rgb=True),
    ArrayCase("rgba", RGBA_COLOUR, ("RGB", "grayscale"), rgb=True),
    ArrayCase("4d", _volume((2, 3, 64, 64)), ("4 dimensions", "3D")),
    ArrayCase("thin", _volume((4, 64, 1)), ("64x1", "too small")),
    ArrayCase("1-pixel", _volume((1, 1, 1)), ("1x1", "too small")),
    ArrayCase("bool", VOL > 100),
    ArrayCase("uint16", VOL.astype(np.uint16) * 250),
    ArrayCase("int32", VOL.astype(np.int32) - 100),
    ArrayCase("float32-nan", NAN, ("1 NaN", "finite")),
    ArrayCase("float64-inf", INF, ("2 infinite", "finite")),
    ArrayCase("constant", np.zeros((4, 64, 64), np.float32)),
]


def _errors_since(start: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[start:]
            if str(n.severity).lower() == "error"]


def _layer_state(viewer) -> list[tuple[str, str, bytes]]:
    return [(type(lyr).__name__, lyr.name, hashlib.sha256(np.ascontiguousarray(
        np.asarray(lyr.data)).tobytes()).hexdigest().encode()) for lyr in viewer.layers]


def test_segment_widget_with_every_array(make_napari_viewer, untrained_model):
    from napari_roiseg._widgets import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer, model=untrained_model())
    for case in ARRAY_CASES:
        # Layers are never cleared (napari's clear() costs a garbage collection); a readable
        # array goes through the whole-volume path, a bad one through both paths.
        layer = viewer.add_image(case.data.copy(), name=f"in {case.name}", rgb=case.rgb)
        widget.image_layer = layer
        for how in ("volume", "slice") if case.words or case.name == "2d" else ("volume",):
            TRIED.append(f"{case.name}:SegmentWidget.{how}")
            before, start = _layer_state(viewer), len(notification_manager.records)
            if how == "volume":
                widget.run_volume(sync=True)
            else:
                widget.run_slice()
            errors = _errors_since(start)
            assert np.array_equal(layer.data, case.data, equal_nan=case.data.dtype.kind == "f")
            if case.words:
                assert len(errors) == 1, (case.name, errors)
                for word in case.words:
                    assert word.lower() in errors[0].lower(), (case.name, word, errors[0])
                assert _layer_state(viewer) == before, case.name  # nothing added or changed
            else:
                assert errors == [], (case.name, errors)
                mask = viewer.layers[f"in {case.name} mask"]
                assert mask.data.shape == case.data.shape
    from napari_roiseg import busy

    assert busy.running() is None


def test_finetune_widget_refuses_bad_images_and_labels(make_napari_viewer, untrained_model,
                                                       tmp_path):
    from napari_roiseg._widgets import FinetuneWidget

    viewer = make_napari_viewer()
    project = tmp_path / "project ü"
    widget = FinetuneWidget(viewer, model=untrained_model(), project=project)
    cases = [c for c in ARRAY_CASES if c.words] + [
        ArrayCase("labels-wrong-shape", VOL, ("shape (4, 64, 60)", "same slices")),
        ArrayCase("labels-2d-for-3d", VOL, ("shape (64, 64)", "same slices")),
    ]
    for case in cases:
        TRIED.append(f"{case.name}:FinetuneWidget.start")
        viewer.layers.clear()
        image = viewer.add_image(case.data.copy(), name="img", rgb=case.rgb)
        shape = np.shape(case.data)[:-1] if case.rgb else np.shape(case.data)
        if case.name == "labels-wrong-shape":
            shape = (4, 64, 60)
        elif case.name == "labels-2d-for-3d":
            shape = (64, 64)
        labels = viewer.add_labels(np.zeros(shape, np.uint8), name="corrections")
        widget.select(image=image, labels=labels)
        with labels.events.blocker_all():  # a "correction" made before (no save yet)
            labels.data[(0,) * (labels.ndim - 2)] = 1
        widget.corrections.marks.clear()
        before, start = _layer_state(viewer), len(notification_manager.records)
        files = _digest(project)
        widget.start(sync=True)
        errors = _errors_since(start)
        assert len(errors) == 1, (case.name, errors)
        for word in case.words:
            assert word.lower() in errors[0].lower(), (case.name, word, errors[0])
        assert _layer_state(viewer) == before and _digest(project) == files, case.name
        assert widget.worker is None and widget.project.versions == {}


def test_battery_size():
    """The battery covers every file case at four entry points plus the array cases."""
    assert len(FILE_CASES) >= 35 and len(ARRAY_CASES) >= 12
