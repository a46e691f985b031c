"""The volume segmentation engine: a slice comes out the same whether run alone or with the rest."""

from __future__ import annotations

import numpy as np
import pytest

from napari_roiseg.segment import segment_array

pytest.importorskip("torch")


def test_slice_alone_equals_slice_in_the_volume_for_float_data(untrained_model):
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=4, n_slices=6, shape=(128, 96))
    vol = ph.volume.astype(np.float32) * 3.7 + 100.0  # non-uint8: volume-wide robust scaling
    vol[0, :4, :4] = 1e5  # outliers in one slice only
    model = untrained_model()
    whole = segment_array(vol, model, device="cpu", batch_size=4)
    alone = segment_array(vol, model, device="cpu", slices=[3])
    assert whole.complete and alone.done.tolist() == [False, False, False, True, False, False]
    np.testing.assert_array_equal(alone.labels[3], whole.labels[3])
    rows = whole.boxes[whole.boxes[:, 0] == 3]
    np.testing.assert_allclose(alone.boxes, rows, rtol=1e-5)
