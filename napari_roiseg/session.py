"""One session per napari viewer: what every dock of the plugin and the console API share.

The docks hold no state of their own about *what* is being worked on: the image, its mask and
boxes layers, the project folder, the model the next run uses, the device and the run lock live
here, and every control reads and changes this object (as napari-animation's dock forwards to
its ``Animation``). So a version made by fine-tuning, or accepted by the Review gate, is what
the next segmentation uses, in every dock and in the console, at once: with a project open the
model *is* the project's current version, re-read from ``project.json`` before every run.

Model work runs in the session's own model process (:mod:`napari_roiseg.worker`: started when
a run first needs it, or when an image is chosen, and kept warm), so that it never competes
with the viewer for the GIL; ``worker_mode = "thread"`` runs it in napari threads of this
process instead (the fallback where no process can be started, and what most tests use).

No Qt here and no torch at import: a script can make a ``Session()`` without a viewer.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psygnal import Signal

from . import busy
from .project.project import Project, default_project_folder

__all__ = ["CHECKPOINT", "DEFAULT", "MEMORY", "PROJECT", "Session", "SessionEvents",
           "get_session"]

DEFAULT = "shipped default"
CHECKPOINT = "checkpoint file"
MEMORY = "in-memory model"
PROJECT = "project version"
DEVICES = ("auto", "cpu", "cuda")
WORKER_MODES = ("process", "thread")
WORKER_MODE_VARIABLE = "NAPARI_ROISEG_WORKER"  # "thread" makes threads every session's default


def default_worker_mode() -> str:
    """"process" where a model process can be started, unless ``NAPARI_ROISEG_WORKER=thread``."""
    from .worker import process_available

    wanted = os.environ.get(WORKER_MODE_VARIABLE, "process").strip().lower() or "process"
    if wanted not in WORKER_MODES:
        raise ValueError(f"{WORKER_MODE_VARIABLE}={wanted!r}: expected 'process' or 'thread'")
    return wanted if process_available() else "thread"


class SessionEvents:
    """What a dock listens to (psygnal signals: no Qt needed)."""

    layers = Signal()  # the image, mask or boxes layer changed
    project = Signal(object)  # a project was opened (the Project)
    model = Signal(str)  # the model the next run uses changed (its description)
    running = Signal(object)  # what started running (str), or None when it ended


class _LayerRole:
    """A layer the session holds for every dock; choosing another one tells them all."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, session: Any, owner: type | None = None) -> Any:
        return self if session is None else session.__dict__.get(self.slot)

    def __set__(self, session: Any, layer: Any) -> None:
        if layer is not session.__dict__.get(self.slot):
            session.__dict__[self.slot] = layer
            session._layer_chosen(self.name, layer)


class Session:
    """The shared state of one viewer's docks (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer, optional
        The viewer whose docks share this session (None for scripts).
    """

    def __init__(self, viewer: Any = None) -> None:
        self.viewer = viewer
        self.events = SessionEvents()
        self.project: Project | None = None
        self.device = "auto"
        self.source = DEFAULT
        self.checkpoint: Path | None = None
        self._memory: tuple[Any, str] | None = None  # (model, description) from set_model
        self._loaded: tuple[tuple, Any, str] | None = None  # (what was loaded, model, text)
        self._load_lock = threading.Lock()
        self.results: dict[Any, Any] = {}  # per image layer: its segmentation so far (GUI side)
        self.extras: dict[str, Any] = {}  # objects of the GUI side kept per session (runner)
        self._worker_mode = default_worker_mode()
        self._process: Any = None  # the ProcessWorker, made on first use
        self._snapshot: tuple[int, Path] | None = None  # (id of the in-memory model, its file)

    # ------------------------------------------------------------------ where models run

    @property
    def worker_mode(self) -> str:
        """"process" (model work in the session's model process) or "thread" (napari
        threads of this process)."""
        return self._worker_mode

    @worker_mode.setter
    def worker_mode(self, mode: str) -> None:
        from .worker import process_available

        if mode not in WORKER_MODES:
            raise ValueError(f"worker_mode must be 'process' or 'thread', not {mode!r}")
        if mode == "process" and not process_available():
            raise ValueError("a model process cannot be started on this platform: use 'thread'")
        self._worker_mode = mode

    @property
    def uses_process(self) -> bool:
        return self._worker_mode == "process"

    def process_worker(self, start: bool = False) -> Any:
        """The session's :class:`~napari_roiseg.worker.ProcessWorker` (made on first use;
        ``start``: start its process now, so the first run finds it warm)."""
        if self._process is None:
            from .worker import ProcessWorker

            self._process = ProcessWorker()
        if start:
            self._process.start()
        return self._process

    def close(self) -> None:
        """Stop the model process and remove its shared files (the viewer is closing)."""
        if self._process is not None:
            self._process.shutdown()
            self._process = None

    # ------------------------------------------------------------------ layers

    image_layer = _LayerRole("the image: the volume segmented, corrected and fine-tuned on")
    mask_layer = _LayerRole("the Labels layer the annotator corrects: the model's mask")
    boxes_layer = _LayerRole("the Shapes layer of the model's boxes")

    def _layer_chosen(self, role: str, layer: Any) -> None:
        if role == "image_layer" and layer is not None and self.project is not None:
            self._bind(self.project)
        self.events.layers.emit()

    def forget_layer(self, layer: Any) -> None:
        """``layer`` was removed from the viewer: drop every reference to it."""
        self.results.pop(layer, None)
        for role in ("image_layer", "mask_layer", "boxes_layer"):
            if getattr(self, role) is layer:
                setattr(self, role, None)

    # ------------------------------------------------------------------ project

    def open_project(self, folder: str | os.PathLike) -> Project:
        """Open (or create) a project folder; with versions, its current one becomes the model.

        Raises OSError or ValueError (e.g. a folder of another image) with the reason."""
        project = Project(folder)
        self._bind(project)
        self.project = project
        if project.current_version is not None:
            self.source = PROJECT
        self.events.project.emit(project)
        self.events.model.emit(self.model_text())
        return project

    def _bind(self, project: Project) -> None:
        layer = self.image_layer
        if layer is not None:
            from .layers import as_slices

            project.bind_image(layer.name, as_slices(layer.data).shape)

    def default_project_folder(self) -> Path | None:
        """Where the image's project goes when none was chosen (None without an image)."""
        image = self.image_layer
        if image is None:
            return None
        return default_project_folder(image.name, getattr(image.source, "path", None))

    # ------------------------------------------------------------------ model

    def choose_model(self, source: str, checkpoint: str | os.PathLike | None = None) -> None:
        """Use the shipped default, a checkpoint file, the in-memory model or the project's
        current version for the next runs (loaded when a run needs it)."""
        if source not in (DEFAULT, CHECKPOINT, MEMORY, PROJECT):
            raise ValueError(f"unknown model source {source!r}: expected one of {DEFAULT!r}, "
                             f"{CHECKPOINT!r}, {MEMORY!r}, {PROJECT!r}")
        if source == MEMORY and self._memory is None:
            raise ValueError("no in-memory model: hand one over with set_model first")
        if source == PROJECT and self.project is None:
            raise ValueError("no project is open: open one before choosing its version")
        self.source = source
        if checkpoint is not None:
            self.checkpoint = Path(checkpoint)
        self.events.model.emit(self.model_text())

    def set_model(self, net: Any, description: str = "in-memory model") -> None:
        """Use ``net`` (a torch module) for the next runs; it stays on offer as ``MEMORY``."""
        from .model_info import describe_model

        self._memory = (net, describe_model(net, None, description))
        self._snapshot = None
        self.choose_model(MEMORY)

    @property
    def memory_model(self) -> Any:
        return self._memory[0] if self._memory is not None else None

    def _wanted(self) -> tuple:
        """What :meth:`model` returns now, as a key (the project's version is re-read)."""
        if self.source == PROJECT and self.project is not None:
            return (PROJECT, str(self.project.folder), self.project.current_version)
        if self.source == CHECKPOINT:
            return (CHECKPOINT, str(self.checkpoint))
        if self.source == MEMORY and self._memory is not None:
            return (MEMORY, id(self._memory[0]))
        return (DEFAULT,)

    def loaded_model(self) -> Any:
        """The model :meth:`model` would return without loading anything, or None."""
        loaded = self._loaded
        return loaded[1] if loaded is not None and loaded[0] == self._wanted() else None

    def model(self) -> Any:
        """The model the next run uses, loaded once per version (any thread may call this).

        With a project open and ``source == PROJECT`` it is the project's current version as
        ``project.json`` says *now*: a version accepted by the gate or made current by another
        dock or process is picked up here. A project without versions is given the model
        chosen before (or the shipped default) as ``v000`` first. Raises with an actionable
        message when the model cannot be loaded.
        """
        with self._load_lock:
            key = self._wanted()
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            net, text = self._load(key)
            self._loaded = (self._wanted(), net, text)
        self.events.model.emit(text)
        return net

    def _load(self, key: tuple) -> tuple[Any, str]:
        from .api import prepare_torch_import
        from .model_info import describe_model

        prepare_torch_import()
        from src_model.checkpoint import load_checkpoint

        from .segment import default_checkpoint

        if key[0] == PROJECT:
            if key[2] is None:  # a new project: what was chosen before becomes v000
                net, text = self._base_model()
                self.project.add_version(net, {"parent": None, "source": text})
                return net, describe_model(net, None, f"project version "
                                           f"{self.project.current_version}")
            net = self.project.load_version(key[2])
            return net, describe_model(net, self.project.versions.get(key[2]),
                                       f"project version {key[2]}")
        if key[0] == MEMORY:
            return self._memory
        if key[0] == CHECKPOINT:
            path = self.checkpoint
            if path is None or not path.is_file():
                raise FileNotFoundError(f"'{path}' is not a file: choose a checkpoint (.pt) "
                                        "written by roiseg train or the Fine-tune step")
            source = path.name
        else:
            path, source = default_checkpoint(), DEFAULT
            if not path.is_file():
                raise FileNotFoundError(
                    f"the shipped default model {path} is missing from this installation; "
                    "reinstall napari-roiseg or choose a checkpoint file")
        net, metadata = load_checkpoint(path)
        net.eval()
        return net, describe_model(net, metadata, source)

    def _base_model(self) -> tuple[Any, str]:
        """The model chosen before a project took over (for its v000)."""
        if self._memory is not None:
            return self._memory[0], "model given to the widget"
        key = (CHECKPOINT, str(self.checkpoint)) if self.checkpoint is not None else (DEFAULT,)
        net, _ = self._load(key)
        return net, (self.checkpoint.name if self.checkpoint is not None else DEFAULT)

    def model_text(self) -> str:
        """One line about the model the next run uses (says when it loads)."""
        loaded = self._loaded
        if loaded is not None and loaded[0] == self._wanted():
            return loaded[2]
        if self.source == PROJECT and self.project is not None:
            version = self.project.current_version
            return (f"project version {version} (loads on first run)" if version else
                    "the model chosen before, saved as v000 on first run")
        if self.source == MEMORY and self._memory is not None:
            return self._memory[1]
        if self.source == CHECKPOINT:
            return (f"{self.checkpoint.name} (loads on first run)" if self.checkpoint
                    and self.checkpoint.is_file() else "choose a checkpoint file (.pt)")
        return "shipped default (loads on first run)"

    def model_spec(self) -> tuple:
        """The model the next run uses, as the model process loads it: ``("default",)``,
        ``("file", path, mtime)`` or ``("project", folder, version)``. Loads nothing here,
        except for a project without versions (its v000 is saved first) or an in-memory model
        (written once to a checkpoint file in the session's scratch folder)."""
        from .segment import default_checkpoint

        key = self._wanted()
        if key[0] == PROJECT:
            if key[2] is None:
                self.model()
                key = self._loaded[0]
            return ("project", key[1], key[2])
        if key[0] == MEMORY:
            return ("file", str(self._memory_snapshot()), 0)
        path = self.checkpoint if key[0] == CHECKPOINT else default_checkpoint()
        if path is None or not path.is_file():
            self._load(key)  # raises the message that says what to choose
        if key[0] == CHECKPOINT:
            return ("file", str(path.resolve()), path.stat().st_mtime_ns)
        return ("default",)

    def _memory_snapshot(self) -> Path:
        net = self._memory[0]
        if self._snapshot is None or self._snapshot[0] != id(net):
            from .api import prepare_torch_import

            prepare_torch_import()
            from src_model.checkpoint import CheckpointError, save_checkpoint

            path = self.process_worker().arrays.folder / f"memory-{id(net):x}.pt"
            try:
                save_checkpoint(path, net, {"source": self._memory[1]})
            except CheckpointError as exc:
                raise ValueError(f"the in-memory model cannot go to the model process ({exc}); "
                                 "set session.worker_mode = 'thread' to run it here") from exc
            self._snapshot = (id(net), path)
        return self._snapshot[1]

    def use_version(self, name: str) -> Any:
        """Make project version ``name`` current (roll back or forward) and return its model."""
        if self.project is None:
            raise ValueError("no project is open: open one to choose its versions")
        self.project.set_current(name)
        self.source = PROJECT
        return self.model()

    def version_added(self, name: str, net: Any, current: bool) -> None:
        """A run saved ``net`` as version ``name``; when ``current`` it is the model from now
        on (kept, not reloaded from disk)."""
        if current and self.project is not None:
            from .model_info import describe_model

            self.source = PROJECT
            text = describe_model(net, self.project.versions.get(name), f"project version {name}")
            with self._load_lock:
                self._loaded = ((PROJECT, str(self.project.folder), name), net, text)
        self.events.model.emit(self.model_text())

    def training_start(self, load: bool = True) -> tuple[Any, str]:
        """``(model, parent version)`` a fine-tune starts from, in the open project: its
        current version, or the model chosen instead, saved as a new version first so that
        the parent recorded is the weights trained. ``load=False``: the model as
        :meth:`model_spec` describes it (for the model process), loaded here only if it
        must be saved as a version first."""
        if self.project is None:
            raise ValueError("no project is open: fine-tuning saves versions in one")
        if self.source != PROJECT and self.project.current_version is not None:
            net = self.model()
            from .model_info import describe_model

            self.project.add_version(net, {"parent": None,
                                           "source": describe_model(net, None, self.source)})
            self.version_added(self.project.current_version, net, True)
        self.source = PROJECT
        if not load:
            spec = self.model_spec()  # a project without versions gets its v000 here
            return spec, self.project.current_version
        net = self.model()
        return net, self._loaded[0][2]

    def resolve_device(self) -> str:
        """The device runs use, e.g. ``"cpu"`` for ``"auto"`` without a GPU (raises if the
        chosen one is unavailable)."""
        from .api import prepare_torch_import

        prepare_torch_import()
        from src_model.device import resolve_device

        return str(resolve_device(self.device))

    # ------------------------------------------------------------------ run lock

    def try_run(self, what: str) -> busy.RunToken | None:
        """Take the run lock for ``what`` (None while another run holds it). The lock is
        process-wide (:mod:`napari_roiseg.busy`): all sessions share one CPU or GPU."""
        token = busy.try_acquire(what)
        if token is not None:
            self.events.running.emit(what)
        return token

    def end_run(self, token: busy.RunToken | None) -> None:
        if token is not None and token.held:
            token.release()
            self.events.running.emit(None)

    @contextmanager
    def exclusive(self, what: str) -> Iterator[busy.RunToken]:
        """``with session.exclusive("gating v003"):`` (BusyError while another run holds it)."""
        token = self.try_run(what)
        if token is None:
            raise busy.BusyError(busy.refusal(what))
        try:
            yield token
        finally:
            self.end_run(token)

    @staticmethod
    def running() -> str | None:
        return busy.running()


_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


def get_session(viewer: Any) -> Session:
    """The session of ``viewer`` (made on first use; one per viewer, shared by all docks)."""
    entry = _SESSIONS.get(id(viewer))
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    for key in [k for k, (ref, _) in _SESSIONS.items() if ref() is None]:
        del _SESSIONS[key]  # viewers gone: their sessions go too
    session = Session(viewer)
    _SESSIONS[id(viewer)] = (weakref.ref(viewer), session)
    return session
