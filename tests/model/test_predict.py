"""iter_predict / predict on numpy volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_model.model import build_model
from src_model.predict import iter_predict, predict

from .conftest import phantom_slice, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config())


@pytest.fixture(scope="module")
def volume():
    a, _ = phantom_slice(80, 56, seed=1)
    b, _ = phantom_slice(80, 56, seed=2)
    return np.stack([a, np.zeros_like(a), b]) * 1000.0  # float64, not in [0, 1]


def _check_result(r, h, w):
    assert r["boxes"].dtype == np.float32 and r["boxes"].ndim == 2 and r["boxes"].shape[1] == 4
    assert r["scores"].dtype == np.float32 and r["scores"].shape == (r["boxes"].shape[0],)
    assert r["mask"].dtype == np.uint8 and r["mask"].shape == (h, w)
    assert r["probabilities"].dtype == np.float32 and r["probabilities"].shape == (h, w)
    assert set(np.unique(r["mask"])) <= {0, 1}


def test_volume_with_an_all_zero_slice(model, volume):
    model.train()
    results = predict(model, volume, batch_size=2, device="cpu")
    assert len(results) == 3 and model.training  # mode restored
    for r in results:
        _check_result(r, 80, 56)
    assert next(model.parameters()).device.type == "cpu"


def test_generator_yields_in_order_and_matches_any_batch_size(model, volume):
    one = list(iter_predict(model, volume, batch_size=1, device="cpu", top_k=5))
    three = list(iter_predict(model, volume, batch_size=3, device="cpu", top_k=5))
    assert [i for i, _ in one] == [0, 1, 2] == [i for i, _ in three]
    for (_, a), (_, b) in zip(one, three):
        assert a["boxes"].shape[0] <= 5
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)


def test_normalisation_is_over_the_whole_volume(model, volume):
    from src_model.preprocess import normalize_slices

    normalised = normalize_slices(volume)
    whole = predict(model, volume, device="cpu", batch_size=1)
    pre = predict(model, normalised, device="cpu", normalize=False, batch_size=1)
    for a, b in zip(whole, pre):
        np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    # A slice on its own is scaled by its own statistics: different input, so do not compare.


def test_single_slice_and_overrides(model, volume):
    results = predict(model, volume[0].astype(np.uint16), device="cpu", score_threshold=2.0)
    assert len(results) == 1
    _check_result(results[0], 80, 56)
    assert results[0]["boxes"].shape == (0, 4) and results[0]["mask"].sum() == 0


def test_baseline_through_predict(volume):
    unet = build_model(tiny_config("unet"))
    results = predict(unet, volume, device="cpu")
    assert len(results) == 3 and results[0]["boxes"].shape == (0, 4)
    _check_result(results[0], 80, 56)


def test_errors(model, volume, monkeypatch):
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        predict(model, volume[None], device="cpu")
    with pytest.raises(ValueError, match="normalize=False expects float"):
        predict(model, volume.astype(np.uint8), device="cpu", normalize=False)
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, volume, device="cpu", batch_size=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        predict(model, volume, device="cuda")
