"""What a dock hooks into the viewer and the session, undone when the dock goes.

Every viewer or session event a dock listens to, and every key it binds in the viewer's keymap,
goes through one :class:`ViewerHooks`. Nothing in it holds the dock but through a weak
reference, and :meth:`ViewerHooks.undo` needs only the viewer, so it can run after the dock is
gone. :class:`HookedDock` undoes them when the dock is closed, taken out of its dock area
(napari's close button does that) or deleted, and hooks again when it is docked again.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout, QWidget


class ViewerHooks:
    """Connections and key bindings of one dock (see the module docstring)."""

    def __init__(self, viewer: Any, owner: Any) -> None:
        self.viewer = viewer
        self.owner = weakref.ref(owner)
        self.closed = False
        self.connections: list[tuple[Any, Callable[..., Any]]] = []
        self.keys: dict[str, tuple[Callable[..., Any], Any]] = {}  # key -> (ours, the previous)

    def forward(self, name: str, target: Any = None) -> Callable[..., Any]:
        """A callable that calls ``target.<name>(*args)`` (default target: the owner) while
        the dock is open; ``target`` is held weakly too."""
        ref = weakref.ref(target) if target is not None else self.owner

        def call(*args: Any) -> Any:
            obj = ref()
            if not self.closed and obj is not None:
                return getattr(obj, name)(*args)
            return None

        return call

    def connect(self, emitter: Any, name: str, target: Any = None) -> None:
        """Connect ``emitter`` (a napari or psygnal event) to ``target.<name>``."""
        callback = self.forward(name, target)
        emitter.connect(callback)
        self.connections.append((emitter, callback))

    def bind_key(self, key: str, method: str, *args: Any, target: Any = None) -> Any:
        """Bind ``key`` in the viewer's keymap to ``target.<method>(*args)``; returns what was
        bound to it before (given back by :meth:`undo`)."""
        forward = self.forward(method, target)

        def on_key(_viewer: Any) -> None:
            forward(*args)

        previous = self.viewer.bind_key(key, on_key, overwrite=True)
        on_key.roiseg_hooks, on_key.roiseg_previous = self, previous  # type: ignore[attr-defined]
        self.keys[key] = (on_key, previous)
        return previous

    def undo(self, *_args: Any) -> None:
        """Disconnect the events and give the keys back (once; safe after the dock is gone)."""
        if self.closed:
            return
        self.closed = True
        for emitter, callback in self.connections:
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)
        self.connections.clear()
        if not self.keys:
            return
        from napari.utils.key_bindings import coerce_keybinding

        keymap = getattr(self.viewer, "keymap", {})
        for key, (ours, previous) in self.keys.items():
            # skip bindings of other docks closed meanwhile: give back what they took
            while getattr(getattr(previous, "roiseg_hooks", None), "closed", False):
                previous = previous.roiseg_previous
            with contextlib.suppress(Exception):  # e.g. a viewer being torn down
                if keymap.get(coerce_keybinding(key)) is ours:  # not rebound by someone since
                    self.viewer.bind_key(key, previous, overwrite=True)  # None: unbind
        self.keys.clear()


class HookedDock(QWidget):
    """A dock whose viewer and session hooks live exactly as long as it is docked and open.

    Subclasses make their hooks in :meth:`hook` (called now and when docked again) through
    ``self.hooks``; :meth:`unhook` undoes them.
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.hooks: ViewerHooks | None = None

    def start_hooks(self) -> None:
        hooks = self.hooks = ViewerHooks(self.viewer, self)
        self.hook(hooks)
        # after a deletion the dock is gone: the lambda holds only the hooks
        self.destroyed.connect(lambda *_args, hooks=hooks: hooks.undo())

    def hook(self, hooks: ViewerHooks) -> None:
        """Connect what the dock listens to (override)."""

    def unhook(self) -> None:
        if self.hooks is not None:
            self.hooks.undo()
            self.hooks = None

    def closeEvent(self, event: Any) -> None:
        self.unhook()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None:  # taken out of its dock (napari's close button does that)
                self.unhook()
            elif getattr(self, "hooks", False) is None:  # docked again
                self.start_hooks()
        return super().event(event)


class Panel(QWidget):
    """A step's panel made of Qt parts (a list, a plot) and magicgui forms; ``native`` is
    itself, as for the magicgui panels, so that docks can lay out either kind alike."""

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

    @property
    def native(self) -> QWidget:
        return self

    def add(self, *parts: Any) -> None:
        """Append magicgui widgets or Qt widgets, in order."""
        for part in parts:
            self.layout().addWidget(getattr(part, "native", part))


class SessionDock(HookedDock):
    """A dock that arranges panels over the viewer's session, one under the other.

    ``FORWARD`` names the panels' attributes the dock answers for (an explicit list: napari
    looks up attributes such as ``native`` on docks, which must stay the dock's own).
    """

    FORWARD: dict[str, tuple[str, ...]] = {}

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer)
        from ..session import get_session

        self.session = get_session(viewer)
        self.parts: tuple[Any, ...] = ()

    def arrange(self, *parts: Any) -> None:
        """Lay out ``parts`` (magicgui or Qt panels) and start their hooks."""
        self.parts = parts
        layout = QVBoxLayout(self)
        for part in parts:
            layout.addWidget(getattr(part, "native", part))
        self.start_hooks()

    def hook(self, hooks: ViewerHooks) -> None:
        for part in self.parts:
            part.hook(hooks)

    def unhook(self) -> None:
        for part in self.parts:
            if "unhook" in type(part).__dict__:  # panels that hold more than hooks
                part.unhook()
        super().unhook()

    # what scripts and tests reach for
    @property
    def project(self) -> Any:
        return self.session.project

    @property
    def image_layer(self) -> Any:
        return self.session.image_layer

    @property
    def labels_layer(self) -> Any:
        return self.session.mask_layer

    def __getattr__(self, name: str) -> Any:
        for part, names in type(self).FORWARD.items():
            if name in names and part in self.__dict__:
                return getattr(self.__dict__[part], name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
