"""Fine-tuning on corrected slices: the training generator, its plot, and the script API.

The engine of the Fine-tune dock widget and of ``api.finetune`` / ``api.evaluate``; no napari or
Qt here, and torch is imported only inside the functions that train or load a model.

* :func:`iter_finetune`: ``src_model.train.train_iter`` on the corrected slices of one volume,
  yielding its progress records; saves a new version when a :class:`~.project.Project` is given.
* :class:`TrainingHistory` collects what the live plot shows; :func:`draw_history` draws it on any
  matplotlib Figure (the widget's canvas, a PNG).
* :func:`finetune` and :func:`evaluate`: the same for scripts and the napari console.

Corrections and slice plans live in :mod:`.corrections`, the project folder in :mod:`.project`;
their names are re-exported here.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from src_model.generators import drain

from .project.corrections import (
    MARKS,
    Corrections,
    SlicePlan,
    detect_corrected,
    format_slices,
    parse_slices,
    plan_slices,
)
from .layers import resolve_spacing
from .project.project import Project, default_project_folder, metrics_summary

if TYPE_CHECKING:
    from torch import nn

    from src_model.train import TrainProgress

__all__ = [
    "MARKS", "Corrections", "FinetuneConfig", "FinetuneResult", "Project", "SlicePlan",
    "TrainingHistory", "check_labels_shape", "default_project_folder", "detect_corrected",
    "drain", "draw_history", "evaluate", "finetune", "format_slices", "iter_finetune",
    "parse_slices", "plan_slices",
]


# Few-shot defaults shared by the API, the Fine-tune dock and FinetuneConfig (how they were
# chosen: README, "Few-shot fine-tuning defaults"; scripts/cross_domain_check.py).
DEFAULT_STEPS = 150
DEFAULT_LR = 1e-3
DEFAULT_FREEZE_BLOCKS = 2  # conv1_x, conv2_x: 15-25 % faster steps at 384 x 512 (README)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings. ``epochs`` (when set) overrides ``steps``: one epoch is one pass over
    the training slices. ``eval_every`` 0 validates about 20 times per run. ``anchors``: "auto"
    refits the RPN anchors to the training slices' boxes when the model's own match them poorly
    (``src_model.anchor_fit.adapt_model_anchors``), "fit" always, "keep" never. ``tune_rois``
    (off by default, see ``finetune``): after training, pick the RPN-FCN test-time ROI filter
    and margin on the validation slices by pooled dice (``cli.compare.tune_test_time``).
    ``freeze_blocks``: the first N VGG16 blocks keep their weights (faster steps)."""

    steps: int = DEFAULT_STEPS
    epochs: float | None = None
    lr: float = DEFAULT_LR
    batch_size: int = 4
    augment: bool = True
    eval_every: int = 0
    seed: int = 0
    device: str = "auto"
    anchors: str = "auto"
    tune_rois: bool = False
    freeze_blocks: int = DEFAULT_FREEZE_BLOCKS

    def total_steps(self, n_train: int) -> int:
        if self.epochs is not None:
            per_epoch = math.ceil(n_train / max(1, min(self.batch_size, n_train)))
            return max(1, math.ceil(self.epochs * per_epoch))
        return max(1, int(self.steps))


@dataclass
class TrainingHistory:
    """What the live plot shows, collected from ``TrainProgress`` records (GUI-free)."""

    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    metric_steps: list[int] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    before: dict[str, float] | None = None
    best_step: int | None = None
    total_steps: int = 0
    state: str = "idle"

    def add(self, record: TrainProgress) -> None:
        self.total_steps = record.total_steps
        self.state = record.state
        if record.best_step is not None:
            self.best_step = record.best_step
        if record.losses and record.state == "running":
            self.loss_steps.append(record.step)
            self.loss.append(float(sum(record.losses.values())))
        if record.metrics:
            m = record.metrics["pooled"]  # what the weights are picked by (src_model.train)
            if record.step == 0 and self.before is None:
                self.before = {k: float(m[k]) for k in ("dice", "precision", "recall")}
            if self.metric_steps and self.metric_steps[-1] == record.step:
                return  # the final record repeats the last periodic evaluation
            self.metric_steps.append(record.step)
            for k in ("dice", "precision", "recall"):
                getattr(self, k).append(float(m[k]))


_COLOURS = {"dice": "tab:blue", "precision": "tab:orange", "recall": "tab:green"}


def draw_history(figure: Any, history: TrainingHistory, title: str | None = None) -> dict:
    """Draw ``history`` on a matplotlib ``Figure``: loss on top; validation dice, precision and
    recall (per-slice mean) below, with their before-training values dashed and the best step
    dotted. Imports matplotlib only here. Returns the artists a live view updates in place
    (``loss``, ``dice`` / ``precision`` / ``recall``, ``best``: None without a best step)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure.clear()
    ax_loss, ax_m = figure.subplots(2, 1, sharex=True)
    [loss] = ax_loss.plot(history.loss_steps, history.loss, color="0.25", lw=1)
    artists: dict[str, Any] = {"loss": loss, "best": None}
    ax_loss.set_ylabel("loss")
    if title:
        ax_loss.set_title(title, fontsize=9)
    for name, colour in _COLOURS.items():
        [artists[name]] = ax_m.plot(history.metric_steps, getattr(history, name), "o-",
                                    color=colour, ms=3, lw=1.2, label=name)
        if history.before is not None:
            ax_m.axhline(history.before[name], color=colour, ls="--", lw=0.8, alpha=0.7)
    if history.best_step is not None and history.metric_steps:
        artists["best"] = ax_m.axvline(history.best_step, color="0.5", ls=":", lw=0.8)
    ax_m.set_ylim(-0.02, 1.02)
    ax_m.set_xlim(0, max(1, history.total_steps))
    ax_m.set_xlabel("step")
    ax_m.set_ylabel("validation")
    handles, names = ax_m.get_legend_handles_labels()
    if history.before is not None:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=0.8))
        names.append("before")
    ax_m.legend(handles, names, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                ncol=4, frameon=False, borderaxespad=0.1)
    ax_m.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_m):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return artists


@dataclass
class FinetuneResult:
    """A finished (or stopped) fine-tuning run. ``before`` / ``after``: validation metrics
    (``evaluate_masks``) of the starting model and of the kept weights; ``version``: the saved
    version's name (None without a project, or when nothing was trained)."""

    model: Any
    state: str
    steps_done: int
    train: tuple[int, ...]
    validation: tuple[int, ...]
    negatives: tuple[int, ...]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    history: TrainingHistory
    message: str
    seconds: float
    parent: str | None = None
    version: str | None = None
    anchors: dict[str, Any] | None = None
    roi_filter: dict[str, Any] | None = None

    def info(self, config: FinetuneConfig) -> dict[str, Any]:
        """Plain-data description stored with the version."""
        return {"parent": self.parent, "state": self.state, "steps_done": self.steps_done,
                "anchors": self.anchors, "roi_filter": self.roi_filter,
                "train_slices": list(self.train), "validation_slices": list(self.validation),
                "negative_slices": list(self.negatives), "seconds": round(self.seconds, 2),
                "metrics_before": metrics_summary(self.before),
                "metrics_after": metrics_summary(self.after), "config": asdict(config)}


def check_labels_shape(image_shape: Sequence[int], labels_shape: Sequence[int]) -> None:
    """Raise ValueError unless labels of ``labels_shape`` can correct an image of
    ``image_shape`` (a 2D image and its labels count as one slice)."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    as_volume = [s if len(s) != 2 else (1, *s) for s in (image_shape, labels_shape)]
    if as_volume[0] != as_volume[1]:
        raise ValueError(
            f"the labels have shape {labels_shape} but the image has shape {image_shape}: the "
            "corrected labels must be the image's mask (same slices, height and width). Choose "
            "the Labels layer made for this image, or segment it first to get one")


def _as_array(data: Any) -> np.ndarray:
    """Arrays, or the data of a napari layer (no napari import needed)."""
    if hasattr(data, "data") and hasattr(data, "name") and not isinstance(data, np.ndarray):
        data = data.data[0] if getattr(data, "multiscale", False) else data.data
    return np.asarray(data)


def iter_finetune(
    image: np.ndarray,
    labels: np.ndarray,
    train: Sequence[int],
    validation: Sequence[int] = (),
    model: Any = None,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    negatives: Sequence[int] = (),
    should_stop: Callable[[], bool] | None = None,
    project: Project | None = None,
    parent: str | None = None,
    spacing: Any = None,
) -> Generator[TrainProgress, None, FinetuneResult]:
    """Fine-tune a copy of ``model`` on slices ``train`` of ``(image, labels)``, yielding every
    ``TrainProgress`` record; the return value is a :class:`FinetuneResult`.

    ``image`` (S, H, W) any real dtype, normalised over the whole volume as inference does;
    ``labels`` (S, H, W), foreground ``!= 0``; ``spacing`` the pixel size in mm (None: unknown):
    slices are resampled to the model's resolution reference as inference does, and the copy
    records the reference it was tuned at (``src_model.resolution``); ``negatives`` are
    trained (or validated) as empty masks whatever ``labels`` hold there. With ``validation``
    slices the weights with the best validation dice are kept (also after a stop); step 0
    holds the starting model's metrics.
    ``model`` is never changed (None: the shipped default). With ``project`` the result is saved
    as a new version whose parent is ``parent`` (default: the project's current version), made
    current; with a locked set the caller then sends it through the gate
    (``history.route_new_version``), as :func:`finetune` and the Fine-tune widget do, and plans
    the slices with ``history.locked_plan`` so that the locked slices stay a held-out test.
    """
    import time

    from src_model.anchor_fit import adapt_model_anchors
    from src_model.data import SliceDataset
    from src_model.preprocess import normalize_slices
    from src_model.resolution import (model_size, resample_pair, resize_images, resize_masks,
                                      training_reference)
    from src_model.train import TrainConfig, train_iter

    from .segment import check_volume, load_model

    volume = check_volume(_as_array(image))
    truth = (_as_array(labels) != 0).astype(np.uint8)
    if truth.ndim == 2:
        truth = truth[None]
    check_labels_shape(volume.shape, truth.shape)
    train, validation = [int(k) for k in train], [int(k) for k in validation]
    negatives = sorted(set(int(k) for k in negatives))
    if not train:
        raise ValueError("no training slices: correct some slices (or mark them) first")
    bad = [k for k in (*train, *validation, *negatives) if not 0 <= k < volume.shape[0]]
    if bad:
        raise ValueError(f"slices {format_slices(bad)} are outside the volume "
                         f"(0..{volume.shape[0] - 1})")
    truth[negatives] = 0
    net = copy.deepcopy(load_model(model))  # the caller's model (a version, the default) stays
    # Scale as inference does, with whole-volume statistics. uint8 is simply divided by 255
    # (SliceDataset does that itself), so only the slices used are converted. SliceDataset would
    # re-normalise other dtypes on the training subset alone: they go in as the whole-volume
    # normalisation quantised to 8 bits.
    if volume.dtype == np.uint8:
        train_images = volume[train]
        val_images = normalize_slices(volume[validation]) if validation else None
    else:
        images = normalize_slices(volume)
        train_images = np.round(images[train] * 255).astype(np.uint8)
        val_images = images[validation] if validation else None
    # At the model's resolution reference, as inference will run (src_model.resolution).
    parent_config = getattr(net, "config", None)
    reference = None
    size = tuple(volume.shape[1:])
    if parent_config is not None and hasattr(parent_config, "pixel_spacing_mm"):
        resample_by, reference = training_reference(parent_config, volume.shape, spacing)
        size = model_size(resample_by, volume.shape, spacing)
    train_truth, val_truth = truth[train], truth[validation] if validation else None
    if size != tuple(volume.shape[1:]):
        train_images, train_truth = resample_pair(train_images, train_truth, size)
        if validation:
            val_images, val_truth = resize_images(val_images, size), resize_masks(val_truth, size)
    net, anchors = adapt_model_anchors(net, train_truth, config.anchors)
    for p in net.parameters():  # a model frozen by an earlier run trains whole again
        p.requires_grad_(True)
    backbone = getattr(net, "backbone", None)
    if config.freeze_blocks and hasattr(backbone, "freeze_blocks"):
        backbone.freeze_blocks(config.freeze_blocks)
    if reference is not None:
        net.config = net.config.replace(**reference)
    dataset = SliceDataset([(train_images, train_truth)], negatives="all",
                           augment=config.augment, seed=config.seed)
    steps = config.total_steps(len(train))
    tc = TrainConfig(steps=steps, batch_size=max(1, min(config.batch_size, len(train))),
                     lr=config.lr, seed=config.seed, device=config.device,
                     eval_every=config.eval_every or max(1, steps // 20))
    val = (val_images, val_truth) if validation else None
    parent = parent if parent is not None else (project.current_version if project else None)
    history = TrainingHistory(total_steps=steps)
    t0 = time.perf_counter()
    gen = train_iter(net, dataset, tc, validation=val, should_stop=should_stop)
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            outcome = stop.value
            break
        history.add(record)
        yield record
    net.eval()
    after, roi_filter = outcome.best_metrics, None
    if (config.tune_rois and val is not None and outcome.state == "finished"
            and getattr(net.config, "arch", None) == "rpn_fcn"):
        # The parent's ROI filter and margin were chosen for its own data: choose them again
        # on the validation slices (as uint8 at the model's size, where segment_array resamples
        # nothing), then score the kept weights with them.
        from src_model.train import validate

        from .cli.compare import tune_test_time

        raw = np.round(np.clip(val[0], 0.0, 1.0) * 255).astype(np.uint8)
        chosen = tune_test_time(net, raw, val[1])
        roi_filter = {k: v for k, v in chosen.items() if not k.startswith("validation")}
        after = validate(net, val[0], val[1], device=tc.device)
        net.eval()
    last = outcome.history[-1] if outcome.history else None
    result = FinetuneResult(
        net, outcome.state, outcome.steps_done, tuple(train), tuple(validation), tuple(negatives),
        outcome.history[0].metrics if val is not None and outcome.history else None,
        after, history, last.message if last else "", time.perf_counter() - t0,
        parent, anchors=anchors, roi_filter=roi_filter)
    if project is not None and result.steps_done > 0 and result.state in ("finished", "stopped"):
        result.version = project.add_version(net, result.info(config))
    return result


def _version_of(project: Project, model: Any) -> str | None:
    """The project version whose checkpoint file ``model`` names (None for anything else)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(os.path.expanduser(os.fspath(model))).resolve()
    return next((name for name in project.versions
                 if project.version_path(name).resolve() == path), None)


def _same_weights(a: Any, b: Any) -> bool:
    """Do two models hold the same architecture and the very same weights (any devices)?"""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return (getattr(a, "config", None) == getattr(b, "config", None) and sa.keys() == sb.keys()
            and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].detach().cpu(),
                                                                sb[k].detach().cpu())
                    for k in sa))


def finetune_and_gate(args: tuple, kwargs: dict[str, Any]) -> Any:
    """``iter_finetune`` and then, in the same worker thread, the gate a new version must pass
    when the project has a locked set (``history.route_new_version``: inference on the locked
    slices, so never on the GUI thread). Returns ``(result, decision or None, problem)``."""
    from .project.history import route_new_version

    result = yield from iter_finetune(*args, **kwargs)
    decision = problem = None
    if result.version:
        try:
            decision = route_new_version(kwargs["project"], result.version, result.model)
        except (OSError, ValueError) as exc:
            problem = f"The gate could not score {result.version}: {exc}"
    return result, decision, problem


# --------------------------------------------------------------------------- script API


def finetune(
    image: Any,
    labels: Any,
    slices: Sequence[int] | None = None,
    model: Any = None,
    steps: int = DEFAULT_STEPS,
    *,
    validation: Sequence[int] | None = None,
    negatives: Sequence[int] = (),
    lr: float = DEFAULT_LR,
    batch_size: int = 4,
    epochs: float | None = None,
    augment: bool = True,
    project: str | os.PathLike | Project | None = None,
    device: str = "auto",
    seed: int = 0,
    anchors: str = "auto",
    on_progress: Callable[[Any], None] | None = None,
    spacing: Any = "auto",
    tune_rois: bool = False,
    freeze_blocks: int = DEFAULT_FREEZE_BLOCKS,
) -> nn.Module:
    """Fine-tune a model on corrected slices and return the new model version.

    Parameters
    ----------
    image : array or napari.layers.Image
        Grayscale volume ``(slices, height, width)``, any real dtype.
    labels : array or napari.layers.Labels
        Labels of the same shape; only ``slices`` (and ``negatives``) are read. Foreground is
        ``!= 0``.
    slices : sequence of int, optional
        The corrected slices to learn from; None: every slice with any foreground in ``labels``.
    model : None, path or torch.nn.Module
        Where to start: a checkpoint, a model (e.g. an earlier result of this function), or
        None: the project's current version, else the shipped default. It is not changed.
    steps : int
        Optimisation steps (``batch_size`` slices each); ``epochs`` overrides it.
    validation : sequence of int, optional
        Slices held out to pick the best weights and report dice. None chooses them among
        ``slices`` (about a quarter, never direct neighbours of training slices; none when fewer
        than 3 slices); ``[]`` trains on all slices and keeps the last weights. With a
        ``project`` that has a locked set (``history.CorrectionHistory.lock``, the Review
        widget), the locked slices and their neighbours are used neither for training nor for
        validation (``history.locked_plan``): they are the gate's held-out test.
    negatives : sequence of int
        Slices without acetabulum, trained as empty masks.
    lr, batch_size, augment, seed, device
        Adam learning rate, slices per step, ultrasound augmentation, seed, "auto"/"cpu"/"cuda".
    anchors : {"auto", "fit", "keep"}
        RPN anchor sizes/ratios: "auto" fits them to the training slices' boxes when the
        model's own match those boxes poorly (a structure much larger or of another shape than
        the phantom's acetabulum), "fit" always, "keep" never. The counts stay, so every weight
        is reused; the anchors are stored in the new version's config.
    project : folder or Project, optional
        Save the result there as a new version (``versions/vNNN.pt``) and make it current; a
        new project first saves the starting model as ``v000``. With a locked set the new
        version must pass the gate (``history.route_new_version``): if its locked-set dice is
        more than the tolerance below its parent's, it is kept in the project but the parent
        stays current (``finetune_summary["gate"]`` holds the decision; ``api.gate_version``
        with ``override=`` accepts it anyway).
    on_progress : callable, optional
        Called with every ``src_model.train.TrainProgress`` record.
    spacing : "auto", None, float or (y, x)
        Pixel size in mm. The slices are resampled to the starting model's resolution
        reference, as inference does, and the new version records what it was tuned at
        (``src_model.resolution``). "auto": the image layer's scale when its unit is known,
        else unknown (None): the new version then takes frames of this height as its reference.
    tune_rois : bool
        After training, choose the test-time ROI filter (RPN score threshold, top-k, one
        structure) and ROI margin again on the validation slices, by pooled dice. Off by
        default: with a few validation frames of one case it chose filters that over-paint
        (measured on a phantom v2 style: pooled dice 0.545 without, 0.437 with; README).
    freeze_blocks : int
        Keep the weights of the first N VGG16 blocks (0-5) as they are: less to learn from a
        few frames, and each step skips their backward pass.

    Raises
    ------
    napari_roiseg.busy.BusyError
        While a segmentation or another fine-tune runs in this process (nothing is changed).
    ValueError
        Labels of another shape than the image, no slices to train on, slices outside the volume.

    Returns
    -------
    torch.nn.Module
        The fine-tuned model, in eval mode; pass it as ``model=`` to ``segment_volume`` or to
        this function again. Its attribute ``finetune_summary`` (dict) holds the slices used,
        the state, the validation metrics before and after, the saved version's name, the
        locked slices, the gate's decision and the project's current version afterwards.

    Examples
    --------
    In napari's console, after correcting slices of the model's mask layer::

        from napari_roiseg.api import finetune, segment_volume, evaluate
        new = finetune(viewer.layers["hip"], viewer.layers["hip mask"], slices=[40, 52, 61, 75])
        labels, boxes = segment_volume(viewer.layers["hip"], model=new, viewer=viewer)
    """
    from .busy import exclusive

    with exclusive("fine-tuning"):  # BusyError while a segmentation or fine-tune runs
        return _finetune(image, labels, slices, model, steps, validation=validation,
                         negatives=negatives, lr=lr, batch_size=batch_size, epochs=epochs,
                         augment=augment, project=project, device=device, seed=seed,
                         anchors=anchors, on_progress=on_progress, spacing=spacing,
                         tune_rois=tune_rois, freeze_blocks=freeze_blocks)


def _finetune(image: Any, labels: Any, slices: Sequence[int] | None, model: Any, steps: int, *,
              validation: Sequence[int] | None, negatives: Sequence[int], lr: float,
              batch_size: int, epochs: float | None, augment: bool, project: Any, device: str,
              seed: int, anchors: str, on_progress: Callable[[Any], None] | None,
              spacing: Any = "auto", tune_rois: bool = False,
              freeze_blocks: int = DEFAULT_FREEZE_BLOCKS) -> nn.Module:
    labels_arr = _as_array(labels)
    if labels_arr.ndim == 2:
        labels_arr = labels_arr[None]
    image_arr = _as_array(image)
    check_labels_shape(image_arr.shape, labels_arr.shape)  # before anything is written
    if slices is None:
        slices = np.flatnonzero(labels_arr.reshape(labels_arr.shape[0], -1).any(axis=1)).tolist()
    pool = sorted(set(int(k) for k in slices) | set(int(k) for k in negatives))
    if project is not None and not isinstance(project, Project):
        project = Project(project)
    from .project.history import locked_plan, locked_slices, route_new_version

    locked = locked_slices(project)
    # With a locked set (the Review widget's, or history.lock) its slices are the gate's
    # held-out test: never trained on, never used to pick the weights (as in the widget).
    plan = (locked_plan(pool, locked, validation=validation) if locked
            else plan_slices(pool, validation=validation))
    config = FinetuneConfig(steps=steps, epochs=epochs, lr=lr, batch_size=batch_size,
                            augment=augment, seed=seed, device=device, anchors=anchors,
                            tune_rois=tune_rois, freeze_blocks=freeze_blocks)
    if not plan.train:  # before anything is written
        raise ValueError("no training slices: correct some slices (or mark them) first" + (
            f" (slices {format_slices(locked)} are locked: the gate's held-out test, never "
            "trained on, nor their neighbours)" if locked else ""))
    start_is_current = False  # is ``model`` the weights of the project's current version?
    if project is not None and project.current_version is None:
        from .segment import load_model

        model = load_model(model)
        project.add_version(model, {"parent": None, "source": "finetune() start"})
        start_is_current = True
    elif project is not None and model is None:
        model = project.load_version()  # continue from the project's current version
        start_is_current = True
    parent = None
    if project is not None and not start_is_current:
        from .segment import load_model

        source = (f"file {os.fspath(model)}" if isinstance(model, (str, os.PathLike))
                  else "a model given to finetune()")
        parent = _version_of(project, model)  # a version's own checkpoint file
        model = load_model(model)
        if parent is None and _same_weights(model, project.load_version()):
            parent = project.current_version
        if parent is None:
            # Weights from outside the project become a version of their own first (as the
            # docks do), so that the parent recorded is what was trained, not the current one.
            from .model_info import describe_model

            parent = project.add_version(model, {"parent": None,
                                                 "source": describe_model(model, None, source)})
        start_is_current = parent == project.current_version
    result: FinetuneResult = drain(
        iter_finetune(image_arr, labels_arr, plan.train, plan.validation, model, config,
                      negatives=negatives, project=project, parent=parent,
                      spacing=resolve_spacing(image, spacing)), on_progress)
    decision = None
    if result.version is not None:
        # add_version made it current; with a locked set it must pass the gate like the
        # widget's versions (rejected: it stays in the project, its parent is current again)
        decision = route_new_version(project, result.version, result.model,
                                     current_model=model if start_is_current else None,
                                     device=device)
    net = result.model
    net.finetune_summary = {
        **result.info(config), "version": result.version, "message": result.message,
        "warnings": list(plan.warnings), "locked_slices": list(locked),
        "gate": None if decision is None else asdict(decision),
        "current_version": project.current_version if project is not None else None}
    return net


def evaluate(pred: Any, truth: Any, slices: Sequence[int] | None = None) -> dict[str, Any]:
    """Precision, recall and dice of a predicted mask against reference labels.

    Parameters
    ----------
    pred, truth : array or napari.layers.Labels
        Masks ``(H, W)`` or ``(slices, H, W)`` of the same shape; foreground is ``!= 0``.
    slices : sequence of int, optional
        Score only these slices (e.g. the corrected ones).

    Returns
    -------
    dict
        ``per_slice_mean`` (the mean over slices, the paper's measure), ``pooled`` (all pixels of
        all slices counted together) and ``per_slice_mean_nonempty`` (mean over slices where
        truth or prediction has foreground), each ``{"precision", "recall", "dice"}``; plus
        ``n_slices`` and ``per_slice`` lists. A slice where both masks are empty scores 1.0.

    Examples
    --------
    ::

        scores = evaluate(viewer.layers["hip mask"], viewer.layers["acetabulum ground truth"])
        scores["per_slice_mean"]["dice"], scores["pooled"]["dice"]
    """
    from src_model.metrics import evaluate_masks

    p, t = _as_array(pred), _as_array(truth)
    if slices is not None:
        index = [int(k) for k in slices]
        if p.ndim != 3 or t.ndim != 3:
            raise ValueError("slices= needs volumes (S, H, W)")
        p, t = p[index], t[index]
    return evaluate_masks(p, t)
