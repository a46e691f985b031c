"""Annotations are never lost: a finished paint stroke is in the project folder at once, and a
napari killed with SIGKILL gives the painted labels back in the next session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[2]

_SESSION = textwrap.dedent("""
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_roiseg._widgets import FinetuneWidget

    volume, project, mode = sys.argv[1:4]
    viewer = napari.Viewer(show=False)
    viewer.open(volume, plugin="napari-roiseg")
    image = viewer.layers[0]
    if mode == "paint":
        labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="hip corrections",
                                   metadata={"roiseg_prediction": np.zeros(image.data.shape,
                                                                           np.uint8)})
    widget = FinetuneWidget(viewer, project=project)
    if mode == "paint":
        widget.select(image=image, labels=labels)
        labels.brush_size = 5
        labels.selected_label = 1
        for where in ((2, 20, 30), (3, 40, 12)):  # two strokes, as the mouse makes them
            labels._begin_stroke()  # napari's draw() mouse binding: press
            labels.paint(where, 1)  # drag
            labels._commit_stroke()  # release: one undo item, the paint event
        print("PAINTED", int((labels.data != 0).sum()), flush=True)
        time.sleep(600)  # the user goes on working; napari is killed here
    else:
        QApplication.processEvents()
        layer = viewer.layers["hip corrections"]
        np.save(sys.argv[4], np.asarray(layer.data))
        print("RESTORED", flush=True)
""")


@pytest.mark.gui
def test_painted_labels_survive_a_killed_napari(tmp_path):
    volume = tmp_path / "hip volume ü.tif"
    data = np.random.default_rng(0).integers(0, 200, (4, 64, 64), dtype=np.uint8)
    tifffile.imwrite(volume, data, photometric="minisblack")
    project = tmp_path / "project"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("QT_QPA_PLATFORM", "offscreen" if "DISPLAY" not in env else "xcb")
    first = subprocess.Popen([sys.executable, "-c", _SESSION, str(volume), str(project), "paint"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = first.stdout.readline().decode()
        assert line.startswith("PAINTED"), first.stderr.read().decode()[-3000:] if \
            first.poll() is not None else line
        painted = int(line.split()[1])
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL and painted > 0
    out = tmp_path / "restored.npy"
    second = subprocess.run([sys.executable, "-c", _SESSION, str(volume), str(project),
                             "restore", str(out)], capture_output=True, env=env, timeout=120)
    assert b"RESTORED" in second.stdout, second.stderr.decode()[-3000:]
    restored = np.load(out)
    assert restored.shape == data.shape and int((restored != 0).sum()) == painted
    assert restored[2, 20, 30] == 1 and restored[3, 40, 12] == 1
    assert not restored[[0, 1]].any()
