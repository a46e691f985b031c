"""DistributedDataParallel under torchrun (gloo, 2 CPU processes) matches one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src_model.checkpoint import load_checkpoint
from src_model.distributed import ShardedInfiniteSampler

REPO = Path(__file__).resolve().parents[2]


def test_sharded_sampler_partitions_each_global_batch():
    single = ShardedInfiniteSampler(10, 4, 0, 1, seed=3)
    r0 = ShardedInfiniteSampler(10, 2, 0, 2, seed=3)
    r1 = ShardedInfiniteSampler(10, 2, 1, 2, seed=3)
    s, a, b = iter(single), iter(r0), iter(r1)
    for _ in range(7):  # steps, crossing epoch boundaries
        step = [next(s) for _ in range(4)]
        assert step == [next(a), next(a), next(b), next(b)]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        ShardedInfiniteSampler(0, 1, 0, 1, 0)
    with pytest.raises(ValueError, match="rank"):
        ShardedInfiniteSampler(5, 1, 2, 2, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path: Path, name: str, nproc: int, batch: int) -> Path:
    out = tmp_path / f"{name}.pt"
    args = ["phantom:7:12", "--steps", "4", "--batch-size", str(batch), "--no-augment",
            "--negatives", "none", "--dropout", "0", "--optimizer", "sgd", "--lr", "0.01",
            "--quiet", "--out", str(out),
            # Sample every anchor and every ROI: no RNG in the losses, so one process with a batch
            # of 2 and two processes with 1 each compute the same objectness/box losses.
            "--set", "rpn_batch_size_per_image=100000", "--set", "roi_batch_size_per_image=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "napari_roiseg.cli.train_job", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "napari_roiseg.cli.train_job", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_gloo_processes_match_one_process(tmp_path):
    one = _train(tmp_path, "one", 1, batch=2)
    two = _train(tmp_path, "two", 2, batch=1)
    m1, meta1 = load_checkpoint(one)
    m2, meta2 = load_checkpoint(two)
    assert meta2["training"]["world_size"] == 2 and meta1["training"]["world_size"] == 1
    torch.manual_seed(0)
    from src_model.config import get_preset
    from src_model.model import build_model

    init = build_model(get_preset("fast", dropout=0.0, rpn_batch_size_per_image=100000,
                                  roi_batch_size_per_image=100000)).state_dict()
    s1, s2 = m1.state_dict(), m2.state_dict()
    moved = sum(float((s1[k].float() - init[k].float()).norm() ** 2) for k in s1) ** 0.5
    apart = sum(float((s1[k].float() - s2[k].float()).norm() ** 2) for k in s1) ** 0.5
    # Same data in the same order, all anchors/ROIs used, averaged gradients and the segmentation
    # loss normalised over the global batch: the same training up to float summation order.
    assert moved > 0
    print(f"weights moved {moved:.4g}; 1 vs 2 processes apart {apart:.3g}")
    assert apart < 1e-3 * moved, (apart, moved)
