"""The training loop, as a generator of progress records.

`train_iter` does forward / backward / step and nothing else: no printing, no GUI, no files. The
caller (CLI, napari worker, test) reads the yielded :class:`TrainProgress` records, decides when to
stop (``generator.close()`` or a ``should_stop`` callable, checked between steps) and writes
checkpoints. The same loop serves single-process training and DistributedDataParallel (see
``src_model.distributed``): it only ever calls ``model(images, targets)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import SizeGroupedSampler, collate_slices, mixed_sizes
from .device import resolve_device
from .distributed import ShardedInfiniteSampler


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    The paper used SGD (momentum 0.9, weight decay 5e-4, lr 1e-5 with Caffe's summed losses, x0.1
    every 50k iterations). Our losses are means, so a larger SGD rate is the equivalent; Adam is the
    default because it converges in the few hundred steps a CPU can afford.
    """

    steps: int = 500
    batch_size: int = 4
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 0  # multiply the rate by lr_gamma every lr_step steps (0: constant)
    lr_gamma: float = 0.1
    max_grad_norm: float = 10.0  # clip; a non-finite norm stops the run
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end (when validation data is given)
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainProgress:
    """One record yielded per optimisation step (and one final record).

    ``state`` is "running" during training and one of "finished", "stopped" or "diverged" on the
    last record. ``metrics`` holds validation metrics (``src_model.metrics.evaluate_masks``) on
    steps where validation ran.
    """

    step: int
    total_steps: int
    losses: dict[str, float]
    lr: float
    seconds: float
    state: str = "running"
    metrics: dict[str, Any] | None = None
    message: str = ""
    best_step: int | None = None
    best_dice: float | None = None


@dataclass
class TrainOutcome:
    """What a finished run leaves: the weights to keep and the history of progress records."""

    state: str
    steps_done: int
    best_step: int | None
    best_metrics: dict[str, Any] | None
    history: list[TrainProgress] = field(default_factory=list)
    batch_size: int | None = None  # slices per step at the end (lowered after out-of-memory)


class TrainingOutOfMemory(RuntimeError):
    """Training ran out of memory even with one slice per step; the message says what to do."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA/MPS out-of-memory error and the CPU allocator's failure."""
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower())


def free_memory(device: torch.device) -> None:
    """Give back what a failed out-of-memory step held (a collection; CUDA's cached blocks)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD as in the paper, or Adam; weight decay on weights only, not on biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use 'adam' or 'sgd'")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def validate(
    model: nn.Module,
    slices: np.ndarray,
    truth: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Segment normalised ``slices`` (S, H, W) float32 and score them against ``truth`` (S, H, W)."""
    from .metrics import evaluate_masks
    from .predict import predict

    net = _unwrap(model)
    was_training = net.training
    try:
        results = predict(net, slices, batch_size=batch_size, device=device, normalize=False)
    finally:
        net.train(was_training)
    pred = np.stack([r["mask"] for r in results]) if results else np.zeros_like(truth)
    return evaluate_masks(pred, truth)


def _sum_losses(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(losses.values(), torch.zeros((), device=next(iter(losses.values())).device))


def train_iter(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sampler: Sampler[int] | None = None,
    device: torch.device | None = None,
) -> Generator[TrainProgress, None, TrainOutcome]:
    """Train ``model`` on ``dataset``, yielding a :class:`TrainProgress` after every step.

    Parameters
    ----------
    model
        Any model of the forward contract (``model(images, targets) -> dict of losses``), or a
        ``DistributedDataParallel`` wrapping one. It is trained in place.
    dataset
        Items ``(Tensor[1, H, W], target)`` as produced by ``src_model.data.SliceDataset``.
    validation
        Optional ``(slices float32 (S, H, W) in [0, 1], truth (S, H, W))``. When given, the weights
        with the best validation dice (pooled over all validation pixels) are restored at the end (also after a stop), so the model
        that leaves this function is the best one seen, and ``metrics`` appear in progress records.
    should_stop
        Called between steps; returning True ends the run cleanly ("stopped").
    sampler
        Override the seeded endless sampler (the distributed runner passes its own).

    The run ends "diverged" when a loss or the gradient norm is not finite; that step's update is
    never applied, so the weights are the last good ones. Closing the generator also leaves the
    model consistent (updates are applied only after all checks).

    Running out of memory in the forward or backward pass (``torch.OutOfMemoryError``, or the CPU
    allocator's "can't allocate memory") discards that step, halves the batch size and carries
    on; the next record's ``message`` says so. With one slice per step already (or a sampler
    given by the caller, whose batches cannot be resized), :class:`TrainingOutOfMemory` is
    raised instead; no update of the failed step was applied.
    """
    device = device or resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device)
    model.train()
    optimizer = make_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, config.lr_gamma)
        if config.lr_step > 0
        else None
    )
    if sampler is None and mixed_sizes(dataset):  # each batch must be of one slice size
        sampler = SizeGroupedSampler(dataset, config.batch_size, config.seed)

    def make_batches(batch_size: int) -> Any:
        return iter(DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler or ShardedInfiniteSampler(len(dataset), batch_size, 0, 1, config.seed),
            collate_fn=collate_slices,
            num_workers=0,
        ))

    batch_size = config.batch_size
    batches = make_batches(batch_size)
    outcome = TrainOutcome("running", 0, None, None, batch_size=batch_size)
    note = ""
    best_state: dict[str, torch.Tensor] | None = None
    best_dice = -math.inf
    t0 = time.perf_counter()

    def evaluate(step: int) -> dict[str, Any] | None:
        nonlocal best_state, best_dice
        if validation is None:
            return None
        metrics = validate(model, validation[0], validation[1], device=device)
        model.train()
        # Pooled dice (all pixels of all validation slices): a mean over slices lets a timid
        # model win, since every empty slice predicted empty scores 1 (docs/ablation_head.json).
        dice = metrics["pooled"]["dice"]
        if dice > best_dice:
            best_dice = dice
            best_state = copy.deepcopy(_unwrap(model).state_dict())
            outcome.best_step, outcome.best_metrics = step, metrics
        return metrics

    def finish(state: str, step: int, losses: dict[str, float], message: str) -> TrainProgress:
        if best_state is not None:
            _unwrap(model).load_state_dict(best_state)
        outcome.state, outcome.steps_done = state, step
        record = TrainProgress(
            step, config.steps, losses, optimizer.param_groups[0]["lr"],
            time.perf_counter() - t0, state, None, message, outcome.best_step,
            None if best_state is None else best_dice,
        )
        outcome.history.append(record)
        return record

    if validation is not None:  # the before-training reference point (step 0)
        record = TrainProgress(0, config.steps, {}, config.lr, 0.0, metrics=evaluate(0))
        outcome.history.append(record)
        yield record

    step, last_losses = 0, {}
    try:
        while step < config.steps:
            if should_stop is not None and should_stop():
                yield finish("stopped", step, last_losses, f"stopped by request after {step} steps")
                return outcome
            images, targets = next(batches)
            try:
                images = images.to(device)
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                losses = model(images, targets)
                total = _sum_losses(losses)
                values = {k: float(v.detach()) for k, v in losses.items()}
                finite = math.isfinite(float(total.detach()))
                if finite:
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
            except Exception as exc:  # noqa: BLE001 -- only out-of-memory is handled here
                if not is_out_of_memory(exc):
                    raise
                optimizer.zero_grad(set_to_none=True)  # nothing of this step is applied
                images = targets = losses = total = None
                free_memory(device)
                if batch_size == 1 or sampler is not None:
                    raise TrainingOutOfMemory(
                        f"training ran out of memory on {device} at step {step + 1} with "
                        f"{batch_size} slice(s) per step ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}). The weights are those "
                        "of the last finished step. Close other programs or use smaller "
                        "images" + (", or fewer slices per step" if batch_size > 1 else "")
                    ) from exc
                note = (f"out of memory with {batch_size} slices per step at step {step + 1}: "
                        f"continuing with {batch_size // 2}")
                batch_size //= 2
                outcome.batch_size = batch_size
                batches = make_batches(batch_size)
                continue
            if not finite:
                yield finish("diverged", step, values,
                             f"loss became non-finite at step {step + 1} ({values}); "
                             "kept the weights of the last good step -- lower the learning rate")
                return outcome
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if not math.isfinite(float(norm)):
                optimizer.zero_grad(set_to_none=True)
                yield finish("diverged", step, values,
                             f"gradient norm became non-finite at step {step + 1}; kept the "
                             "weights of the last good step -- lower the learning rate")
                return outcome
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            last_losses = values
            metrics = None
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                metrics = evaluate(step)
            record = TrainProgress(
                step, config.steps, values, optimizer.param_groups[0]["lr"],
                time.perf_counter() - t0, metrics=metrics, message=note,
                best_step=outcome.best_step, best_dice=None if best_state is None else best_dice,
            )
            note = ""
            outcome.history.append(record)
            yield record
    except GeneratorExit:
        # Closed by the caller between steps: restore the best weights and end quietly.
        finish("stopped", step, last_losses, f"stopped after {step} steps")
        raise
    metrics = evaluate(step)
    final = finish("finished", step, last_losses, f"finished {step} steps")
    final.metrics = metrics
    yield final
    return outcome


def dataset_summary(volume_names: Sequence[str], dataset: Dataset) -> dict[str, Any]:
    """A small JSON-able description of the training data, stored in checkpoint metadata."""
    summary: dict[str, Any] = {"volumes": list(volume_names), "n_slices": len(dataset)}
    for attr in ("n_positive", "n_negative"):
        if hasattr(dataset, attr):
            summary[attr] = int(getattr(dataset, attr))
    return summary
