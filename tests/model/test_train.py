"""The training loop: loss goes down, stops cleanly, never keeps a bad step, restores the best."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sample_data.phantom import make_phantom
from src_model.checkpoint import load_checkpoint, save_checkpoint
from src_model.config import get_preset
from src_model.data import SliceDataset
from src_model.model import build_model
from src_model.generators import drain
from src_model.train import TrainConfig, train_iter


@pytest.fixture(scope="module")
def volumes():
    out = []
    for seed in (1, 2):
        ph = make_phantom(seed=seed, n_slices=24, shape=(128, 96))
        keep = np.flatnonzero(ph.labels.any(axis=(1, 2)))[::3]  # a few positive slices
        out.append((ph.volume[keep], ph.labels[keep]))
    return out


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_preset("fast", dropout=0.0))


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_short_training_lowers_the_loss(volumes):
    ds = SliceDataset(volumes, negatives="none", augment=False, seed=0)
    cfg = TrainConfig(steps=40, batch_size=2, lr=1e-3, device="cpu")
    records = list(train_iter(_model(), ds, cfg))
    totals = [sum(r.losses.values()) for r in records if r.state == "running"]
    assert len(totals) == 40
    assert np.mean(totals[-8:]) < 0.8 * np.mean(totals[:8])
    assert records[-1].state == "finished"


def test_stopping_mid_run_leaves_a_loadable_checkpoint(volumes, tmp_path):
    ds = SliceDataset(volumes, negatives="none", augment=False, seed=0)
    model = _model()
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    outcome = drain(train_iter(model, ds, TrainConfig(steps=50, batch_size=2, device="cpu"),
                                    should_stop=stop))
    assert outcome.state == "stopped" and outcome.steps_done == 3
    save_checkpoint(tmp_path / "m.pt", model, {"steps": outcome.steps_done})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["steps"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_closing_the_generator_between_steps_is_clean(volumes):
    ds = SliceDataset(volumes, negatives="none", augment=False, seed=0)
    model = _model()
    gen = train_iter(model, ds, TrainConfig(steps=50, batch_size=1, device="cpu"))
    next(gen), next(gen)
    gen.close()
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _PoisonAfter(torch.nn.Module):
    """Wraps a model and returns a NaN loss from the n-th call on."""

    def __init__(self, model, n: int) -> None:
        super().__init__()
        self.module, self.n, self.calls = model, n, 0

    def forward(self, images, targets):
        self.calls += 1
        losses = self.module(images, targets)
        if self.calls >= self.n:
            losses["loss_seg"] = losses["loss_seg"] * float("nan")
        return losses


def test_non_finite_loss_stops_and_keeps_the_last_good_weights(volumes):
    ds = SliceDataset(volumes, negatives="none", augment=False, seed=0)
    cfg = TrainConfig(steps=10, batch_size=1, device="cpu")
    reference = _model()
    drain(train_iter(reference, ds, TrainConfig(steps=2, batch_size=1, device="cpu")))
    poisoned = _PoisonAfter(_model(), n=3)
    outcome = drain(train_iter(poisoned, ds, cfg))
    assert outcome.state == "diverged" and outcome.steps_done == 2
    assert "non-finite" in outcome.history[-1].message
    for k, v in reference.state_dict().items():
        assert torch.equal(v, poisoned.module.state_dict()[k]), k


def test_validation_keeps_the_best_weights_and_reports_metrics(volumes):
    ds = SliceDataset(volumes, negatives="none", augment=False, seed=0)
    val = (volumes[1][0].astype(np.float32) / 255, volumes[1][1])
    model = _model()
    gen = train_iter(model, ds, TrainConfig(steps=4, batch_size=1, eval_every=2, device="cpu"),
                     validation=val)
    records = []
    outcome = drain(gen, records.append)
    with_metrics = [r for r in records if r.metrics]
    assert [r.step for r in with_metrics] == [0, 2, 4]  # before training, mid-run, end
    # Picked by pooled dice: a per-slice mean lets empty slices predicted empty win.
    best = max(with_metrics, key=lambda r: r.metrics["pooled"]["dice"])
    assert outcome.best_step == best.step
    assert records[-1].best_dice == pytest.approx(best.metrics["pooled"]["dice"])
