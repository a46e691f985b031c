"""`torchrun -m napari_roiseg.cli segment ...` with 2 gloo CPU processes: each volume on exactly
one rank, the same labels as one process byte for byte, and one merged summary."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory) -> Path:
    """A seeded untrained fast model whose zero-initialised weights (the score layer's) are made
    random, so its masks vary inside the ROIs instead of being all 0 or all 1: a byte comparison
    that means something. Nothing below asserts what the masks are."""
    import torch

    from src_model.checkpoint import save_checkpoint
    from src_model.config import get_preset
    from src_model.model import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("fast")).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "varied.pt", model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _segment(study: Path, out: Path, ckpt: Path, nproc: int) -> None:
    args = ["segment", str(study), "--out", str(out), "--model", str(ckpt), "--device", "cpu",
            "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for _ in range(3):
        # The free port is released before torchrun binds it: another program may take it in
        # between. Only that (address in use) is tried again, with a new port.
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                  "--master-addr", "127.0.0.1", "--master-port", str(_free_port())
                  ] if nproc > 1 else [sys.executable]
        proc = subprocess.run([*launch, "-m", "napari_roiseg.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_ranks_give_the_labels_of_one_process(tmp_path, varied_checkpoint):
    study = tmp_path / "study"
    study.mkdir()
    for i in range(5):
        data = np.random.default_rng(i).integers(0, 255, (3, 64, 48), dtype=np.uint8)
        tifffile.imwrite(study / f"v{i}.tif", data, photometric="minisblack")
    _segment(study, tmp_path / "one", varied_checkpoint, 1)
    _segment(study, tmp_path / "two", varied_checkpoint, 2)
    names = [f"v{i}" for i in range(5)]
    for i, name in enumerate(names):
        for file in ("labels.tif", "boxes.csv"):
            assert ((tmp_path / "one" / name / file).read_bytes()
                    == (tmp_path / "two" / name / file).read_bytes()), (name, file)
        # Round-robin shards: volume i was made by rank i % 2, and by no other rank.
        assert json.loads((tmp_path / "two" / name / "done.json").read_text())["rank"] == i % 2
    with open(tmp_path / "two" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["output"]).name for r in rows] == names  # each volume once, in input order
    assert all(r["status"] == "ok" for r in rows)
    assert not list((tmp_path / "two").glob(".summary.rank*"))  # merged by rank 0
