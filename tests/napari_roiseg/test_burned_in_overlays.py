"""The engine keeps ROIs off burned-in scanner overlays: on phantom v2 sweeps (text, depth ruler,
bars, logo burned into every frame) the shipped model's boxes on overlays are dropped before the
test filter, and the structure is still found. Seeds 9104 and 9123 are used by nothing
else (the overlay check reads 8001-8025, the filter sweep 9001-9020)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_roiseg.segment import load_model, segment_array  # noqa: E402
from src_model.metrics import evaluate_masks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from overlay_check import overlay_hits  # noqa: E402


def _on_overlays(result, ph) -> int:
    return len(overlay_hits(result.boxes, ph.style["overlays"]))


@pytest.mark.parametrize("seed", [9104, 9123])
def test_boxes_on_burned_in_overlays_are_dropped_and_the_structure_kept(seed):
    from sample_data.phantom_v2 import make_phantom_v2

    ph = make_phantom_v2(seed, n_slices=6)
    model = load_model(None)
    plain = segment_array(ph.volume, model, spacing=ph.spacing, skip_overlays=False)
    kept = segment_array(ph.volume, model, spacing=ph.spacing)  # the default
    assert _on_overlays(plain, ph) > 0  # the shipped model does fire on these overlays
    assert _on_overlays(kept, ph) == 0
    assert not kept.labels[:, ph.overlay_mask].any()
    # The structure's boxes are never dropped: it is found as before (the dropped boxes'
    # places in the top-k can go to weaker tissue boxes, as on a frame without overlays).
    before = evaluate_masks(plain.labels, ph.labels)["pooled"]["recall"]
    after = evaluate_masks(kept.labels, ph.labels)["pooled"]["recall"]
    assert after >= before - 1e-6 and after > 0.5


def test_one_frame_and_a_still_stack_are_segmented_as_before():
    """No frame-to-frame evidence, no change: a single frame, or the same frame repeated."""
    from sample_data.phantom_v2 import make_phantom_v2

    ph = make_phantom_v2(9123, n_slices=6)
    model = load_model(None)
    for stack in (ph.volume[2:3], np.repeat(ph.volume[2:3], 4, axis=0)):
        a = segment_array(stack, model, spacing=ph.spacing, skip_overlays=False)
        b = segment_array(stack, model, spacing=ph.spacing)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize("noise", [0.3, 2.0])
def test_a_still_clip_with_a_clipped_echo_keeps_the_structure(noise):
    """A probe held still over a hip whose bony echo is clipped at the display's maximum: every
    frame the same up to the noise, the echo's core 255 in all of them. That core is tissue, not
    an overlay (its rim reaches 255 now and then), and under a fraction of a grey level of noise
    the clip is too still to tell overlays at all; either way the structure is found in the clip
    as in its single frames. Phantom seed 9311 is used by nothing else."""
    from sample_data.phantom import make_phantom

    ph = make_phantom(9311, n_slices=40)
    z = int(np.argmax(ph.labels.sum(axis=(1, 2))))
    rng = np.random.default_rng(0)
    clip = np.clip(ph.volume[z] * 1.6 + rng.normal(0, noise, (8, *ph.volume.shape[1:])), 0, 255)
    clip = clip.round().astype(np.uint8)
    truth = np.repeat(ph.labels[z:z + 1], len(clip), axis=0)
    assert (clip[:, truth[0] > 0] == 255).all(axis=0).mean() > 0.3  # clipped in every frame
    model = load_model(None)
    alone = segment_array(clip[:1], model)  # one frame: no frame-to-frame evidence to use
    still = segment_array(clip, model)
    single = evaluate_masks(alone.labels, truth[:1])["pooled"]["dice"]
    assert single > 0.8
    assert evaluate_masks(still.labels, truth)["pooled"]["dice"] >= single - 0.02
