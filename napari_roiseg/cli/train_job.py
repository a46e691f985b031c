"""A whole training job: load volumes, build the datasets, train, write the checkpoint.

Used by ``roiseg train`` (one process) and, unchanged, by ``torchrun -m napari_roiseg.cli.train_job``
(several processes through DistributedDataParallel). Also the engine behind the default model
(``scripts/make_default_model.py``) and the Table 1 comparison. No napari import here.

Data sources are folders holding ``volume.tif`` and ``labels.tif`` (what ``roiseg generate``
writes) or phantom specs ``phantom:SEED`` / ``phantom:SEED:SLICES`` /
``phantom2:SEED[:FRAMES[:LABEL]]`` generated on the fly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LabelledVolume:
    """One training or test volume: ``volume`` (S, H, W) and ``labels`` (S, H, W) uint8;
    ``spacing`` its voxel size (z, y, x) in mm, None when unknown."""

    name: str
    volume: np.ndarray
    labels: np.ndarray
    spacing: Any = None


def load_source(spec: str, shape: tuple[int, int] | None = None) -> LabelledVolume:
    """Load one data source: a folder with volume.tif + labels.tif, ``phantom:SEED[:SLICES]``
    or a phantom v2 sweep ``phantom2:SEED[:FRAMES[:LABEL]]`` (LABEL roof or ilium_roof; its own
    drawn frame size and pixel spacing, overlays burned in)."""
    if spec.startswith("phantom2:"):
        from sample_data.phantom_v2 import make_phantom_v2

        parts = spec.split(":")
        try:
            seed = int(parts[1])
            n_slices = int(parts[2]) if len(parts) > 2 else 24
            label = parts[3] if len(parts) > 3 else "roof"
            ph = make_phantom_v2(seed, n_slices=n_slices, label=label)
        except (IndexError, ValueError) as exc:
            raise ValueError(f"bad phantom v2 spec {spec!r} ({exc}): write "
                             "phantom2:SEED, phantom2:SEED:FRAMES or phantom2:SEED:FRAMES:LABEL")
        return LabelledVolume(spec, ph.volume, ph.labels, ph.spacing)
    if spec.startswith("phantom:"):
        from sample_data.phantom import make_phantom

        parts = spec.split(":")
        try:
            seed = int(parts[1])
            n_slices = int(parts[2]) if len(parts) > 2 else 256
        except (IndexError, ValueError):
            raise ValueError(f"bad phantom spec {spec!r}: write phantom:SEED or phantom:SEED:SLICES")
        kwargs = {"shape": shape} if shape else {}
        ph = make_phantom(seed=seed, n_slices=n_slices, **kwargs)
        return LabelledVolume(spec, ph.volume, ph.labels, ph.spacing)
    from ..io.volumes import read_volume

    folder = Path(spec)
    vol_path, lab_path = folder / "volume.tif", folder / "labels.tif"
    if not folder.is_dir() or not vol_path.exists() or not lab_path.exists():
        raise ValueError(
            f"{spec!r} is not a training folder: it must contain volume.tif and labels.tif "
            "(as written by `roiseg generate`), or use phantom:SEED")
    read = read_volume(vol_path)
    volume = np.asarray(read.data)
    labels = np.asarray(read_volume(lab_path).data)
    if volume.shape != labels.shape:
        raise ValueError(f"{spec}: volume {volume.shape} and labels {labels.shape} differ in shape")
    return LabelledVolume(folder.name, volume, (labels != 0).astype(np.uint8), read.spacing_mm)


def validation_arrays(volumes: Iterable[LabelledVolume], every: int = 1,
                      normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Stack (every ``every``-th) slice of the volumes into slices + truth for validation:
    normalised float32 (what training's validation takes), or with ``normalize=False`` the raw
    slices (what ``segment_array`` takes)."""
    from src_model.preprocess import normalize_slices

    vols = list(volumes)
    prepare = normalize_slices if normalize else (lambda a: a)
    images = np.concatenate([prepare(v.volume[::every]) for v in vols])
    truth = np.concatenate([v.labels[::every] for v in vols])
    return images, truth


def train_model(
    train: Sequence[LabelledVolume] | Any,
    *,
    preset: str = "fast",
    model=None,
    train_config=None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    negatives: str | float = 0.25,
    augment: bool = True,
    on_progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sampler=None,
    device=None,
):
    """Train (or continue training) a model and return ``(model, outcome)``.

    ``train`` is a list of volumes or an already built ``SliceDataset`` (then ``negatives`` and
    ``augment`` are its own). ``model`` None builds a fresh one from ``preset``. Every progress
    record is handed to ``on_progress``; ``should_stop`` is polled between steps.

    Volumes are resampled to the model's resolution reference (``src_model.resolution``; a model
    without one takes the first volume's), and the trained model records the reference it was
    trained at. A ``SliceDataset`` is used as it is.
    """
    import torch

    from src_model.config import get_preset
    from src_model.data import SliceDataset
    from src_model.generators import drain
    from src_model.model import build_model
    from src_model.train import TrainConfig, train_iter

    train_config = train_config or TrainConfig()
    if model is None:
        torch.manual_seed(train_config.seed)
        model = build_model(get_preset(preset))
    if not isinstance(train, SliceDataset):
        train = match_resolution(model, list(train))
    dataset = train if isinstance(train, SliceDataset) else SliceDataset(
        [(v.volume, v.labels) for v in train], negatives=negatives, augment=augment,
        seed=train_config.seed)
    gen = train_iter(model, dataset, train_config, validation=validation,
                     should_stop=should_stop, sampler=sampler, device=device)
    return model, drain(gen, on_progress)


def match_resolution(model: Any, volumes: list[LabelledVolume]) -> list[LabelledVolume]:
    """``volumes`` resampled to ``model``'s resolution reference (its own, or the first volume's
    when it has none), which ``model.config`` then records (``src_model.resolution``)."""
    from src_model.resolution import model_size, resample_pair, training_reference

    config = getattr(model, "config", None)
    if config is None or not volumes or not hasattr(config, "pixel_spacing_mm"):
        return volumes
    config, reference = training_reference(config, volumes[0].volume.shape, volumes[0].spacing)
    out = []
    for v in volumes:
        size = model_size(config, v.volume.shape, v.spacing)
        if size != tuple(v.volume.shape[-2:]):
            vol, lab = resample_pair(v.volume, v.labels, size)
            v = LabelledVolume(v.name, vol, lab, v.spacing)
        out.append(v)
    model.config = model.config.replace(**reference)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roiseg train",
        description="Train an RPN-FCN (or baseline) model on labelled volumes and write a checkpoint.")
    p.add_argument("sources", nargs="+",
                   help="folders with volume.tif + labels.tif, phantom:SEED[:SLICES] or "
                        "phantom2:SEED[:FRAMES[:LABEL]]")
    p.add_argument("--out", required=True, help="checkpoint file to write (atomically)")
    p.add_argument("--preset", default="fast", help="model preset: fast or paper (default fast)")
    p.add_argument("--arch", default=None,
                   help="architecture override: rpn_fcn, fcn32s, fcn_nopool5 or unet")
    p.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=4, help="slices per step (per process)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (adam) / 1e-2 (sgd)")
    p.add_argument("--negatives", default="0.25",
                   help="slices without object to keep: all, none or a fraction (default 0.25)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="override the head's dropout")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any ModelConfig field of a new model, e.g. "
                        "--set anchor_sizes=16,32,64 --set rpn_batch_size_per_image=512")
    p.add_argument("--anchors", default="auto", choices=["auto", "fit", "keep"],
                   help="RPN anchors: fit them to the labelled boxes when the model's own match "
                        "them poorly (auto, default), always (fit) or never (keep); ignored "
                        "when --set anchor_sizes is given")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``roiseg train`` and of ``torchrun -m napari_roiseg.cli.train_job``."""
    import torch

    from src_model import distributed
    from src_model.checkpoint import load_checkpoint, save_checkpoint
    from src_model.config import get_preset
    from src_model.model import build_model
    from src_model.train import TrainConfig, dataset_summary

    args = _parser().parse_args(argv)
    rank, world, device = distributed.setup()
    if args.device != "auto" and world == 1:
        from src_model.device import resolve_device

        device = resolve_device(args.device)
    try:
        negatives: str | float = args.negatives
        if negatives not in ("all", "none"):
            negatives = float(negatives)
        lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 1e-2)
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
                          lr=lr, seed=args.seed)
        volumes = [load_source(s) for s in args.sources]
        if args.init:
            model, meta = load_checkpoint(args.init)
            parent = str(args.init)
        else:
            overrides: dict[str, Any] = {}
            if args.arch:
                overrides["arch"] = args.arch
            if args.dropout is not None:
                overrides["dropout"] = args.dropout
            overrides.update(_parse_overrides(args.set))
            torch.manual_seed(args.seed)  # identical initial weights on every rank
            model = build_model(get_preset(args.preset, **overrides))
            parent = None
        volumes = match_resolution(model, volumes)  # at the model's pixel size, recorded
        anchors = None
        if not any(item.startswith(("anchor_sizes=", "aspect_ratios=")) for item in args.set):
            from src_model.anchor_fit import adapt_model_anchors

            model, anchors = adapt_model_anchors(model, [v.labels for v in volumes], args.anchors)
        net = distributed.wrap_model(model, device)
        from src_model.data import SliceDataset

        # Built once here: its size is needed for the sampler, its summary for the metadata.
        dataset = SliceDataset([(v.volume, v.labels) for v in volumes], negatives=negatives,
                               augment=not args.no_augment, seed=args.seed)
        sampler = None
        if world > 1:
            sampler = distributed.ShardedInfiniteSampler(len(dataset), args.batch_size, rank,
                                                         world, args.seed)
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="train", unit="step",
                   disable=rank != 0 or args.quiet)
        _, outcome = train_model(dataset, model=net, train_config=cfg, sampler=sampler,
                                 device=device, on_progress=lambda r: show_progress(bar, r))
        bar.close()
        if rank == 0:
            meta = {
                "training": {**cfg.to_dict(), "world_size": world, "state": outcome.state,
                             "steps_done": outcome.steps_done},
                "data": {**dataset_summary([v.name for v in volumes], dataset),
                         "sources": list(args.sources), "negatives": args.negatives},
                "parent": parent, "anchors": anchors,
                "final_losses": outcome.history[-1].losses if outcome.history else {},
            }
            save_checkpoint(args.out, model, meta)
            print(f"wrote {args.out} ({outcome.state} after {outcome.steps_done} steps)")
        return 0 if outcome.state in ("finished", "stopped") else 3
    finally:
        distributed.teardown()


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ModelConfig overrides typed like the preset's field."""
    from src_model.config import ModelConfig

    defaults = ModelConfig()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not hasattr(defaults, key):
            raise ValueError(f"--set {item!r}: use KEY=VALUE with a ModelConfig field as KEY")
        current = getattr(defaults, key)
        if isinstance(current, tuple):
            out[key] = tuple(type(current[0])(t) for t in text.split(","))
        elif isinstance(current, bool):
            out[key] = text.lower() in ("1", "true", "yes")
        elif current is None or text.lower() == "none":
            out[key] = None if text.lower() == "none" else float(text)
        else:
            out[key] = type(current)(text)
    return out


def show_progress(bar, record) -> None:
    """Move a tqdm bar to a training record's step and show its losses."""
    bar.n = record.step
    bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in record.losses.items()})


if __name__ == "__main__":
    sys.exit(run())
