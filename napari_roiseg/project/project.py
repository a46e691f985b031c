"""A fine-tuning project folder: model versions, the current version, saved corrections.

Layout (every write atomic: temporary file in the same folder + ``os.replace``)::

    <project>/project.json                  current version, version index, image name and shape
    <project>/versions/v000.pt              the starting model; v001, v002, ... one per run
    <project>/corrections/labels.tif        the corrected slices (ImageJ slice labels "slice K")
    <project>/corrections/prediction.tif    the prediction the corrections were compared with
    <project>/corrections/corrections.json  detected slices and marks
    <project>/.roiseg.lock                  empty; its flock is the folder's lock across processes

Several objects may hold the same folder at once (the docks, the API, a script, another
process): ``project.json`` is a :class:`~.locking.SharedJson` under the folder's lock
(:mod:`.locking`), so a script fine-tuning in a terminal and an open napari share a folder
safely.

No napari or Qt; torch only inside the methods that save or load a model version.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .corrections import Corrections
from .locking import SharedJson, _write_json_atomic, claim_numbered_file, folder_lock

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Project", "default_project_folder", "metrics_summary"]

PROJECT_FORMAT = "napari-roiseg-project/1"
CORRECTIONS_FORMAT = "napari-roiseg-corrections/1"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_tiff_atomic(path: Path, data: np.ndarray, slice_labels: list[str] | None = None) -> None:
    import tifffile

    from ..io.writers import atomic_path

    metadata = {"axes": "ZYX", **({"Labels": slice_labels} if slice_labels else {})}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data, np.uint8), imagej=True,
                         metadata=metadata, compression="zlib")


def default_project_folder(name: str, source: str | os.PathLike | None = None) -> Path:
    """Where a volume's project goes when the user has not chosen one: ``<file>.roiseg`` beside
    the volume's file when it has one and that folder is writable, else
    ``~/napari-roiseg/projects/<name>``."""
    if source:
        src = Path(source)
        folder = src.parent / f"{src.name.split('.')[0]}.roiseg"
        if os.access(src.parent, os.W_OK):
            return folder
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "volume"
    return Path.home() / "napari-roiseg" / "projects" / safe


def metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """``evaluate_masks`` output without the per-slice lists (for metadata and messages)."""
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if k != "per_slice"}


class Project:
    """A project folder: model versions, the current version, and the saved corrections.

    Opening a folder that does not exist creates it. Reopening the same folder later (a new
    ``Project`` object, another napari session) finds everything as it was left.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"project folder {str(self.folder)!r} is a file: choose a folder")
        self.versions_dir = self.folder / "versions"
        self.corrections_dir = self.folder / "corrections"
        for d in (self.folder, self.versions_dir, self.corrections_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._file = self.folder / "project.json"
        self.lock = folder_lock(self.folder)
        self._json = SharedJson(self._file, self.lock, self._new_state, self._check_state,
                                "restore it from a backup or choose another project folder")
        with self.lock:
            if self._file.exists():
                self._json.read()  # raises on an unreadable or foreign file
            else:
                self._json.update(lambda state: None)

    @staticmethod
    def _new_state() -> dict[str, Any]:
        return {"format": PROJECT_FORMAT, "created": _now(), "current_version": None,
                "image": None, "versions": {}}

    def _check_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != PROJECT_FORMAT:
            raise ValueError(f"{self._file} is not a napari-roiseg project "
                             f"(format {state.get('format')!r})")

    @property
    def state(self) -> dict[str, Any]:
        """``project.json`` as it is on disk now (read-only: change it with :meth:`_update`)."""
        return self._json.read()

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change`` to ``project.json`` as it is on disk now and write it back."""
        return self._json.update(change)

    # ---------------------------------------------------------------- image identity

    def bind_image(self, name: str, shape: Sequence[int]) -> None:
        """Record which volume the project belongs to; refuse a volume of another shape when
        corrections of the first one are saved here."""
        shape = [int(v) for v in shape]
        if self.corrections_file.exists():
            saved = json.loads(self.corrections_file.read_text(encoding="utf-8")).get("shape")
            if saved is not None and list(saved) != shape:
                image = self.state.get("image") or {}
                raise ValueError(
                    f"project {str(self.folder)!r} holds corrections of a volume of shape "
                    f"{tuple(saved)} ('{image.get('name', '?')}'), not {tuple(shape)}: choose "
                    "another project folder for this volume")
        if self.state.get("image") != {"name": name, "shape": shape}:
            self._update(lambda state: state.__setitem__("image", {"name": name, "shape": shape}))

    # ---------------------------------------------------------------- versions

    @property
    def current_version(self) -> str | None:
        return self.state.get("current_version")

    @property
    def versions(self) -> dict[str, dict[str, Any]]:
        """Version name -> its summary (parent, created, slices, metrics, state), oldest first."""
        return copy.deepcopy(dict(sorted(self.state["versions"].items())))

    def version_path(self, name: str) -> Path:
        return self.versions_dir / f"{name}.pt"

    def _reserve_name(self) -> str:
        """The next free version name, its file claimed (:func:`claim_numbered_file`); names of
        files left by an interrupted save are skipped too. Call with :attr:`lock` held."""
        return claim_numbered_file(self.versions_dir, "v", ".pt", 3, self.state["versions"], 0)

    def add_version(self, model: nn.Module, info: dict[str, Any], *, make_current: bool = True) -> str:
        """Save ``model`` as the next version (``v000`` first) with ``info`` (plain data: parent,
        slices, metrics, ...) in its checkpoint metadata and the project index; returns its name.
        ``make_current``: also make it the current version (a caller with a locked set then
        sends it through the gate, ``history.route_new_version``)."""
        from src_model.checkpoint import save_checkpoint

        with self.lock:
            name = self._reserve_name()
        entry = {"name": name, "created": _now(), **info}
        meta = {"model_version": entry, "parent": entry.get("parent")}
        if "steps_done" in info:
            meta["training"] = {"steps_done": info["steps_done"], **info.get("config", {})}
        try:
            save_checkpoint(self.version_path(name), model, meta)  # atomic
        except BaseException:
            self.version_path(name).unlink(missing_ok=True)  # give the reserved name back
            raise

        def add(state: dict[str, Any]) -> None:
            state["versions"][name] = entry
            if make_current:
                state["current_version"] = name

        self._update(add)
        return name

    def load_version(self, name: str | None = None) -> nn.Module:
        """The model of version ``name`` (default: the current one), in eval mode."""
        from src_model.checkpoint import load_checkpoint

        name = name or self.current_version
        versions = self.state["versions"]
        if name is None or name not in versions:
            raise ValueError(f"version {name!r} is not in project {str(self.folder)!r}; it has "
                             f"{', '.join(versions) or 'no versions yet'}")
        model, _ = load_checkpoint(self.version_path(name))
        return model.eval()

    def set_current(self, name: str) -> None:
        """Make ``name`` the current version (rollback); later runs start from it."""

        def change(state: dict[str, Any]) -> None:
            if name not in state["versions"]:
                raise ValueError(f"version {name!r} is not in the project; choose one of "
                                 f"{', '.join(state['versions'])}")
            state["current_version"] = name

        self._update(change)

    # ---------------------------------------------------------------- corrections

    @property
    def corrections_file(self) -> Path:
        return self.corrections_dir / "corrections.json"

    def save_corrections(self, labels: np.ndarray, corrections: Corrections,
                         prediction: np.ndarray | None = None, **extra: Any) -> None:
        """Save the labelled slices of ``labels`` (S, H, W), the marks and, when given, the
        prediction they are compared with. Each file is replaced atomically; ``labels.tif``
        names its slices itself, so it is consistent on its own whatever happens between files.
        """
        labels = np.asarray(labels)
        keep = corrections.slices()
        if prediction is not None:
            _write_tiff_atomic(self.corrections_dir / "prediction.tif",
                               (np.asarray(prediction) != 0).astype(np.uint8))
        path = self.corrections_dir / "labels.tif"
        if keep:
            data = (labels[keep] != 0).astype(np.uint8)
            data[[i for i, k in enumerate(keep) if k in set(corrections.negatives)]] = 0
            _write_tiff_atomic(path, data, [f"slice {k}" for k in keep])
        elif path.exists():
            path.unlink()
        _write_json_atomic(self.corrections_file, {
            "format": CORRECTIONS_FORMAT, "saved": _now(), "shape": list(labels.shape),
            **corrections.to_json(), "slices": keep, **extra})

    def load_corrections(self) -> tuple[Corrections, dict[int, np.ndarray], np.ndarray | None,
                                        dict[str, Any]]:
        """``(corrections, {slice: labels (H, W)}, prediction (S, H, W) or None, json)``;
        empty when nothing was saved."""
        import tifffile

        if not self.corrections_file.exists():
            return Corrections(0), {}, None, {}
        data = json.loads(self.corrections_file.read_text(encoding="utf-8"))
        corrections = Corrections.from_json(data)
        slices: dict[int, np.ndarray] = {}
        path = self.corrections_dir / "labels.tif"
        if path.exists():
            with tifffile.TiffFile(path) as tif:
                stack = tif.asarray()
                names = (tif.imagej_metadata or {}).get("Labels", [])
            stack = stack.reshape(-1, *stack.shape[-2:])
            names = [names] if isinstance(names, str) else list(names)
            for name, plane in zip(names, stack):
                slices[int(name.split()[-1])] = plane
        pred_path = self.corrections_dir / "prediction.tif"
        prediction = None
        if pred_path.exists():
            prediction = tifffile.imread(pred_path).reshape(data["shape"])
        return corrections, slices, prediction, data
