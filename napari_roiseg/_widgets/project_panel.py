"""The project folder of the session and its model versions (current, roll back / forward).

Opening a project here opens it for every dock; with versions, its current one is the model
of the next runs everywhere.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info

from ..model_info import describe_version
from ..project.project import Project
from ..session import Session
from .hooks import ViewerHooks


def open_project(session: Session, folder: Any) -> Project | None:
    """Open ``folder`` as the session's project; None after saying why it failed."""
    try:
        from ..api import prepare_torch_import

        prepare_torch_import()
        return session.open_project(folder)
    except (OSError, ValueError) as exc:
        show_error(f"Cannot open the project: {exc}")
        return None


def ensure_project(session: Session) -> Project | None:
    """The session's project; the image's default folder is opened when none was chosen."""
    if session.project is None:
        folder = session.default_project_folder()
        if folder is None:
            show_error("Choose the image (or open a project folder) first.")
            return None
        if open_project(session, folder) is not None:
            show_info(f"Corrections, model versions and the review history are saved in "
                      f"{folder} (choose another folder under 'project' to move them).")
    return session.project


class ProjectPanel(Container):
    """Project folder and Open; with ``versions``, the current version and a version list."""

    def __init__(self, session: Session, versions: bool = True) -> None:
        super().__init__(labels=True)
        self.session = session
        self._project_dir = FileEdit(label="project", mode="d")
        self._open_button = PushButton(text="Open project")
        self.extend([self._project_dir, self._open_button])
        self._version_info = Label(label="current")
        self._version_info.native.setWordWrap(True)
        self._versions = ComboBox(label="versions", choices=[])
        self._use_button = PushButton(text="Use this version",
                                      tooltip="roll back (or forward) to the version chosen")
        if versions:
            self.extend([self._version_info, self._versions, self._use_button])
        self.margins = (0, 0, 0, 0)
        self._open_button.changed.connect(lambda: self.open_project(self._project_dir.value))
        self._use_button.changed.connect(lambda: self.use_version())
        self.follow_session()

    def hook(self, hooks: ViewerHooks) -> None:
        hooks.connect(self.session.events.project, "follow_session", self)
        hooks.connect(self.session.events.model, "follow_session", self)

    def open_project(self, folder: Any) -> Project | None:
        return open_project(self.session, folder)

    def follow_session(self, *_args: Any) -> None:
        """Show the session's project and its versions."""
        project = self.session.project
        if project is not None and self._project_dir.value != project.folder:
            with self._project_dir.changed.blocked():
                self._project_dir.value = project.folder
        versions = project.versions if project else {}
        with self._versions.changed.blocked():
            self._versions.choices = [(describe_version(n, i), n) for n, i in versions.items()]
            current = project.current_version if project else None
            if current:
                self._versions.value = current
        self._version_info.value = (describe_version(current, versions[current]) if current
                                    else "starting model (saved as v000 when a project is used)")

    def use_version(self, name: str | None = None) -> Any:
        """Make version ``name`` (default: the one chosen) current, for every dock."""
        if self.session.project is None:
            return None
        name = name or self._versions.value
        try:
            net = self.session.use_version(name)
        except (OSError, ValueError) as exc:
            show_error(str(exc))
            return None
        self.follow_session()
        return net

    def set_running(self, running: bool) -> None:
        for w in (self._open_button, self._use_button, self._project_dir):
            w.enabled = not running
