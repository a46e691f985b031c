"""Correction history in the project folder, the locked set and the gated model swap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_roiseg.corrections import plan_slices
from napari_roiseg.history import (
    CorrectionHistory,
    locked_plan,
    locked_slices,
    mask_scores,
    route_new_version,
)
from napari_roiseg.project import Project


def _square(y: int, x: int, h: int = 10, w: int = 10) -> np.ndarray:
    m = np.zeros((40, 30), np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def test_records_round_trip_with_dice(tmp_path):
    history = CorrectionHistory(tmp_path / "proj")
    boxes = np.array([[4, 5, 5, 15, 15, 0.9]], np.float32)
    a = history.record(4, _square(5, 5), _square(5, 5, w=5), boxes, version="v000", who="dr a")
    b = history.record(9, np.zeros((40, 30)), np.zeros((40, 30)), version="v001")
    c = history.record(4, _square(5, 5), _square(20, 15), who="dr b")  # redone later
    assert a["dice"] == pytest.approx(2 * 50 / (100 + 50)) and a["precision"] == 0.5
    assert a["recall"] == 1.0 and b["dice"] == 1.0 and c["dice"] == 0.0  # both empty: 1.0

    again = CorrectionHistory(tmp_path / "proj")  # another session
    assert [r["id"] for r in again.records] == ["c0001", "c0002", "c0003"]
    assert again.records[0]["who"] == "dr a" and again.records[0]["version"] == "v000"
    assert again.records[0]["when"].endswith("+00:00")
    saved = again.load_record("c0001")
    assert np.array_equal(saved["prediction"], _square(5, 5))
    assert np.array_equal(saved["correction"], _square(5, 5, w=5))
    assert np.array_equal(saved["boxes"], boxes)
    assert again.latest_by_slice()[4]["id"] == "c0003"
    assert again.marks == {4: "corrected", 9: "corrected"}
    # written atomically: no temporary files are left behind
    assert not list((tmp_path / "proj" / "history").rglob("*.tmp"))


def test_review_marks_persist_and_are_checked(tmp_path):
    history = CorrectionHistory(tmp_path / "p")
    history.mark(3, "reviewed")
    history.mark(5, "reviewed")
    history.mark(5, None)
    assert CorrectionHistory(tmp_path / "p").marks == {3: "reviewed"}
    with pytest.raises(ValueError, match="unknown review mark"):
        history.mark(2, "fine")
    with pytest.raises(ValueError, match="same shape"):
        history.record(1, np.zeros((4, 4)), np.zeros((4, 5)))


def test_lock_freezes_the_held_out_slices(tmp_path, phantom):
    history = CorrectionHistory(tmp_path / "p")
    corrected = [2, 3, 4, 6, 7, 9, 10]
    locked = history.lock(phantom.volume, phantom.labels, corrected=corrected)
    assert locked == list(plan_slices(corrected).validation) and locked
    images, truth = history.locked_data()
    assert images.dtype == np.float32 and images.max() <= 1 and len(images) == len(locked)
    assert np.array_equal(truth, (phantom.labels[locked] != 0).astype(np.uint8))
    assert locked_slices(history.project) == locked
    plan = locked_plan(corrected, locked)  # what the Fine-tune widget trains on afterwards
    assert plan.validation == tuple(locked)
    assert not set(plan.train) & {k + d for k in locked for d in (-1, 0, 1)}
    with pytest.raises(ValueError, match="correct at least 3 slices"):
        CorrectionHistory(tmp_path / "q").lock(phantom.volume, phantom.labels, corrected=[2])


@pytest.fixture
def versions(tmp_path, phantom, untrained_model):
    """A project with v000 (paints inside its ROIs), v001 (paints nothing), v002 (= v000) and a
    locked set whose reference is v000's own output, so the dice values are exact."""
    torch = pytest.importorskip("torch")
    from napari_roiseg.segment import segment_array

    good = untrained_model()
    blank = untrained_model()
    with torch.no_grad():
        blank.head.score.bias[:] = torch.tensor([5.0, -5.0])
    project = Project(tmp_path / "proj")
    project.add_version(good, {"parent": None})
    project.add_version(blank, {"parent": "v000"}, make_current=False)
    project.add_version(untrained_model(), {"parent": "v000"}, make_current=False)
    reference = segment_array(phantom.volume, good, device="cpu", batch_size=4).labels
    filled = [k for k in range(len(reference)) if reference[k].any()]
    history = CorrectionHistory(project)
    history.lock(phantom.volume, reference, filled[:3])
    return project, history


def test_gate_rejects_accepts_and_records_overrides(versions):
    project, history = versions
    rejected = history.gate("v001", tolerance=0.02)
    assert not rejected.passed and not rejected.accepted
    assert rejected.candidate_dice == 0.0 and rejected.current_dice == 1.0
    assert project.current_version == "v000"
    assert "rejected" in rejected.describe()

    accepted = history.gate("v002")
    assert accepted.passed and accepted.accepted and accepted.delta == 0.0
    assert project.current_version == "v002"

    with pytest.raises(ValueError, match="needs a reason"):
        history.gate("v001", override="  ")
    forced = history.gate("v001", override="v002 misses the lateral edge", who="dr c")
    assert not forced.passed and forced.accepted and forced.current == "v002"
    assert forced.override["who"] == "dr c" and forced.override["why"].startswith("v002 misses")
    assert project.current_version == "v001" == Project(project.folder).current_version

    log = json.loads((project.folder / "history" / "history.json").read_text())["gate"]
    assert [(d["candidate"], d["passed"], d["accepted"]) for d in log] == [
        ("v001", False, False), ("v002", True, True), ("v001", False, True)]
    assert log[2]["override"]["who"] == "dr c"
    assert set(CorrectionHistory(project).state["version_metrics"]) == {"v000", "v001", "v002"}


def test_new_versions_route_through_the_gate(versions, tmp_path):
    project, history = versions
    project.set_current("v001")  # as Project.add_version leaves a new version
    decision = route_new_version(project, "v001")
    assert decision is not None and not decision.accepted and decision.current == "v000"
    assert project.current_version == "v000"  # held back: its parent is current again
    assert route_new_version(Project(tmp_path / "unlocked"), "v000") is None  # no locked set


def test_mask_scores_counts_empty_slices_as_agreement():
    assert mask_scores(np.zeros((3, 3)), np.zeros((3, 3)))["dice"] == 1.0
    assert mask_scores(np.ones((3, 3)), np.zeros((3, 3)))["dice"] == 0.0
