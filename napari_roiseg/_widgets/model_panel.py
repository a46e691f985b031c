"""The model picker: which model the session's next runs use, and on which device.

Choices: the shipped default, a checkpoint file, a model handed over with ``set_model`` (the
console, a script), and, with a project open, its current version -- which a fine-tune or the
gate changes for every dock at once. The panel only reads and writes the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label
from napari.utils.notifications import show_error

from ..session import CHECKPOINT, DEFAULT, DEVICES, MEMORY, PROJECT, Session
from .hooks import ViewerHooks


class ModelPanel(Container):
    """Model source, checkpoint file, what is loaded, device."""

    def __init__(self, session: Session) -> None:
        super().__init__(labels=True)
        self.session = session
        self._source = ComboBox(label="model", choices=self._choices, value=session.source)
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth",
                                    visible=session.source == CHECKPOINT)
        self._info = Label(label="loaded", value=session.model_text())
        self._info.native.setWordWrap(True)
        self._device = ComboBox(choices=list(DEVICES), value=session.device,
                                tooltip="auto: CUDA when available, else the CPU")
        self._device_info = Label(value="")
        device_row = Container(layout="horizontal", labels=False, label="device",
                               widgets=[self._device, self._device_info])
        device_row.margins = (0, 0, 0, 0)
        self.extend([self._source, self._checkpoint, self._info, device_row])
        self.margins = (0, 0, 0, 0)
        self._source.changed.connect(self._on_source)
        self._checkpoint.changed.connect(self._on_checkpoint)
        self._device.changed.connect(self._on_device)
        self.resolve_device()

    def hook(self, hooks: ViewerHooks) -> None:
        hooks.connect(self.session.events.model, "follow_session", self)
        hooks.connect(self.session.events.project, "follow_session", self)

    def _choices(self, _widget: Any = None) -> list[str]:
        # A callable: napari calls reset_choices() on docked widgets when layers change.
        session = self.session
        return [DEFAULT, CHECKPOINT, *([MEMORY] if session.memory_model is not None else []),
                *([PROJECT] if session.project is not None else [])]

    def follow_session(self, *_args: Any) -> None:
        """Show the session's model (chosen elsewhere, or made current by a run)."""
        with self._source.changed.blocked():
            self._source.reset_choices()
            self._source.value = self.session.source
        self._checkpoint.visible = self.session.source == CHECKPOINT
        self._info.value = self.session.model_text()

    @property
    def model_text(self) -> str:
        return self._info.value

    def _on_source(self, source: str) -> None:
        self._checkpoint.visible = source == CHECKPOINT
        path = Path(self._checkpoint.value) if source == CHECKPOINT else None
        if path is not None:
            self.session.checkpoint = path if path.is_file() else None
        self.session.choose_model(source)
        self._info.value = self.session.model_text()
        if path is not None and path.is_file():
            self.load_model()

    def _on_checkpoint(self, _path: Any = None) -> None:
        if self._source.value != CHECKPOINT:
            self._source.value = CHECKPOINT  # calls load_model through _on_source
        else:
            self._on_source(CHECKPOINT)

    def load_model(self) -> Any:
        """Load the chosen model now (once); on failure show why and return None."""
        try:
            net = self.session.model()
        except Exception as exc:  # GUI boundary: any failure becomes a message, never a crash
            self._info.value = "not loaded (see the error message)"
            show_error(f"Could not load the model: {exc}")
            return None
        self._info.value = self.session.model_text()
        return net

    def _on_device(self, choice: str) -> None:
        self.session.device = choice
        self.resolve_device()

    def resolve_device(self, _choice: Any = None) -> str | None:
        """The device the model will run on, shown as e.g. "auto -> cpu"; None if unavailable."""
        choice = self.session.device
        try:
            device = self.session.resolve_device()
        except Exception as exc:  # e.g. cuda asked for on a machine without a GPU
            self._device_info.value = f"{choice}: unavailable"
            show_error(f"Device '{choice}' cannot be used: {exc}")
            return None
        self._device_info.value = f"{choice} -> {device}"
        return device

    def set_running(self, running: bool) -> None:
        """No other model or device while a run uses them."""
        for w in (self._source, self._checkpoint, self._device):
            w.enabled = not running
