"""Suite-wide set-up.

torchvision is imported before any napari canvas exists: CUDA builds of torch ship triton, whose
bundled LLVM crashes a process in which Mesa's software OpenGL (Xvfb) has already loaded the
system libLLVM. The application avoids this with ``napari_roiseg.api.prepare_torch_import``; the
suite imports torchvision first so no test depends on collection order.

On a machine with no display (no ``DISPLAY``, no Xvfb for pytest-xvfb to start), Qt aborts the
whole process the first time a test makes a window. So tests that need one (the ``gui`` marker,
or any of the Qt fixtures below) are skipped there, with one line saying how to run them;
Qt's ``offscreen`` platform is no way out: napari's canvas needs OpenGL, which it lacks.
"""

from __future__ import annotations

import os
import sys

import pytest
import torchvision  # noqa: F401

# Sessions run models in napari threads unless a test asks for the model process: most tests
# hand the widgets an in-memory model with hooks, and a process costs seconds to start.
# tests/napari_roiseg/test_worker_process.py covers the process path.
os.environ.setdefault("NAPARI_ROISEG_WORKER", "thread")

QT_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp", "viewer_model"}
NO_DISPLAY_REASON = (
    "no display: GUI tests skipped (install Xvfb, e.g. `apt install xvfb`, for pytest-xvfb to "
    "start one, or run under `xvfb-run -a`, or with DISPLAY set)"
)


def _has_display() -> bool:
    """Whether Qt can open windows here. Read after plugins are configured: pytest-xvfb sets
    ``DISPLAY`` when it starts Xvfb."""
    if not sys.platform.startswith("linux"):
        return True  # macOS and Windows always have a window system
    if os.environ.get("QT_QPA_PLATFORM", "xcb") not in ("xcb", "wayland", ""):
        return True  # the user chose a platform; trust them
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _needs_gui(item: pytest.Item) -> bool:
    return (item.get_closest_marker("gui") is not None
            or bool(QT_FIXTURES & set(getattr(item, "fixturenames", ()))))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_display():
        return
    skip = pytest.mark.skip(reason=NO_DISPLAY_REASON)
    skipped = 0
    for item in items:
        if _needs_gui(item):
            item.add_marker(skip)
            skipped += 1
    config.stash[_SKIPPED] = skipped


_SKIPPED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    skipped = config.stash.get(_SKIPPED, 0)
    if skipped:
        terminalreporter.write_line(f"{skipped} tests skipped -- {NO_DISPLAY_REASON}",
                                    yellow=True, bold=True)
