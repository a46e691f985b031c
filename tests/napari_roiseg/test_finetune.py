"""napari_roiseg.finetune without a GUI: corrections, slice plans, project folder, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_roiseg.finetune import (
    Corrections,
    FinetuneConfig,
    Project,
    TrainingHistory,
    detect_corrected,
    drain,
    draw_history,
    evaluate,
    format_slices,
    parse_slices,
    plan_slices,
)

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")



@pytest.fixture
def net(untrained_model):
    return untrained_model()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# --------------------------------------------------------------------------- slice lists


def test_parse_and_format_slices():
    assert parse_slices("3, 7-9 12;14") == [3, 7, 8, 9, 12, 14]
    assert parse_slices(" auto ") == [] == parse_slices("") == parse_slices("None")
    assert parse_slices("9-7") == [7, 8, 9]
    assert format_slices([12, 3, 7, 8, 9, 9]) == "3, 7-9, 12"
    with pytest.raises(ValueError, match="'3, 7-9, 12'"):
        parse_slices("3, x")


# --------------------------------------------------------------------------- corrections


def test_detect_corrected_on_hand_edited_array():
    rng = np.random.default_rng(0)
    prediction = (rng.random((10, 16, 12)) > 0.8).astype(np.uint8)
    labels = prediction.copy()
    labels[2, 5, 5] = 1 - labels[2, 5, 5]  # one pixel flipped
    labels[5][labels[5] == 1] = 0  # everything erased
    labels[7][labels[7] == 1] = 2  # repainted with another label value: same foreground
    labels[9, :3, :3] = 1  # painted
    labels[9, :3, :3] |= prediction[9, :3, :3]
    expected = [2, 5] + ([9] if not prediction[9, :3, :3].all() else [])
    assert detect_corrected(labels, prediction) == expected == [2, 5, 9]
    assert detect_corrected(prediction, prediction) == []
    with pytest.raises(ValueError, match="same shape"):
        detect_corrected(labels[:5], prediction)


def test_corrections_marks_and_json_round_trip():
    c = Corrections(20, detected=[3, 4, 10])
    c.mark(4, "excluded")
    c.mark(15, "negative")
    c.mark(17, "corrected")
    assert c.slices() == [3, 10, 15, 17]
    assert c.negatives == [15]
    assert [c.status(k) for k in (3, 4, 15, 17, 0)] == ["edited", "excluded", "negative",
                                                        "corrected", ""]
    assert c.listed() == [3, 4, 10, 15, 17]
    c.mark(17, None)
    assert c.slices() == [3, 10, 15]
    again = Corrections.from_json(json.loads(json.dumps(c.to_json())))
    assert again == c
    with pytest.raises(ValueError, match="outside the volume"):
        c.mark(20, "negative")
    with pytest.raises(ValueError, match="unknown mark"):
        c.mark(1, "wrong")


# --------------------------------------------------------------------------- slice plans


def _check_plan(plan, pool):
    train, val, unused = set(plan.train), set(plan.validation), set(plan.unused)
    assert not train & val and not train & unused and not val & unused
    assert train | val | unused == set(pool)
    assert all(abs(t - v) > 1 for t in train for v in val), plan


@pytest.mark.parametrize("pool", [
    [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],  # spread corrections
    list(range(40, 60)),  # one contiguous run
    [5, 6, 7, 20, 21, 40, 41, 42, 43, 60],  # runs of several lengths
    [3, 4, 5],
])
def test_auto_validation_is_never_next_to_training(pool):
    plan = plan_slices(pool)
    _check_plan(plan, pool)
    assert plan.validation and plan.train
    assert len(plan.validation) == max(1, round(0.25 * len(pool))) or len(pool) <= 4


def test_auto_validation_prefers_whole_runs_and_spreads():
    spread = plan_slices([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert spread.unused == ()  # isolated slices: nothing is wasted
    assert min(spread.validation) > 10 and max(spread.validation) < 100  # not bunched at an end
    run = plan_slices(list(range(40, 60)))
    assert run.validation == (55, 56, 57, 58, 59) and run.unused == (54,)


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 60), min_size=0, max_size=30))
def test_plan_property_no_adjacent_validation(pool):
    plan = plan_slices(pool)
    _check_plan(plan, pool)
    if len(pool) >= 3:
        assert plan.validation


def test_explicit_validation_drops_neighbours_and_warns():
    plan = plan_slices([10, 11, 12, 30], validation=[11])
    assert plan.train == (30,) and plan.unused == (10, 12)
    assert any("10, 12" in w and "neighbours" in w for w in plan.warnings)
    assert any("only 1 validation slice" in w for w in plan.warnings)
    with pytest.raises(ValueError, match="no corrected labels"):
        plan_slices([10, 11], validation=[50])


def test_too_few_slices_warn():
    plan = plan_slices([10, 30])
    assert plan.train == (10, 30) and plan.validation == ()
    assert any("no validation slices" in w for w in plan.warnings)
    assert any("no training slices" in w for w in plan_slices([]).warnings)


# --------------------------------------------------------------------------- project folder


def test_versions_and_rollback_restore_exact_weights(tmp_path, net, untrained_model):
    project = Project(tmp_path / "proj")
    assert project.current_version is None
    v0 = project.add_version(net, {"parent": None, "source": "test"})
    changed = untrained_model()
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.01)
    v1 = project.add_version(changed, {"parent": v0})
    assert (v0, v1) == ("v000", "v001") and project.current_version == "v001"
    assert (tmp_path / "proj" / "versions" / "v001.pt").is_file()
    assert _same_weights(project.load_version(), changed)

    project.set_current("v000")  # rollback
    reopened = Project(tmp_path / "proj")  # another session over the same folder
    assert reopened.current_version == "v000"
    assert list(reopened.versions) == ["v000", "v001"]
    assert reopened.versions["v001"]["parent"] == "v000"
    restored = reopened.load_version()
    assert _same_weights(restored, net) and not _same_weights(restored, changed)
    with pytest.raises(ValueError, match="v009"):
        reopened.set_current("v009")
    # no temporary file left behind by the atomic writes
    assert not [p for p in (tmp_path / "proj").rglob("*") if p.name.endswith(".tmp")]


def test_corrections_survive_reopening(tmp_path):
    rng = np.random.default_rng(1)
    prediction = (rng.random((8, 20, 16)) > 0.7).astype(np.uint8)
    labels = prediction.copy()
    labels[2] = 0
    labels[2, 4:9, 3:7] = 1
    labels[5, 0, :] = 1 - labels[5, 0, :]
    labels[6, 1, 1] = 1  # a negative: saved as empty whatever is painted
    c = Corrections(8, detect_corrected(labels, prediction))
    c.mark(6, "negative")
    c.mark(7, "corrected")
    project = Project(tmp_path / "p")
    project.bind_image("hip", labels.shape)
    project.save_corrections(labels, c, prediction, labels_layer="hip mask")

    again, slices, pred, data = Project(tmp_path / "p").load_corrections()
    assert again == c and sorted(slices) == c.slices() == [2, 5, 6, 7]
    for k in (2, 5, 7):
        np.testing.assert_array_equal(slices[k], labels[k])
    assert not slices[6].any()
    np.testing.assert_array_equal(pred, prediction)
    assert data["labels_layer"] == "hip mask"
    with pytest.raises(ValueError, match="another project folder"):
        Project(tmp_path / "p").bind_image("other", (9, 20, 16))

    c.mark(7, None)  # fewer slices later: the file shrinks with them
    c.detected = []
    c.marks = {}
    project.save_corrections(labels, c)
    again, slices, pred, _ = Project(tmp_path / "p").load_corrections()
    assert slices == {} and again.slices() == [] and pred is not None


# --------------------------------------------------------------------------- fine-tuning


def test_iter_finetune_saves_a_version_and_keeps_the_start_model(tmp_path, phantom, net):
    from napari_roiseg.finetune import iter_finetune

    project = Project(tmp_path / "p")
    project.add_version(net, {"parent": None})
    start = {k: v.clone() for k, v in net.state_dict().items()}
    labels = phantom.labels
    records = []
    gen = iter_finetune(phantom.volume, labels, [2, 4, 6, 9], [7], net,
                        FinetuneConfig(steps=3, batch_size=2, device="cpu", augment=False,
                                       tune_rois=True),
                        negatives=[0], project=project)
    result = drain(gen, records.append)
    assert [r.step for r in records][:1] == [0] and records[0].metrics is not None
    assert records[-1].state == "finished" and result.steps_done == 3
    assert result.version == "v001" == project.current_version
    assert result.parent == "v000" and result.before is not None and result.after is not None
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())  # untouched
    assert _same_weights(project.load_version("v001"), result.model)
    info = project.versions["v001"]
    assert info["train_slices"] == [2, 4, 6, 9] and info["validation_slices"] == [7]
    assert info["negative_slices"] == [0] and info["metrics_before"]["per_slice_mean"]
    # the ROI filter and margin were chosen again on the validation slice, and are the new
    # version's test-time settings
    chosen = info["roi_filter"]
    assert set(chosen) == {"score_threshold", "top_k", "single_object", "test_roi_margin"}
    cfg = project.load_version("v001").config
    assert (cfg.test_score_threshold, cfg.test_top_k, cfg.test_single_object,
            cfg.test_roi_margin) == (chosen["score_threshold"], chosen["top_k"],
                                     chosen["single_object"], chosen["test_roi_margin"])
    h = result.history
    assert h.loss_steps == [1, 2, 3] and h.metric_steps[0] == 0 and h.before is not None


def test_frozen_blocks_keep_their_weights(phantom, net):
    from napari_roiseg.finetune import iter_finetune

    gen = iter_finetune(phantom.volume, phantom.labels, [2, 4, 6], [], net,
                        FinetuneConfig(steps=2, batch_size=2, device="cpu", augment=False,
                                       freeze_blocks=2, lr=1e-2))
    result = drain(gen)
    convs = [m for m in net.backbone.features if isinstance(m, torch.nn.Conv2d)]
    tuned = [m for m in result.model.backbone.features if isinstance(m, torch.nn.Conv2d)]
    for before, after in zip(convs[:4], tuned[:4]):  # conv1_1 .. conv2_2
        assert torch.equal(before.weight, after.weight) and not after.weight.requires_grad
    assert not torch.equal(convs[4].weight, tuned[4].weight)  # conv3_1 trains


def test_stop_keeps_best_and_saves_stopped_version(tmp_path, phantom, net):
    from napari_roiseg.finetune import iter_finetune

    project = Project(tmp_path / "p")
    seen = []
    result = drain(iter_finetune(phantom.volume, phantom.labels, [3, 5], [8], net,
                                  FinetuneConfig(steps=50, batch_size=2, device="cpu"),
                                  should_stop=lambda: len(seen) >= 3, project=project),
                    seen.append)
    assert result.state == "stopped" and 0 < result.steps_done < 50
    assert project.versions[result.version]["state"] == "stopped"


def test_finetune_api_returns_a_usable_model(tmp_path, phantom, net):
    from napari_roiseg.finetune import finetune
    from napari_roiseg.segment import segment_array

    records = []
    new = finetune(phantom.volume, phantom.labels, model=net, steps=2, batch_size=2,
                   device="cpu", project=tmp_path / "p", on_progress=records.append)
    summary = new.finetune_summary
    truth_slices = np.flatnonzero(phantom.labels.any(axis=(1, 2))).tolist()
    used = set(summary["train_slices"]) | set(summary["validation_slices"])
    assert used <= set(truth_slices) and not set(summary["train_slices"]) & set(
        summary["validation_slices"])
    assert summary["validation_slices"] and summary["version"] == "v001"
    assert Project(tmp_path / "p").versions["v000"]["parent"] is None  # the start was saved
    assert records[-1].state == "finished"
    again = finetune(phantom.volume, phantom.labels, steps=1, batch_size=2, device="cpu",
                     validation=[], project=tmp_path / "p")  # model=None: the current version
    assert again.finetune_summary["parent"] == "v001" and again.finetune_summary["version"] == "v002"
    # A model from outside the project is saved as a version first: it is the parent recorded,
    # not the project's current version (v002), whose weights were not the ones trained.
    outside = finetune(phantom.volume, phantom.labels, model=net, steps=1, batch_size=2,
                       device="cpu", validation=[], project=tmp_path / "p")
    versions = Project(tmp_path / "p").versions
    assert outside.finetune_summary["parent"] == "v003" and versions["v003"]["parent"] is None
    assert outside.finetune_summary["version"] == "v004"
    # A version's own file names that version as the parent.
    named = finetune(phantom.volume, phantom.labels, steps=1, batch_size=2, device="cpu",
                     validation=[], project=tmp_path / "p",
                     model=Project(tmp_path / "p").version_path("v001"))
    assert named.finetune_summary["parent"] == "v001" and "v006" not in Project(
        tmp_path / "p").versions
    out = segment_array(phantom.volume[:2], new, device="cpu")
    assert out.labels.shape == (2, 128, 96)
    with pytest.raises(ValueError, match="no training slices"):
        finetune(phantom.volume, np.zeros_like(phantom.labels), model=net, steps=1)


def test_evaluate_wraps_evaluate_masks():
    truth = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :2, :2] = 1
    pred[0, :2, :1] = 1  # tp 2, fn 2
    pred[1, 0, 0] = 1  # fp 1 on an empty slice
    r = evaluate(pred, truth)
    assert r["pooled"]["precision"] == pytest.approx(2 / 3)
    assert r["pooled"]["dice"] == pytest.approx(4 / 7)
    assert r["per_slice_mean"]["dice"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    only = evaluate(pred, truth, slices=[0, 2])
    assert only["n_slices"] == 2 and only["per_slice_mean"]["recall"] == pytest.approx(0.75)


def test_history_and_figure_without_qt():
    from matplotlib.figure import Figure

    from src_model.train import TrainProgress

    # The plot follows pooled dice (what picks the weights), not the per-slice mean.
    m = lambda d: {"pooled": {"dice": d, "precision": d, "recall": d},  # noqa: E731
                   "per_slice_mean": {"dice": 0.0, "precision": 0.0, "recall": 0.0}}
    h = TrainingHistory()
    h.add(TrainProgress(0, 4, {}, 1e-4, 0.0, metrics=m(0.3)))
    h.add(TrainProgress(1, 4, {"a": 1.0, "b": 0.5}, 1e-4, 0.1, best_step=0))
    h.add(TrainProgress(2, 4, {"a": 0.5, "b": 0.5}, 1e-4, 0.2, metrics=m(0.6), best_step=2))
    h.add(TrainProgress(2, 4, {"a": 0.5, "b": 0.5}, 1e-4, 0.2, state="stopped", best_step=2))
    assert h.loss_steps == [1, 2] and h.loss == [1.5, 1.0]
    assert h.metric_steps == [0, 2] and h.dice == [0.3, 0.6] and h.before["dice"] == 0.3
    assert h.best_step == 2 and h.state == "stopped"
    fig = Figure()
    draw_history(fig, h, title="t")
    draw_history(fig, TrainingHistory())  # empty: nothing to draw yet, no error
    assert len(fig.axes) == 2


def test_finetune_api_honours_the_locked_set_and_the_gate(tmp_path, phantom, net, monkeypatch):
    """api.finetune(project=...) with a locked set: the locked slices and their neighbours are
    used neither to train nor to pick the weights, and the new version goes through the gate."""
    import napari_roiseg.finetune as ft
    from napari_roiseg.project.history import CorrectionHistory

    project = Project(tmp_path / "p")
    project.add_version(net, {"parent": None})
    filled = np.flatnonzero(phantom.labels.any(axis=(1, 2))).tolist()
    locked = [filled[len(filled) // 2]]
    CorrectionHistory(project).lock(phantom.volume, phantom.labels, locked)
    seen = {}
    real = ft.iter_finetune

    def spy(image, labels, train, validation=(), *args, **kwargs):
        seen.update(train=list(train), validation=list(validation))
        return real(image, labels, train, validation, *args, **kwargs)

    monkeypatch.setattr(ft, "iter_finetune", spy)
    new = ft.finetune(phantom.volume, phantom.labels, steps=1, batch_size=2, device="cpu",
                      project=tmp_path / "p")
    summary = new.finetune_summary
    near = {k + d for k in locked for d in (-1, 0, 1)}
    assert seen["train"] and not near & (set(seen["train"]) | set(seen["validation"]))
    assert summary["locked_slices"] == locked and summary["version"] == "v001"
    gate = summary["gate"]  # the gate decided, and the project follows its decision
    assert gate is not None and gate["candidate"] == "v001" and gate["current"] == "v000"
    assert CorrectionHistory(project).decisions[-1]["candidate"] == "v001"
    expected = "v001" if gate["accepted"] else "v000"
    assert Project(tmp_path / "p").current_version == expected == summary["current_version"]


def test_finetune_api_rejected_version_stays_out_of_use(tmp_path, phantom, net, monkeypatch):
    import napari_roiseg.project.history as history_module
    from napari_roiseg.finetune import finetune
    from napari_roiseg.project.history import CorrectionHistory

    project = Project(tmp_path / "p")
    project.add_version(net, {"parent": None})
    filled = np.flatnonzero(phantom.labels.any(axis=(1, 2))).tolist()
    CorrectionHistory(project).lock(phantom.volume, phantom.labels, filled[:1])
    dice = iter([0.1, 0.9])  # the gate scores the candidate, then its parent: far lower

    def scored(model, images, truth, device="auto"):
        d = next(dice)
        return {"dice": d, "precision": 0.5, "recall": 0.5, "n": 1, "per_slice_dice": [d]}

    monkeypatch.setattr(history_module, "evaluate_model", scored)
    new = finetune(phantom.volume, phantom.labels, model=net, steps=1, batch_size=2,
                   device="cpu", project=project)
    assert new.finetune_summary["version"] == "v001"
    assert not new.finetune_summary["gate"]["accepted"]
    assert Project(tmp_path / "p").current_version == "v000"  # held back by the gate
    assert "v001" in Project(tmp_path / "p").versions  # but kept


def test_finetune_on_a_large_structure_refits_the_anchors_and_records_them(tmp_path, net):
    from napari_roiseg.finetune import iter_finetune
    from src_model.anchor_fit import adapt_model_anchors as adapt_anchors

    image = np.random.default_rng(0).integers(0, 255, (4, 128, 96), dtype=np.uint8)
    labels = np.zeros_like(image)
    labels[:, 10:118, 8:90] = 1  # ~100 px: far from the fast preset's 16-64 px anchors
    result = drain(iter_finetune(image, labels, [0, 1, 2], [3], net,
                                 FinetuneConfig(steps=1, batch_size=2, device="cpu",
                                                augment=False)))
    sizes = result.model.config.anchor_sizes
    assert result.anchors["refit"] and list(sizes) == result.anchors["anchor_sizes"]
    assert min(sizes) > 64 and len(sizes) == len(net.config.anchor_sizes)
    assert net.config.anchor_sizes == (16, 32, 64)  # the start model is untouched
    assert result.info(FinetuneConfig())["anchors"]["refit"]
    kept, info = adapt_anchors(net, labels, "keep")
    assert kept is net and info is None
    with pytest.raises(ValueError, match="anchors must be"):
        adapt_anchors(net, labels, "sometimes")


def test_finetune_from_the_current_versions_file_with_a_locked_set_is_gated(tmp_path, phantom,
                                                                              net):
    from napari_roiseg.finetune import finetune
    from napari_roiseg.project.history import CorrectionHistory

    project = Project(tmp_path / "p")
    project.add_version(net, {"parent": None})
    filled = np.flatnonzero(phantom.labels.any(axis=(1, 2))).tolist()
    CorrectionHistory(project).lock(phantom.volume, phantom.labels, filled[-1:])
    new = finetune(phantom.volume, phantom.labels, slices=filled[:3],
                   model=project.version_path("v000"), steps=1, batch_size=2, device="cpu",
                   validation=[], project=project)
    summary = new.finetune_summary
    assert summary["parent"] == "v000" and summary["version"] == "v001"
    assert summary["gate"]["candidate"] == "v001" and summary["gate"]["current"] == "v000"
    assert list(Project(tmp_path / "p").versions) == ["v000", "v001"]  # no copy of v000
