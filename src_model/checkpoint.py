"""Checkpoints: one ``torch.save`` file holding the config, metadata and weights.

Payload::

    {"format": "napari-roiseg-checkpoint/1",
     "config": ModelConfig.to_dict(),
     "metadata": {... user metadata ..., "date", "torch_version", "torchvision_version", "preset"},
     "state_dict": {name: CPU tensor}}

Writing is atomic (temporary file in the same folder, flush + fsync, ``os.replace``): a crash or a
full disk never leaves a half-written checkpoint under the real name, and the previous file stays
intact; a full disk is reported as ``OSError(ENOSPC)`` giving the free and needed space. Reading
uses ``torch.load(weights_only=True)``, which refuses pickles that would run code, and every
problem surfaces as :class:`CheckpointError` with a message saying what to do.
"""

from __future__ import annotations

import datetime as _dt
import errno
import glob
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from .config import ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "napari-roiseg-checkpoint/1"
_FORMAT_PREFIX = "napari-roiseg-checkpoint/"
_SAFE_SCALARS = (str, int, float, bool, type(None))
# A temporary file of a save this old belongs to a writer that died (no save takes an hour);
# a younger one may be another process's save in progress.
STALE_TEMP_S = 3600.0


class CheckpointError(ValueError):
    """A checkpoint cannot be written or used; the message says why and what would work."""


def _plain_metadata(value: Any, where: str = "metadata") -> Any:
    """Only plain data survives ``weights_only`` loading. Lossless look-alikes are converted
    (numpy scalars, str/int/float subclasses such as ``torch.__version__``, paths); anything else
    is refused at save time, not discovered when the checkpoint will not load."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} keys must be strings, got {k!r}")
            out[str(k)] = _plain_metadata(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value) in _SAFE_SCALARS:
        return value
    if isinstance(value, np.generic) and np.ndim(value) == 0 and not isinstance(value, np.void):
        return _plain_metadata(value.item(), where)
    for base in (bool, int, float, str):  # subclasses (IntEnum, TorchVersion...) -> the base
        if isinstance(value, base):
            return base(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise CheckpointError(
        f"{where} is a {type(value).__name__}; metadata may hold only str, int, float, bool, "
        "None, lists and dicts (convert arrays with .tolist())"
    )


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any] | None = None
) -> Path:
    """Atomically write ``model`` (which must have ``model.config``) to ``path``.

    ``metadata`` (plain data only) is stored with ``date`` (UTC, ISO 8601), ``torch_version``,
    ``torchvision_version`` and ``preset`` added unless already given. Returns the path.
    """
    path = Path(path)
    model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrapper
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError(
            "the model has no ModelConfig in model.config; build it with "
            "src_model.model.build_model(config)"
        )
    meta = _plain_metadata(dict(metadata or {}))
    meta.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("torch_version", str(torch.__version__))  # TorchVersion is not plain data
    meta.setdefault("torchvision_version", str(torchvision.__version__))
    meta.setdefault("preset", config.preset)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "metadata": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if not path.parent.is_dir():
        raise CheckpointError(
            f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600: give it what a plain write would (0666 less the umask),
        # so a colleague on a shared machine can load a model this user trained
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # Leave the previous checkpoint untouched and no temporary file behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, Exception) and _is_disk_full(exc):
            # torch's zip writer reports a full disk as "enforce fail ... unexpected pos".
            raise OSError(errno.ENOSPC, _disk_full_message(path, payload["state_dict"])) from exc
        raise
    _remove_stale_temps(path)
    return path


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is ENOSPC (or EDQUOT)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_message(path: Path, state_dict: dict[str, torch.Tensor]) -> str:
    need = sum(t.numel() * t.element_size() for t in state_dict.values()) / 2**20
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"cannot save the checkpoint {str(path)!r}: no space left in {str(path.parent)!r} "
        f"({free}, about {need:.0f} MiB needed). The previous file is unchanged; free some "
        "space or save to another folder, then save again"
    )


def _remove_stale_temps(path: Path) -> None:
    """Delete the hidden temporary files of earlier saves to ``path`` that a killed writer left
    (older than ``STALE_TEMP_S``)."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: it is hidden and never loaded


def _unpickler_reason(exc: Exception) -> str:
    """The one informative line of torch's long weights_only error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
    return lines[0] if lines else str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_MAGIC = ((b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
          (b"\x89PNG", "a PNG image"), (b"\x1f\x8b", "a gzip file (e.g. a NIfTI volume)"))


def _what_file(head: bytes) -> str:
    """A guess at what a file that is not a checkpoint holds, from its first bytes."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "neither a zip archive nor a pickle"


def _read_payload(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file (pick the .pt file itself)")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is empty (0 bytes): the file is truncated or corrupt "
            "(not saved completely). Copy or download it again, or re-save it with "
            "save_checkpoint")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        # torch.save writes a zip archive (or, in old versions, a pickle starting with 0x80).
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint: it is {_what_file(head)}. Choose a .pt file "
            "written by `roiseg train`, the Fine-tune widget or save_checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary globals: loading this file would have executed code.
        raise CheckpointError(
            f"refused to load {str(path)!r}: it contains Python objects that could run code when "
            "loaded, which napari-roiseg checkpoints never do. Only use checkpoints from a source "
            f"you trust, saved by save_checkpoint. ({_unpickler_reason(exc)})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 -- any failure to parse is a damaged file
        raise CheckpointError(
            f"could not read {str(path)!r}: the file is truncated or corrupt "
            f"({type(exc).__name__}: "
            f"{exc}). Copy or download it again, or re-save it with save_checkpoint"
        ) from exc
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX):
        hint = ""
        if (
            isinstance(payload, dict)
            and payload
            and all(torch.is_tensor(v) for v in payload.values())
        ):
            hint = (
                " It looks like a bare state_dict: load it with model.load_state_dict() into a "
                "model built with the right config, then save it with save_checkpoint."
            )
        raise CheckpointError(
            f"{str(path)!r} is not a napari-roiseg checkpoint (no 'format': "
            f"'{CHECKPOINT_FORMAT}' entry).{hint}"
        )
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has format {fmt!r}, this version reads {CHECKPOINT_FORMAT!r}; "
            "upgrade napari-roiseg to load it"
        )
    for key, kind in (("config", dict), ("metadata", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(
                f"{str(path)!r} is damaged: its {key!r} entry is missing or not a dict"
            )
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    expected_arch: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path`` and return ``(model, metadata)``.

    The model is built from the stored config (``build_model``), gets the stored weights, is on
    ``map_location`` and in eval mode. ``expected_arch`` (e.g. "rpn_fcn") rejects checkpoints of
    another architecture.

    Raises
    ------
    CheckpointError
        Not a file, truncated/corrupt, not a napari-roiseg checkpoint, a pickle that would run code,
        an invalid config, the wrong architecture, or weights that do not fit the config (missing,
        unexpected or differently shaped tensors).
    """
    from .model import build_model  # deferred: model imports torchvision's detection stack

    path = Path(path)
    payload = _read_payload(path, map_location)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} holds a config this version cannot use: {exc}. "
            "It may come from a newer napari-roiseg"
        ) from exc
    if expected_arch is not None and config.arch != expected_arch:
        raise CheckpointError(
            f"{str(path)!r} holds a {config.arch!r} model, but a {expected_arch!r} model is needed"
        )
    try:
        model = build_model(config)
    except ValueError as exc:
        raise CheckpointError(f"cannot build the model of {str(path)!r}: {exc}") from exc
    state = payload["state_dict"]
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} is damaged: its 'state_dict' holds non-tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing weights ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected weights ({', '.join(unexpected[:3])}"
            f"{', ...' if len(unexpected) > 3 else ''})"
        )
    if wrong:
        problems.append(
            f"{len(wrong)} shape mismatches ({'; '.join(wrong[:3])}"
            f"{'; ...' if len(wrong) > 3 else ''})"
        )
    if problems:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit its stored config ({config.preset!r} "
            f"preset, {config.arch!r}): "
            + ", ".join(problems)
            + ". The file was probably assembled from another preset or version; re-save the "
            "trained model with save_checkpoint"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()
    return model, dict(payload["metadata"])
