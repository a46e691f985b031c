"""Fixtures for napari_roiseg tests: small volumes, files in each format, the shared data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# In CI the repository is a fresh clone with shared/ beside it (../shared from the root).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def volume() -> np.ndarray:
    """A (5, 32, 48) uint8 volume whose slices all differ (catches slice reordering)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, size=(5, 32, 48), dtype=np.uint8)
    data[:, 0, 0] = np.arange(5) * 10  # slice signature
    return data


@pytest.fixture
def roiseg_plugin():
    """The installed napari-roiseg plugin, registered with npe2 as napari does at start-up."""
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()  # a bare ViewerModel does not run napari's plugin discovery
    if "napari-roiseg" not in manager:
        pytest.fail("napari-roiseg is not installed: run pip install -e . in the repository")
    return manager.get_manifest("napari-roiseg")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real ultrasound data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def write_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Return ``write(volume, name, spacing=(z, y, x), rgb=False)`` creating a DICOM file."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    def write(
        data: np.ndarray, name: str = "scan.dcm", spacing=(2.5, 0.3, 0.2), rgb: bool = False
    ) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "US"
        ds.NumberOfFrames = data.shape[0]
        ds.Rows, ds.Columns = data.shape[1], data.shape[2]
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
        if rgb:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8 * data.itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.SpacingBetweenSlices = spacing[0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.PixelData = np.ascontiguousarray(data).tobytes()
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).NumberOfFrames == data.shape[0]
        return path

    return write


@pytest.fixture
def write_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Return ``write(volume_zyx, name, spacing=(z, y, x))`` creating a NIfTI file.

    The file stores voxel axes (i, j, k) = (x, y, z), as NIfTI does.
    """
    nibabel = pytest.importorskip("nibabel")

    def write(data_zyx: np.ndarray, name: str = "scan.nii.gz", spacing=(2.5, 0.3, 0.2)) -> Path:
        z, y, x = spacing
        image = nibabel.Nifti1Image(data_zyx.transpose(2, 1, 0), affine=np.diag([x, y, z, 1.0]))
        image.header.set_xyzt_units("mm")
        path = tmp_path / name
        nibabel.save(image, path)
        return path

    return write


@pytest.fixture(scope="module")
def phantom():
    """A small phantom (12 slices of 128x96, seed 3) with its labels; test modules may override."""
    from sample_data.phantom import make_phantom

    return make_phantom(seed=3, n_slices=12, shape=(128, 96))


@pytest.fixture(scope="session")
def untrained_model() -> Callable[[], object]:
    """Factory of fresh seeded fast-preset models: untrained, but biased to paint a mask inside
    their ROIs, so widget and fine-tuning tests have a prediction to show and correct."""

    def make():
        import torch

        from src_model.config import get_preset
        from src_model.model import build_model

        torch.manual_seed(0)
        model = build_model(get_preset("fast")).eval()
        with torch.no_grad():
            model.head.score.bias[:] = torch.tensor([-2.0, 2.0])
        return model

    return make


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory, untrained_model) -> Path:
    """A checkpoint file of :func:`untrained_model`: command-line runs that must not depend on
    the shipped weights (which may change) use it."""
    from src_model.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("model") / "untrained.pt", untrained_model())
