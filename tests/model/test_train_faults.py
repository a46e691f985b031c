"""Training faults: exploding (non-finite) gradients, out-of-memory, stopping at any point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_model.config import get_preset
from src_model.data import SliceDataset
from src_model.generators import drain
from src_model.model import build_model
from src_model.train import TrainConfig, TrainingOutOfMemory, is_out_of_memory, train_iter


@pytest.fixture(scope="module")
def dataset():
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=1, n_slices=16, shape=(96, 64))
    keep = np.flatnonzero(ph.labels.any(axis=(1, 2)))[:4]
    return SliceDataset([(ph.volume[keep], ph.labels[keep])], negatives="none", augment=False)


def _model():
    torch.manual_seed(0)
    return build_model(get_preset("fast", dropout=0.0))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_exploding_gradient_stops_and_keeps_the_last_good_weights(dataset):
    model = _model()
    calls = {"n": 0}
    weight = model.head.fc7.weight if hasattr(model.head, "fc7") else next(model.parameters())

    def explode(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] >= 3 else grad

    weight.register_hook(explode)
    records = []
    gen = train_iter(model, dataset, TrainConfig(steps=10, batch_size=1, device="cpu"))
    snapshots = []
    for record in gen:
        records.append(record)
        snapshots.append(_state(model))
    outcome = records[-1]
    assert outcome.state == "diverged" and outcome.step == 2
    assert "gradient norm became non-finite at step 3" in outcome.message
    assert _same(snapshots[-2], _state(model))  # the weights after step 2, untouched
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _OomOnce(torch.nn.Module):
    """Raises an out-of-memory error when a batch has more than ``limit`` images."""

    def __init__(self, model, limit: int, error) -> None:
        super().__init__()
        self.module, self.limit, self.error, self.sizes = model, limit, error, []

    def forward(self, images, targets):
        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise self.error
        return self.module(images, targets)


CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                       "allocate memory: you tried to allocate 9663676416 bytes.")
CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("error", [CPU_OOM, CUDA_OOM], ids=["cpu", "cuda"])
def test_out_of_memory_halves_the_batch_and_carries_on(dataset, error):
    wrapped = _OomOnce(_model(), limit=1, error=error)
    records = []
    outcome = drain(train_iter(wrapped, dataset, TrainConfig(steps=3, batch_size=4,
                                                             device="cpu")), records.append)
    assert outcome.state == "finished" and outcome.steps_done == 3 and outcome.batch_size == 1
    assert wrapped.sizes[:3] == [4, 2, 1] and set(wrapped.sizes[3:]) == {1}
    assert "out of memory with 2 slices per step at step 1: continuing with 1" in (
        records[0].message)
    assert all(torch.isfinite(p).all() for p in wrapped.parameters())


def test_out_of_memory_with_one_slice_tells_the_user(dataset):
    wrapped = _OomOnce(_model(), limit=0, error=CPU_OOM)
    before = _state(wrapped.module)
    with pytest.raises(TrainingOutOfMemory, match=r"ran out of memory on cpu at step 1 with 1 "
                       r"slice\(s\) per step.*Close other programs or use smaller images"):
        drain(train_iter(wrapped, dataset, TrainConfig(steps=3, batch_size=2, device="cpu")))
    assert _same(before, _state(wrapped.module))


def test_other_errors_are_not_taken_for_out_of_memory(dataset):
    assert is_out_of_memory(CPU_OOM) and is_out_of_memory(CUDA_OOM)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape"))
    wrapped = _OomOnce(_model(), limit=0, error=RuntimeError("size mismatch"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        drain(train_iter(wrapped, dataset, TrainConfig(steps=2, batch_size=2, device="cpu")))
    assert wrapped.sizes == [2]


@pytest.mark.parametrize("stop_at", [0, 1, 2])
def test_stop_at_any_step_leaves_a_consistent_project(dataset, tmp_path, stop_at):
    """finetune's generator stopped after k steps: a version exists iff steps were made, the
    project index matches the files, and the version loads with the weights that were kept."""
    from napari_roiseg.finetune import FinetuneConfig, Project, iter_finetune
    from src_model.checkpoint import load_checkpoint

    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=1, n_slices=8, shape=(96, 64))
    project = Project(tmp_path / "p")
    base = _model().eval()
    project.add_version(base, {"parent": None})
    checks = {"n": 0}

    def should_stop() -> bool:
        checks["n"] += 1
        return checks["n"] > stop_at

    labels = ph.labels.copy()
    result = drain(iter_finetune(ph.volume, labels, [2, 3, 4], [], base,
                                 FinetuneConfig(steps=5, batch_size=1, augment=False,
                                                device="cpu"),
                                 should_stop=should_stop, project=project))
    assert result.state == "stopped" and result.steps_done == stop_at
    assert np.array_equal(labels, ph.labels)  # the caller's arrays are not touched
    reopened = Project(tmp_path / "p")
    files = sorted(p.stem for p in (tmp_path / "p" / "versions").glob("*.pt"))
    assert sorted(reopened.versions) == files
    assert not [p for p in (tmp_path / "p").rglob("*.tmp")]
    if stop_at == 0:
        assert result.version is None and reopened.current_version == "v000"
    else:
        assert result.version == reopened.current_version == "v001"
        loaded, meta = load_checkpoint(reopened.version_path("v001"))
        assert meta["model_version"]["steps_done"] == stop_at
        assert _same(result.model.state_dict(), loaded.state_dict())
    assert _same(base.state_dict(), reopened.load_version("v000").state_dict())
