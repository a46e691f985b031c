"""Correction history in the project folder, the locked set and the gated model swap."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_roiseg.project.corrections import plan_slices
from napari_roiseg.project.history import (
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
    plan = locked_plan(corrected, locked)  # what fine-tuning plans with afterwards
    near = {k + d for k in locked for d in (-1, 0, 1)}
    # the locked slices (and neighbours) are neither trained on nor used to pick the weights
    assert not (set(plan.train) | set(plan.validation)) & near
    assert set(locked) <= set(plan.unused)
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


# --------------------------------------------------------------------------- the locked set is
# a true held-out test


def test_locked_plan_keeps_locked_slices_out_of_training_and_validation():
    plan = locked_plan([1, 2, 3, 5, 6, 7, 9, 10], [6])
    assert not {5, 6, 7} & (set(plan.train) | set(plan.validation))
    assert plan.train and plan.validation  # validates on other (unlocked) slices
    assert not {v + d for v in plan.validation for d in (-1, 0, 1)} & set(plan.train)
    explicit = locked_plan([1, 2, 3, 5, 6, 7, 9, 10], [6], validation=[6, 9])
    assert explicit.validation == (9,) and any("locked" in w for w in explicit.warnings)
    # nothing left to validate on: the last weights are kept, and a warning says so
    few = locked_plan([1, 2, 5, 6, 7], [6])
    assert few.validation == () and 6 not in few.train
    assert any("outside the locked set" in w and "last weights" in w for w in few.warnings)
    assert locked_plan([1, 2, 3, 9], []) == plan_slices([1, 2, 3, 9])  # no locked set


# --------------------------------------------------------------------------- several objects,
# one folder (the Fine-tune widget, the Review widget, route_new_version and the API each hold
# their own Project / CorrectionHistory of the same folder)


def test_two_projects_on_one_folder_lose_no_version(tmp_path, untrained_model):
    a = Project(tmp_path / "proj")
    b = Project(tmp_path / "proj")  # opened before a's versions exist
    assert a.add_version(untrained_model(), {"parent": None}) == "v000"
    assert b.add_version(untrained_model(), {"parent": "v000"}) == "v001"  # not v000 again
    assert a.add_version(untrained_model(), {"parent": "v001"}) == "v002"
    b.set_current("v000")  # e.g. the Review widget's gate on its own Project object
    a.bind_image("hip", (12, 128, 96))
    for p in (a, b, Project(tmp_path / "proj")):
        assert list(p.versions) == ["v000", "v001", "v002"]
        assert p.current_version == "v000" and p.state["image"]["name"] == "hip"
    assert sorted(f.name for f in (tmp_path / "proj" / "versions").iterdir()) == [
        "v000.pt", "v001.pt", "v002.pt"]  # no orphaned checkpoint
    assert b.load_version("v002") is not None  # b sees a's version


_COUNTER = """
import sys
from pathlib import Path
from napari_roiseg.project import SharedJson, folder_lock

folder = Path(sys.argv[1])
counter = SharedJson(folder / "counter.json", folder_lock(folder), lambda: {{"n": 0}})
for _ in range({n}):
    counter.update(lambda state: state.update(n=state["n"] + 1))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: one process only on Windows")
def test_processes_sharing_a_folder_lose_no_update(tmp_path):
    # A script in a terminal and an open napari (two processes) on one project folder: every
    # read-modify-write of its JSON is exclusive across processes, so no change is lost.
    n, procs = 150, 3
    script = _COUNTER.format(n=n)
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)]) for _ in range(procs)]
    assert [p.wait(timeout=120) for p in runs] == [0] * procs
    assert json.loads((tmp_path / "counter.json").read_text())["n"] == n * procs


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: one process only on Windows")
def test_the_folder_lock_waits_for_another_process_and_is_reentrant(tmp_path):
    project = Project(tmp_path / "proj")
    script = ("import sys, time\n"
              "from napari_roiseg.project import folder_lock\n"
              "with folder_lock(sys.argv[1]):\n"
              "    print('held', flush=True)\n"
              "    time.sleep(1.5)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(project.folder)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    with project.lock, project.lock:  # re-entrant in one thread: no self-deadlock on the flock
        waited = time.perf_counter() - t0
        project.bind_image("hip", (4, 8, 8))  # takes the lock again inside
    assert holder.wait(timeout=60) == 0
    assert waited > 0.5  # blocked until the other process let go
    assert Project(project.folder).state["image"]["name"] == "hip"
    with project.lock:  # the outermost exit released the flock: taking it again is immediate
        pass


def test_a_version_file_without_an_entry_is_never_overwritten(tmp_path, untrained_model):
    project = Project(tmp_path / "proj")
    project.add_version(untrained_model(), {"parent": None})
    orphan = project.versions_dir / "v001.pt"  # e.g. left by an interrupted run
    orphan.write_bytes(b"keep me")
    assert project.add_version(untrained_model(), {"parent": "v000"}) == "v002"
    assert orphan.read_bytes() == b"keep me"


def test_two_histories_on_one_folder_lose_nothing(tmp_path):
    a = CorrectionHistory(tmp_path / "proj")
    b = CorrectionHistory(tmp_path / "proj")
    ra = a.record(1, _square(5, 5), _square(5, 6))
    rb = b.record(2, _square(5, 5), _square(5, 7))  # b never read a's record
    b.mark(3, "reviewed")
    a.mark(4, "reviewed")
    rc = a.record(5, _square(5, 5), _square(5, 5))
    assert [ra["id"], rb["id"], rc["id"]] == ["c0001", "c0002", "c0003"]
    for h in (a, b, CorrectionHistory(tmp_path / "proj")):
        assert [r["id"] for r in h.records] == ["c0001", "c0002", "c0003"]
        assert h.marks == {1: "corrected", 2: "corrected", 3: "reviewed", 4: "reviewed",
                           5: "corrected"}
    assert np.array_equal(a.load_record("c0002")["correction"], _square(5, 7))  # not overwritten
    assert np.array_equal(b.load_record("c0001")["correction"], _square(5, 6))


def test_record_ids_are_unique_across_threads(tmp_path):
    import threading

    histories = [CorrectionHistory(tmp_path / "proj") for _ in range(4)]
    errors = []

    def work(h, i):
        try:
            for j in range(5):
                h.record(10 * i + j, _square(5, 5), _square(5, 5, w=j + 1))
        except (OSError, ValueError) as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(h, i)) for i, h in enumerate(histories)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = CorrectionHistory(tmp_path / "proj").records
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert len(list((tmp_path / "proj" / "history" / "records").glob("c*.npz"))) == 20
    for r in records:  # each file holds its own record's correction
        assert histories[0].load_record(r["id"])["correction"].sum() == r["correction_area"]


def test_gate_on_stale_objects_keeps_other_writers_changes(versions, untrained_model):
    project, history = versions
    other_project = Project(project.folder)  # the Fine-tune widget's object
    other_history = CorrectionHistory(project.folder)  # the Review widget's object
    assert project.versions and other_history.locked  # both read before the changes below
    name = other_project.add_version(untrained_model(), {"parent": "v000"}, make_current=False)
    other_history.record(3, _square(5, 5), _square(5, 6))
    other_history.mark(4, "reviewed")
    decision = history.gate("v001")  # rejected: v000 stays current
    assert not decision.accepted
    history.mark(7, "reviewed")
    decision = route_new_version(project, "v002")
    assert decision.accepted and project.current_version == "v002"
    fresh = CorrectionHistory(project.folder)
    assert name in Project(project.folder).versions  # the gate's set_current kept it
    assert [r["slice"] for r in fresh.records] == [3]
    assert fresh.marks == {3: "corrected", 4: "reviewed", 7: "reviewed"}
    assert [d["candidate"] for d in fresh.decisions] == ["v001", "v002"]
    assert {"v000", "v001", "v002"} <= set(fresh.state["version_metrics"])
    assert [d["candidate"] for d in other_history.decisions] == ["v001", "v002"]


def test_gate_leaves_a_third_version_made_current_meanwhile(versions, monkeypatch):
    project, history = versions
    other = Project(project.folder)
    real = history.version_metrics

    def slow_metrics(name, *args, **kwargs):  # another writer acts while models are scored
        if name == "v002":
            other.set_current("v001")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(history, "version_metrics", slow_metrics)
    decision = history.gate("v002", "v000")
    assert decision.accepted and project.current_version == "v001"  # not silently replaced
    assert history.decisions[-1]["candidate"] == "v002"
