"""`roiseg segment` over many volumes: layout, summary, bad files, resume after SIGKILL, api.

The model is a seeded untrained one saved here, so nothing depends on the shipped weights.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_roiseg.batch_record import SUMMARY_COLUMNS, done_row
from napari_roiseg.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_volumes(folder: Path, n: int, slices: int = 2, shape=(48, 48)) -> list[Path]:
    """``n`` small random uint8 TIFF stacks ``v0.tif``..., different per index."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        data = np.random.default_rng(i).integers(0, 255, (slices, *shape), dtype=np.uint8)
        tifffile.imwrite(folder / f"v{i}.tif", data, photometric="minisblack")
        paths.append(folder / f"v{i}.tif")
    return paths


def read_summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def segment(*args: object) -> int:
    return main(["segment", *map(str, args), "--device", "cpu", "--quiet"])


def test_several_inputs_get_a_folder_each_and_one_summary(tmp_path, untrained_checkpoint):
    a, b = write_volumes(tmp_path / "in", 2, slices=3)
    frames = tmp_path / "in" / "sweep"
    frames.mkdir()
    for k in range(2):
        tifffile.imwrite(frames / f"f{k}.tif", np.full((40, 40), 50 * k, np.uint8))
    out = tmp_path / "out"
    assert segment(a, b, frames, "--out", out, "--model", untrained_checkpoint) == 0
    rows = read_summary(out)
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [r["source"] for r in rows] == [str(a), str(b), str(frames)]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [r["slices"] for r in rows] == ["3", "3", "2"]
    for name, shape in (("v0", (3, 48, 48)), ("v1", (3, 48, 48)), ("sweep", (2, 40, 40))):
        assert tifffile.imread(out / name / "labels.tif").shape == shape
        boxes = (out / name / "boxes.csv").read_text().splitlines()
        assert boxes[0] == "slice,y1,x1,y2,x2,score"
        assert json.loads((out / name / "done.json").read_text())["shape"] == list(shape)
    assert not (out / "labels.tif").exists()  # the one-volume layout is for one input only


def test_two_corrupt_files_among_ten_are_error_rows_and_the_rest_is_done(
        tmp_path, untrained_checkpoint, capsys):
    paths = write_volumes(tmp_path / "study", 10)
    paths[3].write_bytes(paths[3].read_bytes()[:300])  # truncated
    paths[7].write_text("this is not an image")  # wrong content under a .tif name
    out = tmp_path / "out"
    # The exit status counts the failed volumes.
    assert segment(tmp_path / "study", "--out", out, "--model", untrained_checkpoint) == 2
    rows = read_summary(out)
    assert [r["status"] for r in rows] == ["error" if i in (3, 7) else "ok" for i in range(10)]
    for i in (3, 7):
        reason = rows[i]["error"]
        assert "v%d.tif" % i in reason and "\n" not in reason and len(reason) > 20
        assert not (out / f"v{i}" / "done.json").exists()
    assert all((out / f"v{i}" / "done.json").exists() for i in range(10) if i not in (3, 7))
    assert "8 segmented, 0 reused (--resume), 2 failed" in capsys.readouterr().out


KILL_AFTER_OUTPUTS = textwrap.dedent("""
    # Segment the volumes; at the 6th volume die by SIGKILL after its labels.tif and boxes.csv
    # are written and before its done-record: the worst moment for --resume.
    import os, signal, sys
    import napari_roiseg.batch as batch
    calls = []
    def write_done(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    real, batch.write_done = batch.write_done, write_done
    from napari_roiseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_resume_after_sigkill_keeps_finished_volumes(tmp_path, untrained_checkpoint):
    write_volumes(tmp_path / "study", 8)
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "study"), "--out", str(out),
            "--model", str(untrained_checkpoint), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_OUTPUTS, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    finished = {f"v{i}": (out / f"v{i}" / "done.json").stat().st_mtime_ns for i in range(5)}
    labels = {n: (out / n / "labels.tif").stat().st_mtime_ns for n in finished}
    assert (out / "v5" / "labels.tif").exists() and not (out / "v5" / "done.json").exists()
    assert len(read_summary(out)) == 5  # the summary of the killed run holds what finished
    stale = out / "v5" / ".labels.tif.0123abcd.tmp"  # what a kill during the labels write leaves
    stale.write_bytes(b"half")
    again = ["--out", out, "--model", untrained_checkpoint, "--resume"]
    assert segment(tmp_path / "study", *again) == 0
    rows = read_summary(out)
    assert [r["status"] for r in rows] == ["reused"] * 5 + ["ok"] * 3
    assert all(r["slices"] == "2" for r in rows) and not stale.exists()
    for name, stamp in finished.items():  # not redone
        assert (out / name / "done.json").stat().st_mtime_ns == stamp
        assert (out / name / "labels.tif").stat().st_mtime_ns == labels[name]


def test_a_done_record_does_not_vouch_for_changed_outputs_or_source(
        tmp_path, untrained_checkpoint):
    (src,) = write_volumes(tmp_path / "in", 1)
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "*.tif")
    assert segment(pattern, "--out", out, "--model", untrained_checkpoint) == 0
    folder = out / "v0"
    assert done_row(folder, str(src))["status"] == "ok"
    labels = (folder / "labels.tif").read_bytes()
    (folder / "labels.tif").write_bytes(labels[:-100])  # half-written labels
    assert done_row(folder, str(src)) is None
    (folder / "labels.tif").write_bytes(labels)
    assert done_row(folder, str(src)) is not None
    os.utime(src, ns=(0, 0))  # the source changed since
    assert done_row(folder, str(src)) is None


def test_api_segment_volumes_matches_the_command(tmp_path, untrained_checkpoint):
    from napari_roiseg.api import segment_volumes

    write_volumes(tmp_path / "in", 2)
    pattern = str(tmp_path / "in" / "*.tif")
    result = segment_volumes(pattern, tmp_path / "api", model=untrained_checkpoint,
                             device="cpu", progress=False)
    assert result.failed == 0 and [r["status"] for r in result.rows] == ["ok", "ok"]
    assert segment(pattern, "--out", tmp_path / "cli", "--model", untrained_checkpoint) == 0
    for name in ("v0", "v1"):
        assert ((tmp_path / "api" / name / "labels.tif").read_bytes()
                == (tmp_path / "cli" / name / "labels.tif").read_bytes())
    # Resume with the same folders spelled differently: the same volumes, reused.
    again = segment_volumes(tmp_path / "in", tmp_path / "in" / ".." / "api",
                            model=untrained_checkpoint, device="cpu", resume=True, progress=False)
    assert [r["status"] for r in again.rows] == ["reused", "reused"]
    assert again.rows[0]["source"] == str(tmp_path / "in" / "v0.tif")


def test_a_bad_model_stops_the_batch_before_any_output(tmp_path, capsys):
    write_volumes(tmp_path / "in", 2)
    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    assert segment(tmp_path / "in", "--out", tmp_path / "out", "--model", bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roiseg: error:") and "model.pt" in err[0]
    assert not (tmp_path / "out").exists()
