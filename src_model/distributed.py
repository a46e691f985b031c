"""Multi-process training through PyTorch's own engine (DistributedDataParallel under torchrun).

Nothing here starts processes: ``torchrun`` does, and each process calls :func:`setup`, wraps its
model with :func:`wrap_model` and trains with the ordinary ``train_iter`` using the
:class:`ShardedInfiniteSampler` below. The sampler makes the union of the per-rank batches of a step
exactly the batch a single process with ``world_size`` times the batch size would draw, so one
process and N processes see the same data in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


class ShardedInfiniteSampler(Sampler[int]):
    """Endless seeded permutation, cut into global batches of ``world_size * batch_size`` indices;
    rank ``r`` takes positions ``[r * batch_size, (r + 1) * batch_size)`` of each global batch.

    ``train_iter`` uses it with ``world_size=1`` by default, which is what makes single- and
    multi-process runs with the same seed draw the same slices.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        if n <= 0:
            raise ValueError("the training set is empty: give at least one slice to train on")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.n, self.batch_size, self.rank, self.world_size, self.seed = (
            n, batch_size, rank, world_size, seed)

    def _global_stream(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        stream = self._global_stream()
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            global_batch = [next(stream) for _ in range(self.world_size * self.batch_size)]
            yield from global_batch[lo:hi]


def setup(timeout: timedelta | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment.

    ``timeout`` bounds every collective (torch's default, 30 min for gloo, when None); batch
    inference raises it because its ranks meet only once, at the end.

    Returns ``(rank, world_size, device)``: gloo on CPU, NCCL with one GPU per local rank on CUDA.
    Without torchrun's variables this is a single-process run (rank 0 of 1, no group).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` and wrap it in DDP when a process group is active.

    ``find_unused_parameters`` is needed: a batch whose slices have no object and no proposal above
    the IoU threshold never reaches the segmentation head.
    """
    model.to(device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def teardown() -> None:
    """Leave the process group (safe to call in a single-process run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
