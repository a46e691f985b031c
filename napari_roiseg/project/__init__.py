"""A project folder and what it holds: model versions (``project``), the corrected slices
(``corrections``), the correction history, locked set and gate (``history``), the review report
(``report``), and the folder lock that lets several writers share it (``locking``). No napari
or Qt; torch only where a model version is saved or loaded.
"""

from __future__ import annotations

from .locking import FolderLock, SharedJson, claim_numbered_file, folder_lock
from .project import Project, default_project_folder, metrics_summary

__all__ = ["FolderLock", "Project", "SharedJson", "claim_numbered_file", "default_project_folder",
           "folder_lock", "metrics_summary"]
