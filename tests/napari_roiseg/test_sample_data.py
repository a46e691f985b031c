"""The npe2 sample-data contribution: an image + labels pair, and no torch at import or call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from sample_data.phantom import SPACING

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_make_sample_hip_returns_image_and_labels():
    from napari_roiseg._sample_data import make_sample_hip

    layers = make_sample_hip()
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kw, _), (labels, labels_kw, _) = layers
    assert image.shape == labels.shape == (256, 367, 192)
    assert image.dtype == labels.dtype == np.uint8
    assert image_kw["name"] == "hip phantom (seed 0)"
    assert labels_kw["name"] == "acetabulum ground truth"
    assert image_kw["scale"] == labels_kw["scale"] == SPACING
    assert labels.any() and not labels[0].any()


def test_sample_data_module_never_imports_torch():
    code = (
        "import sys\n"
        "import napari_roiseg._sample_data as m\n"
        "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
        "m.SAMPLE_SLICES = 4  # keep the call cheap; the code path is the same\n"
        "layers = m.make_sample_hip()\n"
        "assert layers[0][0].shape[0] == 4\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
