"""resolve_device without a GPU (CUDA availability is monkeypatched)."""

from __future__ import annotations

import pytest
import torch

from src_model.device import resolve_device


def test_auto_picks_cuda_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device() == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device(torch.device("cuda:0"))
    with pytest.raises(ValueError, match="unknown device 'gpu please'"):
        resolve_device("gpu please")


def test_cuda_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def _tiny_model():
    from src_model.model import build_model

    from .conftest import tiny_config

    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def test_auto_runs_predict_and_segment_on_the_cpu_without_cuda(monkeypatch):
    import numpy as np

    from napari_roiseg.segment import segment_array
    from src_model.predict import predict

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _tiny_model()
    vol = np.random.default_rng(0).integers(0, 255, (3, 64, 48), dtype=np.uint8)
    results = predict(model, vol, device="auto", batch_size=2)
    assert len(results) == 3 and results[0]["mask"].shape == (64, 48)
    assert next(model.parameters()).device.type == "cpu"
    seg = segment_array(vol, model, device="auto", batch_size=2)
    assert seg.complete
    np.testing.assert_array_equal(seg.labels, np.stack([r["mask"] for r in results]))


def test_cuda_without_cuda_is_a_clear_error_in_segment_and_cli(monkeypatch, tmp_path, capsys):
    import numpy as np
    import tifffile

    from napari_roiseg.cli import main
    from napari_roiseg.segment import segment_array

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    vol = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(RuntimeError, match="CUDA is not available.*'cpu' or 'auto'"):
        segment_array(vol, _tiny_model(), device="cuda")
    tifffile.imwrite(tmp_path / "v.tif", vol, imagej=True)
    from src_model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", _tiny_model(), {})
    code = main(["segment", str(tmp_path / "v.tif"), "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "m.pt"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("roiseg: error:") and "CUDA is not available" in err[0]
    assert not (tmp_path / "o" / "labels.tif").exists()  # nothing half-written
    assert not [p for p in (tmp_path / "o").iterdir()]


def test_gathered_gpu_conversion_equals_the_per_slice_one():
    """The batch-at-once host copy used on a GPU, exercised on the CPU: same arrays per slice,
    including slices with no box."""
    import numpy as np

    from src_model.predict import _to_numpy

    g = torch.Generator().manual_seed(0)
    outputs = []
    for k in (2, 0, 3):
        prob = torch.rand(5, 7, generator=g)
        outputs.append({"boxes": torch.rand(k, 4, generator=g) * 5,
                        "scores": torch.rand(k, generator=g).half(),
                        "probabilities": prob, "mask": (prob > 0.5).to(torch.uint8)})
    for probabilities in (True, False):
        plain = _to_numpy(outputs, probabilities, gather=False)
        gathered = _to_numpy(outputs, probabilities, gather=True)
        assert len(plain) == len(gathered) == 3
        for a, b in zip(plain, gathered):
            assert a.keys() == b.keys() == ({"boxes", "scores", "mask"} | (
                {"probabilities"} if probabilities else set()))
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
                np.testing.assert_array_equal(a[key], b[key])
        assert plain[1]["boxes"].shape == (0, 4) and plain[0]["scores"].dtype == np.float32
