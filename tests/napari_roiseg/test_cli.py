"""The `roiseg` console script end to end on a small volume, and its error behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_roiseg.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_generate_train_segment_evaluate_round_trip(tmp_path, capsys):
    data = tmp_path / "vol"
    assert main(["generate", "--seed", "3", "--slices", "6", "--height", "128", "--width", "96",
                 "--out", str(data)]) == 0
    vol = tifffile.imread(data / "volume.tif")
    assert vol.shape == (6, 128, 96) and vol.dtype == np.uint8
    ckpt = tmp_path / "m.pt"
    assert main(["train", str(data), "--steps", "2", "--batch-size", "2", "--quiet",
                 "--out", str(ckpt)]) == 0
    from src_model.checkpoint import load_checkpoint

    _, meta = load_checkpoint(ckpt)
    assert meta["data"]["n_slices"] > 0 and meta["data"]["sources"] == [str(data)]
    assert meta["training"]["steps_done"] == 2 and meta["preset"] == "fast"
    assert {"date", "torch_version", "torchvision_version"} <= set(meta)
    out = tmp_path / "seg"
    assert main(["segment", str(data / "volume.tif"), "--out", str(out), "--model", str(ckpt),
                 "--device", "cpu", "--quiet"]) == 0
    labels = tifffile.imread(out / "labels.tif")
    assert labels.shape == vol.shape
    header = (out / "boxes.csv").read_text().splitlines()[0]
    assert header.replace(" ", "").lower().startswith("slice,y1,x1,y2,x2,score")
    capsys.readouterr()
    # A prediction scored against itself is perfect; against the truth it is whatever it is.
    assert main(["evaluate", "--pred", str(out / "labels.tif"),
                 "--truth", str(out / "labels.tif")]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["per_slice_mean"]["dice"] == 1.0 and same["pooled"]["dice"] == 1.0
    assert main(["evaluate", "--pred", str(out / "labels.tif"),
                 "--truth", str(data / "labels.tif"), "--json-out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"per_slice_mean", "pooled", "per_slice_mean_nonempty"}


def test_errors_are_one_line_and_exit_non_zero(tmp_path):
    bad = tmp_path / "empty.tif"
    bad.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "napari_roiseg.cli", "segment", str(bad),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roiseg: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_rejects_mismatched_shapes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    assert main(["evaluate", "--pred", str(tmp_path / "a.tif"),
                 "--truth", str(tmp_path / "b.tif")]) == 1
    assert "same size" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["generate", "segment", "evaluate", "train", "compare", "demo"])
def test_every_subcommand_has_help(sub):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"])
    assert exc.value.code == 0


def test_train_fits_anchors_to_a_large_structure_unless_told_to_keep(tmp_path):
    data = tmp_path / "big"
    data.mkdir()
    vol = np.random.default_rng(1).integers(0, 255, (6, 128, 96), dtype=np.uint8)
    lab = np.zeros_like(vol)
    lab[:, 12:116, 10:88] = 1  # ~90-100 px: none of the fast preset's 16-64 px anchors fits
    tifffile.imwrite(data / "volume.tif", vol)
    tifffile.imwrite(data / "labels.tif", lab)
    from src_model.checkpoint import load_checkpoint

    for mode, refit in (("auto", True), ("keep", False)):
        ckpt = tmp_path / f"{mode}.pt"
        assert main(["train", str(data), "--steps", "1", "--batch-size", "2", "--quiet",
                     "--anchors", mode, "--out", str(ckpt)]) == 0
        model, meta = load_checkpoint(ckpt)
        sizes = model.config.anchor_sizes
        assert (min(sizes) > 64) is refit and len(sizes) == 3
        assert (meta["anchors"] is not None and meta["anchors"]["refit"]) is refit


def test_train_on_sources_of_two_pixel_sizes_records_the_reference(tmp_path):
    """A phantom v2 sweep (0.198 mm pixels, 264 x 636) and a v1 phantom (0.15 mm, 367 x 192):
    the second is resampled to the first's pixel size, batches keep one size each, and the
    checkpoint records 0.198 mm for inference to resample to."""
    from sample_data.phantom_v2 import draw_style
    from src_model.checkpoint import load_checkpoint

    ckpt = tmp_path / "mixed.pt"
    assert main(["train", "phantom2:1:3", "phantom:3:3", "--steps", "2", "--batch-size", "2",
                 "--quiet", "--out", str(ckpt)]) == 0
    model, meta = load_checkpoint(ckpt)
    assert meta["training"]["steps_done"] == 2
    assert model.config.pixel_spacing_mm == pytest.approx(draw_style(1).spacing_mm)
    assert model.config.frame_height_px is None
