"""The review report: self-contained HTML and CSV tables with the numbers."""

from __future__ import annotations

import base64
import csv

import numpy as np

from napari_roiseg.project.history import CorrectionHistory
from napari_roiseg.project import Project
from napari_roiseg.project.report import export_report
from napari_roiseg.review import score_slices, stats_from_layers


def _history(folder) -> CorrectionHistory:
    """Versions and gate decisions written as the gate writes them (no model needed)."""
    project = Project(folder)
    project._update(lambda state: state.update(
        versions={"v000": {"name": "v000", "parent": None, "created": "t0"},
                  "v001": {"name": "v001", "parent": "v000", "created": "t1"}},
        current_version="v000"))
    history = CorrectionHistory(project)
    pred = np.zeros((20, 20), np.uint8)
    pred[5:15, 5:15] = 1
    fix = pred.copy()
    fix[5:15, 10:15] = 0
    history.record(3, pred, fix, version="v000", who="dr a")
    history.mark(7, "reviewed")
    history._update(lambda state: state.update(
        version_metrics={"v000": {"dice": 0.8125, "precision": 0.75, "recall": 0.9, "n": 2},
                         "v001": {"dice": 0.6875, "precision": 0.5, "recall": 0.95, "n": 2}},
        gate=[{"candidate": "v001", "current": "v000", "passed": False, "accepted": True,
               "override": {"who": "dr b", "when": "t2", "why": "better on the roof"}}]))
    return history


def test_report_has_the_numbers(tmp_path):
    history = _history(tmp_path / "proj")
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 5:15, 5:15] = 1
    labels[5] = 0  # a gap in the run: tops the queue
    scores = score_slices(stats_from_layers(labels))
    paths = export_report(tmp_path / "out", scores=scores, history=history, name="hip <1>")
    assert set(paths) == {"html", "slices", "corrections", "versions"}
    page = paths["html"].read_text()
    assert "Review of hip &lt;1&gt;" in page and "<script" not in page
    png = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("data:image/png;base64,") == 2  # queue plot + versions plot
    assert "0.667" in page and "0.812" in page and "better on the roof" in page

    slices = list(csv.DictReader(paths["slices"].open()))
    assert len(slices) == 10
    top = min(slices, key=lambda r: int(r["rank"]))
    assert top["slice"] == "5" and top["reason"] in ("area_jump", "presence")
    by_slice = {int(r["slice"]): r for r in slices}
    assert by_slice[3]["mark"] == "corrected" and by_slice[3]["corrected_dice"] == "0.6667"
    assert by_slice[7]["mark"] == "reviewed"
    corrections = list(csv.DictReader(paths["corrections"].open()))
    assert [(r["slice"], r["who"], r["dice"]) for r in corrections] == [("3", "dr a", "0.6667")]
    versions = list(csv.DictReader(paths["versions"].open()))
    assert [(r["version"], r["locked_dice"], r["gate"]) for r in versions] == [
        ("v000", "0.8125", ""), ("v001", "0.6875", "overridden")]
    assert versions[1]["override_why"] == "better on the roof" and versions[0]["current"] == "yes"


def test_report_without_queue_or_history(tmp_path):
    paths = export_report(tmp_path / "bare")
    page = paths["html"].read_text()
    assert "Review of volume" in page and "data:image/png" not in page
    assert paths["slices"].read_text().startswith("slice,rank,score")


def test_api_export_and_cli(tmp_path):
    from napari_roiseg.api import export_review_report
    from napari_roiseg.cli import main

    history = _history(tmp_path / "proj")
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 4:12, 4:12] = 1
    paths = export_review_report(tmp_path / "api", history.project.folder, labels, name="hip")
    assert "0.6875" in paths["versions"].read_text()

    import tifffile

    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["report", str(history.project.folder), "--labels", str(tmp_path / "labels.tif"),
                 "--out", str(tmp_path / "cli")]) == 0
    assert "dr a" in (tmp_path / "cli" / "review_corrections.csv").read_text()
    assert len((tmp_path / "cli" / "review_slices.csv").read_text().splitlines()) == 7
