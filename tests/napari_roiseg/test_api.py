"""napari_roiseg.api.segment_volume: arrays and Image layers in, (labels, boxes) out, layers shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# At collection, before any test draws with OpenGL: see api.prepare_torch_import for the crash
# that importing torchvision (and with it triton) after Mesa's llvmpipe causes.
pytest.importorskip("torchvision")

from napari_roiseg.api import segment_volume  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net():
    """A small untrained fast-preset model whose mask is non-empty inside its ROIs."""
    from src_model.config import get_preset
    from src_model.model import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("fast")).eval()
    with torch.no_grad():
        model.head.score.bias[:] = torch.tensor([-2.0, 2.0])
    return model


@pytest.fixture(scope="module")
def phantom():
    from sample_data.phantom import make_phantom

    return make_phantom(seed=0, n_slices=4, shape=(128, 96))


def _imports(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_api_import_is_cheap():
    # api and layers: neither torch nor napari; the widgets: napari, never torch
    assert _imports("import sys, napari_roiseg.api, napari_roiseg.layers; "
                    "print('torch' in sys.modules, 'napari' in sys.modules)") == "False False"
    assert _imports("import sys, napari_roiseg._widgets; print('torch' in sys.modules)") == "False"


def test_segment_array(phantom, net):
    labels, boxes = segment_volume(phantom.volume, model=net, device="cpu", batch_size=2)
    assert labels.shape == phantom.volume.shape and labels.dtype == np.uint8
    assert boxes.ndim == 2 and boxes.shape[1] == 6 and len(boxes)
    assert set(np.unique(boxes[:, 0]).astype(int)) <= set(range(4))
    assert labels.any()


def test_model_level_top_k_limits_boxes(phantom, net):
    _, boxes = segment_volume(phantom.volume[:2], model=net, device="cpu", top_k=2)
    assert np.bincount(boxes[:, 0].astype(int)).tolist() == [2, 2]


def test_segment_2d_slice(phantom, net):
    labels, boxes = segment_volume(phantom.volume[1], model=net, device="cpu")
    assert labels.shape == phantom.volume.shape[1:]
    assert (boxes[:, 0] == 0).all()


def test_segment_layer_adds_aligned_layers(make_napari_viewer, phantom, net):
    viewer = make_napari_viewer()
    image = viewer.add_image(phantom.volume, name="hip", scale=phantom.spacing)
    labels, boxes = segment_volume(image, model=net, device="cpu", viewer=viewer)
    mask, shapes = viewer.layers["hip mask"], viewer.layers["hip boxes"]
    np.testing.assert_array_equal(mask.data, labels)
    assert mask.data is not labels  # painting in napari must not change the returned array
    np.testing.assert_allclose(mask.scale, image.scale)
    np.testing.assert_allclose(shapes.scale, image.scale)
    # default display limits: score >= 0.5, at most 3 per slice
    assert 0 < shapes.nshapes <= 3 * len(phantom.volume)
    assert (shapes.features["score"] >= 0.5).all()
    for vertices, s in zip(shapes.data, shapes.features["slice"]):
        assert (vertices[:, 0] == s).all()


def test_rgb_layer_is_refused_with_advice(make_napari_viewer, net):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(ValueError, match="grayscale"):
        segment_volume(layer, model=net)


@pytest.mark.gui  # the canvas needs a display
def test_torch_loads_after_an_opengl_canvas():
    """With a canvas drawn first (Mesa llvmpipe under Xvfb maps libLLVM), loading the model
    stack must not crash the process; this is what happens when a widget loads the model."""
    code = (
        "import vispy.scene; canvas = vispy.scene.SceneCanvas(show=False)\n"
        "from napari_roiseg.api import prepare_torch_import; prepare_torch_import()\n"
        "import torch; from src_model.model import build_model; from src_model.config import get_preset\n"
        "net = build_model(get_preset('fast')).eval()\n"
        "print(len(net(torch.rand(1, 1, 32, 32))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"
