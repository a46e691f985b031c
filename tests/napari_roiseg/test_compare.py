"""Table 1 plumbing: the ROI-filter and margin tuners' pooled-dice rule, and joining runs made in parallel."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_roiseg.cli import compare


def test_tune_test_rois_picks_by_pooled_dice_not_by_empty_slices(monkeypatch):
    truth = np.zeros((10, 8, 8), np.uint8)
    truth[:2, 2:6, 2:6] = 1  # two slices with an object, eight empty
    timid = np.zeros_like(truth)  # keeps no box: every empty slice scores 1
    bold = truth.copy()
    bold[5:, 0, 0] = 1  # finds both objects, one false pixel on five empty slices

    from src_model.config import get_preset

    seen = []

    def fake_segment(images, model):
        config = model.config
        seen.append(config.test_top_k)
        return SimpleNamespace(labels=timid if config.test_score_threshold == 0.9 else bold)

    monkeypatch.setattr("napari_roiseg.segment.segment_array", fake_segment)
    model = SimpleNamespace(config=get_preset("fast").replace(test_top_k=3))
    thr, k, table = compare.tune_test_rois(model, truth, truth, thresholds=(0.5, 0.9),
                                           top_ks=(None,))
    # top_k None was evaluated as what apply_roi_filter sets: all proposals, not the config's 3
    assert seen == [None, None] and model.config.test_top_k == 3
    by_thr = {row["score_threshold"]: row for row in table}
    # The per-slice mean would prefer the timid filter (0.8 vs 0.5); pooled dice does not.
    assert by_thr[0.9]["dice"] > by_thr[0.5]["dice"]
    assert (thr, k) == (0.5, None) and by_thr[0.5]["pooled_dice"] > 0.9


def test_tune_roi_margin_takes_the_smallest_best_margin_and_restores_the_config(monkeypatch):
    truth = np.zeros((4, 16, 16), np.uint8)
    truth[:, 4:12, 2:14] = 1
    cut = truth.copy()
    cut[:, :, 2:4] = 0  # a tight box cuts the structure's left edge off

    def fake_segment(images, model):
        return SimpleNamespace(labels=cut if model.config.test_roi_margin < 4 else truth)

    monkeypatch.setattr("napari_roiseg.segment.segment_array", fake_segment)
    from src_model.config import get_preset

    model = SimpleNamespace(config=get_preset("fast"))
    margin, table = compare.tune_roi_margin(model, truth, truth, margins=(0, 4, 8))
    assert margin == 4  # 4 and 8 tie: the smaller window is cheaper
    assert [r["test_roi_margin"] for r in table] == [0, 4, 8]
    assert table[0]["pooled_dice"] < table[1]["pooled_dice"] == table[2]["pooled_dice"] == 1.0
    assert model.config.test_roi_margin == 0


def test_tune_roi_filter_picks_single_object_jointly_with_the_threshold(monkeypatch):
    truth = np.zeros((4, 16, 16), np.uint8)
    truth[:, 4:12, 4:12] = 1
    spurious = truth.copy()
    spurious[:, 0:2, 14:16] = 1  # a far-off false box paints its own blob

    def fake_segment(images, model):
        single, thr = model.config.test_single_object, model.config.test_score_threshold
        return SimpleNamespace(labels=truth if single and thr == 0.3 else spurious)

    monkeypatch.setattr("napari_roiseg.segment.segment_array", fake_segment)
    from src_model.config import get_preset

    model = SimpleNamespace(config=get_preset("fast"))
    chosen = compare.tune_roi_filter(model, truth, truth, thresholds=(0.3, 0.9), top_ks=(None,))
    assert (chosen["score_threshold"], chosen["single_object"]) == (0.3, True)
    assert len(chosen["table"]) == 4 and not model.config.test_single_object
    compare.apply_roi_filter(model, chosen)
    assert model.config.test_single_object and model.config.test_score_threshold == 0.3


def test_tune_test_time_sets_the_filter_then_the_margin_it_picked(monkeypatch):
    truth = np.zeros((4, 16, 16), np.uint8)
    truth[:, 4:12, 2:14] = 1
    cut = truth.copy()
    cut[:, :, 2:4] = 0

    def fake_segment(images, model, score_threshold=None, top_k=None):
        c = model.config
        thr = c.test_score_threshold if score_threshold is None else score_threshold
        if thr != 0.5:  # every other filter misses the structure
            return SimpleNamespace(labels=np.zeros_like(truth))
        return SimpleNamespace(labels=truth if c.test_roi_margin >= 4 else cut)

    monkeypatch.setattr("napari_roiseg.segment.segment_array", fake_segment)
    from src_model.config import get_preset

    model = SimpleNamespace(config=get_preset("fast", test_score_threshold=0.9))
    chosen = compare.tune_test_time(model, truth, truth)
    assert (chosen["score_threshold"], chosen["test_roi_margin"]) == (0.5, 4)
    assert model.config.test_score_threshold == 0.5 and model.config.test_roi_margin == 4
    assert len(chosen["validation"]) == 40 and len(chosen["validation_margin"]) == 4


def test_tune_test_time_on_volumes_segments_each_at_its_own_size_and_spacing(monkeypatch):
    """A list of labelled volumes (several frame sizes) is tuned volume by volume, each with its
    own pixel spacing, and scored pooled over all of them: nothing is padded to one size."""
    from napari_roiseg.cli.train_job import LabelledVolume
    from src_model.config import get_preset

    small = np.zeros((3, 16, 16), np.uint8)
    small[:, 4:12, 4:12] = 1
    large = np.zeros((2, 40, 24), np.uint8)
    large[:, 10:30, 6:18] = 1
    vols = [LabelledVolume("small", small * 200, small, (1.0, 0.15, 0.15)),
            LabelledVolume("large", large * 200, large, (1.0, 0.3, 0.3))]
    calls = []

    def fake_segment(images, model, batch_size=None, spacing=None):
        calls.append((images.shape, spacing))
        truth = (images > 0).astype(np.uint8)
        if model.config.test_score_threshold == 0.5:
            return SimpleNamespace(labels=truth)
        if images.shape[1] == 16:  # any other filter loses the small volume's structure
            return SimpleNamespace(labels=np.zeros_like(truth))
        return SimpleNamespace(labels=truth)

    monkeypatch.setattr("napari_roiseg.segment.segment_array", fake_segment)
    model = SimpleNamespace(config=get_preset("fast", test_score_threshold=0.9))
    chosen = compare.tune_test_time(model, vols, None)
    assert chosen["score_threshold"] == 0.5 and model.config.test_score_threshold == 0.5
    assert {c for c in calls} == {((3, 16, 16), (1.0, 0.15, 0.15)), ((2, 40, 24), (1.0, 0.3, 0.3))}
    rows = {(r["score_threshold"], r["top_k"], r["single_object"]): r for r in chosen["validation"]}
    assert rows[0.5, None, False]["pooled_dice"] == 1.0
    # 0.9 keeps only the large volume: pooled over both, the small one's miss counts
    assert 0.0 < rows[0.9, None, False]["pooled_dice"] < 1.0


def _results(tmp_path, name, archs, steps=300):
    rows = [{"arch": a, "method": compare.METHODS[a][0], "seg_loss": "ce", "params": 1e6,
             "train_seconds": 1.0, "ms_per_slice": 2.0,
             **{k: {"precision": 1.0, "recall": 1.0, "dice": 1.0}
                for k in ("per_slice_mean", "per_slice_mean_nonempty", "pooled")}}
            for a in archs]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(
        {"train_seeds": [1], "validation_seeds": [50], "test_seeds": [100], "slices": 8,
         "steps": steps, "batch_size": 4, "torch_threads": 1, "rows": rows}))
    return folder


def test_merge_joins_parallel_runs_in_method_order_and_refuses_other_budgets(tmp_path):
    a = _results(tmp_path, "a", ["unet"])
    b = _results(tmp_path, "b", ["fcn32s", "rpn_fcn"])
    table = compare.merge_results([a, b], tmp_path / "out")
    lines = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert [line.split(" | ")[0][2:] for line in lines] == [
        "RPN-FCN, ROI refinement head", "FCN-32s", "U-Net"]
    merged = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["arch"] for r in merged["rows"]] == ["rpn_fcn", "fcn32s", "unet"]
    c = _results(tmp_path, "c", ["fcn_nopool5"], steps=100)
    with pytest.raises(ValueError, match="steps"):
        compare.merge_results([a, c], tmp_path / "out2")


def test_validation_arrays_raw_or_normalised_take_the_same_slices():
    from napari_roiseg.cli.train_job import LabelledVolume, validation_arrays

    vols = [LabelledVolume(f"v{i}", np.full((5, 4, 3), 51 * i, np.uint8),
                           np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 4, 3),
                                                                                  np.uint8))
            for i in (1, 2)]
    raw, truth = validation_arrays(vols, every=2, normalize=False)
    norm, truth2 = validation_arrays(vols, every=2)
    assert raw.dtype == np.uint8 and raw.shape == (6, 4, 3) and raw[0, 0, 0] == 51
    assert raw[3, 0, 0] == 102  # the second volume's slices follow the first's
    np.testing.assert_array_equal(truth, truth2)
    assert truth[:, 0, 0].tolist() == [0, 2, 4, 0, 2, 4]
    assert norm.dtype == np.float32 and np.allclose(norm, raw / 255.0)
