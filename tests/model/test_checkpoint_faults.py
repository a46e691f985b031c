"""Checkpoint faults beyond test_checkpoint.py: files that are not checkpoints, a checkpoint of
another preset/architecture, and a writer killed (SIGKILL) in the middle of an atomic save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from src_model import checkpoint
from src_model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from src_model.model import build_model

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.mark.parametrize("content, what", [
    (b"II*\x00" + bytes(200), "a TIFF image"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
    (b"\x1f\x8b\x08" + bytes(100), "a gzip file"),
    (b"model weights, see README\n" * 5, "a text file"),
    (bytes(range(255, 50, -1)), "neither a zip archive nor a pickle"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, what):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"is not a checkpoint: it is {what}"):
        load_checkpoint(path)


def test_truncated_at_every_tenth(model, tmp_path):
    data = save_checkpoint(tmp_path / "m.pt", model, {}).read_bytes()
    for i in range(1, 10):
        cut = tmp_path / f"cut{i}.pt"
        cut.write_bytes(data[: len(data) * i // 10])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(cut)


def test_checkpoint_of_another_architecture_or_preset(model, tmp_path):
    unet = build_model(tiny_config(arch="unet"))
    path = save_checkpoint(tmp_path / "unet.pt", unet, {})
    with pytest.raises(CheckpointError, match="holds a 'unet' model, but a 'rpn_fcn' model"):
        load_checkpoint(path, expected_arch="rpn_fcn")
    # weights trained with another width (preset) under this config: named shape mismatches
    other = build_model(tiny_config(width_divisor=8))
    payload = torch.load(save_checkpoint(tmp_path / "m.pt", model, {}), weights_only=True)
    payload["state_dict"] = other.state_dict()
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"do not fit its stored config \('fast' preset"
                       r".*shape mismatches.*re-save"):
        load_checkpoint(tmp_path / "mixed.pt")


_WRITER = textwrap.dedent("""
    import sys, time, io
    import torch
    sys.path.insert(0, {tests!r})
    from src_model import checkpoint
    from src_model.model import build_model
    from model.conftest import tiny_config

    torch.manual_seed(0)
    model = build_model(tiny_config())
    checkpoint.save_checkpoint({path!r}, model, {{"version": 1}})
    real_save = torch.save

    def slow_save(obj, f):  # the write of version 2 takes seconds, chunk by chunk
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        print("WRITING", flush=True)
        for i in range(0, len(data), 4096):
            f.write(data[i:i + 4096])
            f.flush()
            time.sleep(0.02)

    checkpoint.torch.save = slow_save
    while True:
        checkpoint.save_checkpoint({path!r}, model, {{"version": 2}})
""")


def test_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    script = _WRITER.format(tests=str(REPO / "tests"), path=str(path))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"WRITING", proc.stderr.read().decode()[-2000:]
        time.sleep(0.3)  # well inside the slowed write
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert partial and partial[0].stat().st_size > 0  # the new version is half written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    loaded, meta = load_checkpoint(path)  # the previous version, whole
    assert meta["version"] == 1
    torch.manual_seed(0)
    reference = build_model(tiny_config())
    for k, v in reference.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # the half-written temporary file is hidden and never taken for a checkpoint
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.pt"]
    assert leftovers and all(p.name.startswith(".model.pt.") and p.name.endswith(".tmp")
                             for p in leftovers)
    assert np.isfinite([float(p.detach().sum()) for p in loaded.parameters()]).all()
    # The next save removes it once it is old enough to belong to a dead writer; a younger
    # temporary file (another process saving right now) is left alone.
    save_checkpoint(path, loaded, {"version": 3})
    assert all(p.exists() for p in leftovers)
    old = time.time() - checkpoint.STALE_TEMP_S - 60
    for p in leftovers:
        os.utime(p, (old, old))
    young = tmp_path / ".model.pt.abcd1234.tmp"
    young.write_bytes(b"in progress")
    save_checkpoint(path, loaded, {"version": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == [young.name, "model.pt"]
    assert load_checkpoint(path)[1]["version"] == 4
