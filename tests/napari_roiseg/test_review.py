"""Review scores: per-slice rows, the combined score, the queue (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_roiseg.review import (
    COMPONENTS,
    STAT_FIELDS,
    draw_scores,
    empty_stats,
    score_slices,
    slice_stats,
    stats_from_layers,
)

H, W = 96, 80


def _result(k: int, n: int) -> dict[str, np.ndarray]:
    """A smooth synthetic model output: an ellipse drifting slowly, present on slices 6..n-7."""
    mask = np.zeros((H, W), np.uint8)
    prob = np.zeros((H, W), np.float32)
    if not 6 <= k < n - 6:
        return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "mask": mask, "probabilities": prob}
    cy, cx = 40 + 0.2 * k, 30 + 0.3 * k
    ry, rx = 6 + 2 * np.sin(np.pi * (k - 6) / (n - 12)), 10.0
    x1, y1, x2, y2 = cx - rx - 3, cy - ry - 3, cx + rx + 3, cy + ry + 3
    yy, xx = np.mgrid[:H, :W]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    box = (yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)
    prob[box] = 0.03
    prob[inside] = 0.97
    mask[inside] = 1
    return {"boxes": np.array([[x1, y1, x2, y2]], np.float32),
            "scores": np.array([0.93 + 0.01 * np.sin(k)], np.float32), "mask": mask,
            "probabilities": prob}


def _degrade(kind: str, r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r = {k: np.array(v, copy=True) for k, v in r.items()}
    if kind == "shift":
        r["boxes"][:, [0, 2]] += 28
        r["mask"], r["probabilities"] = np.roll(r["mask"], 28, 1), np.roll(r["probabilities"], 28, 1)
    elif kind == "blank":
        r["boxes"], r["scores"] = r["boxes"][:0], r["scores"][:0]
        r["mask"][:] = 0
        r["probabilities"][:] = 0
    elif kind == "blob":
        r["mask"][80:92, 60:72] = 1
    elif kind == "unsure":
        p = r["probabilities"]
        p[p > 0] = 0.5 + 0.15 * (p[p > 0] - 0.5)
    return r


@pytest.fixture(scope="module")
def clean():
    n = 40
    return [_result(k, n) for k in range(n)]


def test_degraded_slices_top_the_queue(clean):
    degraded = {10: "shift", 17: "blank", 24: "blob", 30: "unsure"}
    stats = np.stack([slice_stats(_degrade(degraded[k], r) if k in degraded else r)
                      for k, r in enumerate(clean)])
    scores = score_slices(stats)
    assert set(scores.order[:4].tolist()) == set(degraded)
    assert [scores.reason(k) for k in sorted(degraded)] == [
        "box_jump", "area_jump", "area_jump", "entropy"]
    assert scores.rank(17) <= 4 and scores.components["presence"][17] == 1.0
    # the clean volume: nothing stands out much, nothing near the degraded scores
    calm = score_slices(np.stack([slice_stats(r) for r in clean]))
    assert calm.score.max() < scores.score[sorted(degraded)].min()


def test_slice_stats_rows():
    r = _result(20, 40)
    row = slice_stats(r)
    assert row.dtype == np.float32 and row.shape == (len(STAT_FIELDS),)
    f = dict(zip(STAT_FIELDS, row.tolist()))
    assert f["n_boxes"] == 1 and f["area"] == r["mask"].sum() and f["second_score"] == 0
    assert (f["x1"], f["y1"]) == pytest.approx(tuple(r["boxes"][0, :2]))
    half = dict(r, probabilities=np.where(r["probabilities"] > 0, 0.5, 0).astype(np.float32))
    assert slice_stats(half)[STAT_FIELDS.index("entropy")] == pytest.approx(1.0)
    no_prob = {k: v for k, v in r.items() if k != "probabilities"}
    assert np.isnan(slice_stats(no_prob)[STAT_FIELDS.index("entropy")])
    empty = slice_stats(_result(0, 40))
    assert empty[STAT_FIELDS.index("n_boxes")] == 0 and empty[STAT_FIELDS.index("entropy")] == 0


def test_stats_from_layers_matches_model_rows_except_entropy(clean):
    labels = np.stack([r["mask"] for r in clean])
    rows = np.array([[k, *r["boxes"][0, [1, 0, 3, 2]], r["scores"][0]]
                     for k, r in enumerate(clean) if len(r["boxes"])], np.float32)
    from_layers = stats_from_layers(labels, rows)
    from_model = np.stack([slice_stats(r) for r in clean])
    keep = [i for i, name in enumerate(STAT_FIELDS) if name != "entropy"]
    assert np.allclose(from_layers[:, keep], from_model[:, keep], equal_nan=True)
    assert np.isnan(from_layers[:, STAT_FIELDS.index("entropy")]).all()
    scores = score_slices(from_layers)
    assert np.isfinite(scores.score).all() and not scores.z["entropy"].any()


def test_constant_volume_scores_zero():
    row = slice_stats(_result(20, 40))
    scores = score_slices(np.repeat(row[None], 15, axis=0))
    assert not scores.score.any()
    assert scores.order.tolist() == list(range(15)) and scores.reason(3) == ""


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_empty_and_tiny_volumes(n):
    empty = score_slices(np.stack([slice_stats(_result(0, 40))] * n) if n else empty_stats(0))
    assert empty.score.shape == (n,) and not empty.score.any() and len(empty.order) == n
    assert set(empty.z) == set(COMPONENTS)


def test_nan_rows_and_lonely_masks_stay_finite(clean):
    stats = np.stack([slice_stats(r) for r in clean])
    stats[[3, 12, 13]] = np.nan  # not segmented (a cancelled run)
    lonely = stats.copy()
    lonely[2] = slice_stats(_result(20, 40))  # a mask between two empty slices
    for s in (stats, lonely):
        scores = score_slices(s)
        assert np.isfinite(scores.score).all() and (scores.score >= 0).all()
        assert all(np.isfinite(z).all() for z in scores.z.values())
        assert all(np.isfinite(c).all() for c in scores.components.values())
    assert score_slices(lonely).rank(2) == 1
    with pytest.raises(ValueError, match="rows of"):
        score_slices(np.zeros((4, 3)))


def test_draw_scores_marks_current_slice(clean):
    from matplotlib.figure import Figure

    scores = score_slices(np.stack([slice_stats(r) for r in clean]))
    ax = draw_scores(Figure(), scores, current=7, marked={3: "reviewed", 9: "corrected"})
    assert list(ax.lines[-1].get_xdata()) == [7, 7]
    assert ax.get_xlim() == (-0.5, 39.5)


def test_iter_segment_fills_the_rows(phantom, untrained_model):
    pytest.importorskip("torch")
    from napari_roiseg.segment import segment_array
    from src_model.predict import predict

    net = untrained_model()
    seg = segment_array(phantom.volume, net, device="cpu", batch_size=4, slices=[1, 5, 6])
    assert seg.stats.shape == (len(phantom.volume), len(STAT_FIELDS))
    assert np.isnan(seg.stats[0]).all() and not np.isnan(seg.stats[5, :-1]).any()
    expected = [slice_stats(r) for r in predict(net, phantom.volume[[1, 5, 6]], device="cpu")]
    assert np.allclose(seg.stats[[1, 5, 6]], np.stack(expected), atol=1e-5, equal_nan=True)
