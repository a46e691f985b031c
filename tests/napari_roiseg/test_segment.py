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


def _reference(model, volume, batch_size=1, **filters):
    """Batches straight through the model's forward (no NMS pre-filter, no batching of the
    results): the unoptimised path the volume engine must reproduce exactly. (oneDNN may round
    differently for other batch sizes, so comparisons beyond the shipped model use the same.)"""
    import torch

    labels = np.zeros(volume.shape, np.uint8)
    rows = []
    model.eval()
    for start in range(0, len(volume), batch_size):
        chunk = volume[start : start + batch_size].astype(np.float32) / np.float32(255.0)
        with torch.inference_mode():
            outputs = model(torch.from_numpy(chunk)[:, None], **filters)
        for k, out in enumerate(outputs, start):
            labels[k] = out["mask"].numpy()
            b, s = out["boxes"].numpy(), out["scores"].numpy()
            rows += [[k, y1, x1, y2, x2, sc] for (x1, y1, x2, y2), sc in zip(b, s)]
    return labels, np.asarray(rows, np.float32).reshape(-1, 6)


@pytest.mark.parametrize("batch_size", [None, 1, 8])
def test_optimised_volume_path_matches_plain_forward_with_shipped_model(batch_size):
    """Shipped default (score threshold 0.5, top-1), full-size phantom slices with the object:
    labels and boxes identical to per-slice forward calls."""
    from napari_roiseg.segment import load_model
    from sample_data.phantom import make_phantom

    ph = make_phantom(seed=11, n_slices=24)
    vol = ph.volume[6:18]  # mostly slices with the acetabulum
    model = load_model()
    got = segment_array(vol, model, device="cpu", batch_size=batch_size)
    labels, boxes = _reference(model, vol)
    assert labels.any() and len(boxes)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.boxes, boxes)


def test_nms_prefilter_keeps_every_box_with_many_proposals(untrained_model):
    """Hundreds of proposals, a threshold in the middle of their scores, no top-k: the boxes
    that survive NMS after pre-filtering are exactly those surviving NMS and then the filter."""
    from sample_data.phantom import make_phantom

    vol = make_phantom(seed=5, n_slices=4, shape=(160, 128)).volume
    model = untrained_model()
    for threshold in (0.0, 0.45, 0.5, 0.55):
        got = segment_array(vol, model, device="cpu", batch_size=4, score_threshold=threshold)
        labels, boxes = _reference(model, vol, batch_size=4, score_threshold=threshold)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(got.boxes, boxes)
    assert model.rpn.score_thresh == 0.0  # the pre-filter is undone after every batch


def test_memory_mapped_output_is_filled_and_released(tmp_path, untrained_model):
    """The CLI's streaming set-up: memory-mapped input and a labels TIFF written in place."""
    import tifffile

    from napari_roiseg.io.writers import labels_tiff_memmap
    from napari_roiseg.segment import VolumeSegmentation
    from napari_roiseg.io.volumes import read_volume, write_volume_tiff
    from sample_data.phantom import make_phantom

    vol = make_phantom(seed=2, n_slices=10, shape=(96, 80)).volume
    write_volume_tiff(tmp_path / "v.tif", vol, spacing=(2.0, 0.5, 0.25))
    src = read_volume(tmp_path / "v.tif", mmap=True)
    assert isinstance(src.data.base, np.memmap) or isinstance(src.data, np.memmap)
    model = untrained_model()
    expected = segment_array(vol, model, device="cpu", batch_size=3)
    with labels_tiff_memmap(tmp_path / "l.tif", vol.shape, spacing=src.spacing) as labels:
        out = VolumeSegmentation(labels, np.zeros((0, 6), np.float32), np.zeros(len(vol), bool))
        segment_array(src.data, model, device="cpu", batch_size=3, out=out)
        del out
    del labels
    written = read_volume(tmp_path / "l.tif")
    np.testing.assert_array_equal(np.asarray(written.data), expected.labels)
    assert written.spacing == pytest.approx((2.0, 0.5, 0.25))
    with pytest.raises(RuntimeError), labels_tiff_memmap(tmp_path / "x.tif", vol.shape):
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "v.tif"]
    assert tifffile.TiffFile(tmp_path / "l.tif").is_imagej


def test_slice_indices_outside_the_volume_are_refused():
    """Consecutive indices are read as one span; one past the end must not be dropped silently."""
    import pytest

    from napari_roiseg.segment import segment_array

    volume = np.zeros((3, 32, 32), np.uint8)
    for bad in ([2, 3], [-1], [5]):
        with pytest.raises(IndexError, match="outside the volume"):
            segment_array(volume, object(), slices=bad)


@pytest.mark.parametrize("error", ["cuda", "cpu"])
def test_out_of_memory_halves_the_batch_and_gives_the_same_result(untrained_model, error):
    """A forward pass that runs out of memory with more than 2 slices (CUDA's error, or the CPU
    allocator's) is retried with half the batch, with a warning; the result is the same, and
    the rest of the volume keeps the smaller batch."""
    import torch

    from sample_data.phantom import make_phantom

    vol = make_phantom(seed=5, n_slices=9, shape=(96, 80)).volume
    model = untrained_model()
    want = segment_array(vol, model, device="cpu", batch_size=2)
    sizes: list[int] = []

    def oom_above_two(module, args):
        sizes.append(len(args[0]))
        if len(args[0]) > 2:
            raise (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                   if error == "cuda" else
                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                "allocate 123456789 bytes"))

    model.register_forward_pre_hook(oom_above_two)
    with pytest.warns(RuntimeWarning) as record:
        got = segment_array(vol, model, device="cpu", batch_size=8)
    assert [str(w.message) for w in record] == [
        "out of memory with 8 slices per batch on cpu: continuing with 4",
        "out of memory with 4 slices per batch on cpu: continuing with 2"]
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {2, 1}  # no retry at 8 or 4 again
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=1e-5)
    assert got.complete


def test_out_of_memory_with_one_slice_says_what_to_do(untrained_model):
    import torch

    model = untrained_model()

    def oom(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.register_forward_pre_hook(oom)
    with pytest.warns(RuntimeWarning), pytest.raises(
            MemoryError, match=r"out of memory segmenting a single slice on cpu: close other "
                               r"programs .* or run on the CPU"):
        segment_array(np.zeros((3, 64, 48), np.uint8), model, device="cpu", batch_size=2)


def test_other_errors_are_not_retried(untrained_model):
    model = untrained_model()
    calls = []

    def boom(module, args):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    model.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        segment_array(np.zeros((3, 64, 48), np.uint8), model, device="cpu", batch_size=2)
    assert calls == [1]
