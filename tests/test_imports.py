"""Import boundaries: src_model never pulls in a GUI; the napari side's light modules never torch.

Each check runs in a fresh interpreter, because this test process has napari and torch loaded.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = ("napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "PySide2", "magicgui", "vispy")


def run_and_list_modules(code: str) -> set[str]:
    """Run ``code`` in a new interpreter; return the top-level modules it imported."""
    script = textwrap.dedent(code) + "\nimport sys; print('\\n'.join(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"import failed:\n{result.stderr[-3000:]}"
    return {name.split(".")[0] for name in result.stdout.split()}


def test_src_model_and_metrics_import_no_gui_and_no_torch():
    loaded = run_and_list_modules("import src_model, src_model.metrics")
    assert not loaded & {*GUI_MODULES, "torch"}, sorted(loaded & {*GUI_MODULES, "torch"})


def test_no_src_model_module_imports_a_gui():
    # Walk whatever modules src_model has now, so new files are covered without edits here.
    loaded = run_and_list_modules(
        """
        import importlib, pkgutil, src_model
        failed = []
        for info in pkgutil.walk_packages(src_model.__path__, "src_model."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
        assert not failed, "src_model modules that do not import:\\n" + "\\n".join(failed)
        """
    )
    assert not loaded & set(GUI_MODULES), sorted(loaded & set(GUI_MODULES))


def test_sample_data_imports_no_gui_and_no_torch():
    loaded = run_and_list_modules(
        """
        import importlib, pkgutil, sample_data
        for info in pkgutil.walk_packages(sample_data.__path__, "sample_data."):
            importlib.import_module(info.name)
        """
    )
    assert not loaded & {*GUI_MODULES, "torch"}, sorted(loaded & {*GUI_MODULES, "torch"})


@pytest.mark.parametrize(
    "module",
    [
        "napari_roiseg",
        "napari_roiseg.io.volumes",
        "napari_roiseg.io.reader",
        "napari_roiseg.io.writer",
        "napari_roiseg._sample_data",
        "napari_roiseg.batch",  # `roiseg segment --help` and argument errors stay instant
        "napari_roiseg.cli",
        "napari_roiseg.io",
        "napari_roiseg.project",
        "napari_roiseg.session",  # the docks' shared state: made when a dock opens
    ],
)
def test_napari_side_start_up_modules_do_not_import_torch(module):
    # napari imports readers, writers and sample data at start-up; torch costs seconds.
    assert "torch" not in run_and_list_modules(f"import {module}")
