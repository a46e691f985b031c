"""src_model.metrics on hand-made masks with exact expected numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src_model.metrics import SegmentationEvaluator, evaluate_masks, scores_from_counts

REPO_ROOT = Path(__file__).resolve().parents[2]


def four_slices() -> tuple[np.ndarray, np.ndarray]:
    """Slice 0: partial hit; 1: both empty; 2: missed object; 3: false alarm."""
    truth = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros((4, 5, 6), np.uint8)
    truth[0, 1, 1:5] = 1          # 4 px
    pred[0, 1, 1:3] = 1           # 2 of them: TP 2, FN 2
    pred[0, 3, 0] = 1             # FP 1
    truth[2, 2:4, 2] = 1          # 2 px missed: FN 2
    pred[3, 4, 4:6] = 1           # 2 px false alarm: FP 2
    return pred, truth


def test_per_slice_counts_and_scores_exact():
    pred, truth = four_slices()
    r = evaluate_masks(pred, truth)
    ps = r["per_slice"]
    assert ps["tp"] == [2, 0, 0, 0]
    assert ps["fp"] == [1, 0, 0, 2]
    assert ps["fn"] == [2, 0, 2, 0]
    assert ps["precision"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert ps["recall"] == pytest.approx([1 / 2, 1.0, 0.0, 0.0])
    assert ps["dice"] == pytest.approx([4 / 7, 1.0, 0.0, 0.0])
    assert r["n_slices"] == 4
    assert r["n_slices_truth_nonempty"] == 2
    assert r["n_slices_pred_nonempty"] == 2


def test_means_and_pooled_exact():
    pred, truth = four_slices()
    r = evaluate_masks(pred, truth)
    assert r["per_slice_mean"] == pytest.approx(
        {"precision": (2 / 3 + 1) / 4, "recall": (1 / 2 + 1) / 4, "dice": (4 / 7 + 1) / 4})
    # the both-empty slice 1 is left out
    assert r["per_slice_mean_nonempty"] == pytest.approx(
        {"precision": (2 / 3) / 3, "recall": (1 / 2) / 3, "dice": (4 / 7) / 3})
    # pooled: TP 2, FP 3, FN 4
    assert r["pooled"] == pytest.approx({"precision": 2 / 5, "recall": 2 / 6, "dice": 4 / 11})


def test_result_is_json_and_plain_python():
    pred, truth = four_slices()
    r = evaluate_masks(pred, truth)
    assert json.loads(json.dumps(r)) == r
    assert isinstance(r["pooled"]["dice"], float) and isinstance(r["n_slices"], int)


def test_all_empty_is_perfect_everywhere():
    empty = np.zeros((3, 4, 4), bool)
    r = evaluate_masks(empty, empty)
    for key in ("per_slice_mean", "per_slice_mean_nonempty", "pooled"):
        assert r[key] == {"precision": 1.0, "recall": 1.0, "dice": 1.0}, key
    assert r["n_slices_truth_nonempty"] == r["n_slices_pred_nonempty"] == 0


def test_empty_prediction_on_an_object_scores_zero_pooled():
    truth = np.zeros((2, 3, 3), np.uint8)
    truth[1, 1, 1] = 1
    r = evaluate_masks(np.zeros_like(truth), truth)
    assert r["pooled"] == {"precision": 0.0, "recall": 0.0, "dice": 0.0}
    assert r["per_slice_mean"] == {"precision": 0.5, "recall": 0.5, "dice": 0.5}
    assert r["per_slice_mean_nonempty"] == {"precision": 0.0, "recall": 0.0, "dice": 0.0}


def test_2d_input_any_label_value_and_dtypes():
    truth = np.array([[0, 2, 2], [0, 0, 7]], np.int32)  # any non-zero is foreground
    pred = np.array([[True, True, False], [False, False, True]])
    r = evaluate_masks(pred, truth)
    assert r["n_slices"] == 1
    assert (r["per_slice"]["tp"], r["per_slice"]["fp"], r["per_slice"]["fn"]) == ([2], [1], [1])
    assert r["pooled"]["dice"] == pytest.approx(4 / 6)
    assert evaluate_masks(pred.astype(np.float32), truth)["pooled"] == r["pooled"]


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_masks(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        evaluate_masks(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="no slices"):
        evaluate_masks(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))


def test_scores_from_counts_vectorised_rule():
    s = scores_from_counts([0, 0, 3, 0], [0, 1, 1, 0], [0, 0, 0, 2])
    np.testing.assert_allclose(s["precision"], [1.0, 0.0, 0.75, 0.0])
    np.testing.assert_allclose(s["recall"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(s["dice"], [1.0, 0.0, 6 / 7, 0.0])


def test_streaming_evaluator_equals_stacked():
    pred, truth = four_slices()
    ev = SegmentationEvaluator()
    ev.process(pred[:1], truth[:1])  # a volume
    ev.process(pred[1], truth[1])    # a single slice
    ev.process(pred[2:], truth[2:])
    assert ev.evaluate() == evaluate_masks(pred, truth)
    ev.reset()
    with pytest.raises(ValueError, match="process"):
        ev.evaluate()
    ev.process(np.ones((2, 2)), np.ones((2, 2)))
    # volumes of other slice sizes mix freely
    ev.process(np.zeros((1, 7, 3)), np.zeros((1, 7, 3)))
    assert ev.evaluate()["n_slices"] == 2


def test_metrics_import_does_not_import_torch():
    code = "import sys, src_model.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
