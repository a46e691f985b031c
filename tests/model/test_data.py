"""src_model.data: GT boxes, the slice dataset, augmentation, collation, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from src_model.data import (
    SliceDataset,
    UltrasoundAugment,
    collate_slices,
    flip_boxes,
    gt_box_from_mask,
    split_by_volume,
)

NO_INTENSITY = dict(gamma=(1.0, 1.0), gain=(1.0, 1.0), speckle_sigma=(0.0, 0.0), shift=(0.0, 0.0))


def toy_volume(n: int = 10, positive=(3, 4, 5), h: int = 12, w: int = 16, seed: int = 0):
    """uint8 volume with an off-centre object (labels value 2) on the ``positive`` slices."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    lab = np.zeros((n, h, w), np.uint8)
    for s in positive:
        lab[s, 2:5, 3:7] = 2
        lab[s, 7, 1] = 2
    return vol, lab


def test_gt_box_is_tight_with_exclusive_end():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 1  # rows 2..4, cols 3..6
    mask[7, 1] = 5      # an isolated pixel (any non-zero label) widens the box
    box = gt_box_from_mask(mask)
    assert box.dtype == np.float32 and box.shape == (1, 4)
    np.testing.assert_array_equal(box, [[1, 2, 7, 8]])  # x1, y1, x2 = max col + 1, y2 = max row + 1
    single = np.zeros((4, 4), bool)
    single[1, 2] = True
    np.testing.assert_array_equal(gt_box_from_mask(single), [[2, 1, 3, 2]])  # area 1 pixel


def test_gt_box_of_empty_mask_and_bad_shape():
    box = gt_box_from_mask(np.zeros((5, 6), np.uint8))
    assert box.shape == (0, 4) and box.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        gt_box_from_mask(np.zeros((2, 5, 6)))


def test_item_contract_and_normalisation():
    vol, lab = toy_volume()
    ds = SliceDataset([(vol, lab)])
    image, target = ds[3]
    assert image.shape == (1, 12, 16) and image.dtype == torch.float32
    torch.testing.assert_close(image[0], torch.from_numpy(vol[3]).float() / 255)
    assert set(target) == {"boxes", "masks"}
    assert target["masks"].dtype == torch.int64 and target["masks"].shape == (12, 16)
    assert set(target["masks"].unique().tolist()) == {0, 1}  # label 2 becomes 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2.0, 7.0, 8.0]]))
    _, empty = ds[0]
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert ds.locate(3) == (0, 3)


def test_non_uint8_volumes_are_normalised_like_inference():
    from src_model.preprocess import normalize_slices

    vol, lab = toy_volume()
    vol16 = vol.astype(np.uint16) * 100
    ds = SliceDataset([(vol16, lab)])
    expected = normalize_slices(vol16)[5]
    np.testing.assert_allclose(ds[5][0][0].numpy(), expected)
    with pytest.raises(ValueError, match="same shape"):
        SliceDataset([(vol, lab[:, :, :3])])


def test_negatives_option():
    vol, lab = toy_volume(n=10, positive=(3, 4, 5))  # 3 positive, 7 negative slices
    a = SliceDataset([(vol, lab)], negatives="all")
    assert len(a) == 10 and (a.n_positive, a.n_negative) == (3, 7)
    b = SliceDataset([(vol, lab)], negatives="none")
    assert [s for _, s in b.index.tolist()] == [3, 4, 5]
    c = SliceDataset([(vol, lab)], negatives=0.5, seed=1)
    assert (c.n_positive, c.n_negative) == (3, 4)  # round(0.5 * 7) = 4
    kept = {s for _, s in c.index.tolist()}
    assert {3, 4, 5} <= kept and len(kept) == 7
    again = SliceDataset([(vol, lab)], negatives=0.5, seed=1)
    np.testing.assert_array_equal(c.index, again.index)  # deterministic from the seed
    assert np.all(np.diff(c.index[:, 1]) > 0)  # kept in slice order
    for bad in ("some", 1.5, -0.1, True, None):
        with pytest.raises(ValueError, match="negatives"):
            SliceDataset([(vol, lab)], negatives=bad)


def test_several_volumes_and_2d_slices_are_indexed_in_order():
    v1, l1 = toy_volume(n=4, positive=(1,))
    v2, l2 = toy_volume(n=3, positive=(0, 2), seed=1)
    ds = SliceDataset([(v1, l1), (v2[0], l2[0]), (v2, l2)], volume_ids=["a", "b", "c"])
    assert len(ds) == 4 + 1 + 3
    assert ds.locate(4) == ("b", 0) and ds.locate(7) == ("c", 2)
    torch.testing.assert_close(ds[4][0][0], torch.from_numpy(v2[0]).float() / 255)


def test_flip_keeps_image_mask_and_box_consistent():
    vol, lab = toy_volume()
    ds = SliceDataset([(vol, lab)], augment=UltrasoundAugment(flip_p=1.0, **NO_INTENSITY))
    image, target = ds[4]
    np.testing.assert_allclose(image[0].numpy(), vol[4, :, ::-1] / 255, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(target["masks"].numpy(), (lab[4, :, ::-1] != 0))
    box = target["boxes"].numpy()
    np.testing.assert_array_equal(box, gt_box_from_mask(lab[4, :, ::-1]))
    np.testing.assert_array_equal(box, flip_boxes(gt_box_from_mask(lab[4]), width=16))
    np.testing.assert_array_equal(box, [[16 - 7, 2, 16 - 1, 8]])


def test_augmentation_is_reproducible_and_fresh_on_each_draw():
    vol, lab = toy_volume()
    aug = UltrasoundAugment(flip_p=0.0)
    a = SliceDataset([(vol, lab)], augment=aug, seed=7)
    b = SliceDataset([(vol, lab)], augment=aug, seed=7)
    first_a, first_b = a[4][0], b[4][0]
    torch.testing.assert_close(first_a, first_b)           # same seed, same fetch: same image
    assert not torch.equal(a[4][0], first_a)                # drawn again: a new augmentation
    assert not torch.equal(first_a[0], torch.from_numpy(vol[4]).float() / 255)
    assert 0.0 <= float(first_a.min()) and float(first_a.max()) <= 1.0
    np.testing.assert_array_equal(a[4][1]["masks"].numpy(), lab[4] != 0)  # no flip: mask kept
    assert not torch.equal(SliceDataset([(vol, lab)], augment=aug, seed=8)[4][0], first_a)


def test_augment_true_uses_the_default_policy():
    vol, lab = toy_volume()
    assert SliceDataset([(vol, lab)], augment=True).augment == UltrasoundAugment()
    assert SliceDataset([(vol, lab)], augment=False).augment is None


def test_collate_stacks_and_rejects_mixed_sizes():
    vol, lab = toy_volume()
    ds = SliceDataset([(vol, lab)])
    images, targets = collate_slices([ds[0], ds[3], ds[4]])
    assert images.shape == (3, 1, 12, 16) and len(targets) == 3
    assert targets[1]["boxes"].shape == (1, 4) and targets[0]["boxes"].shape == (0, 4)
    other = SliceDataset([toy_volume(h=10, w=16)])
    with pytest.raises(ValueError, match="same size"):
        collate_slices([ds[0], other[0]])
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_slices)
    images, targets = next(iter(loader))
    assert images.shape == (4, 1, 12, 16) and len(targets) == 4


def test_split_by_volume_never_shares_a_volume():
    ids = [f"vol{i}" for i in range(10)]
    per_slice = [v for v in ids for _ in range(5)]  # one id per slice
    train, test = split_by_volume(per_slice, test_fraction=0.3, seed=0)
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(ids)
    assert len(test) == 3 and len(train) == 7
    assert (train, test) == split_by_volume(ids, test_fraction=0.3, seed=0)  # same split
    assert train == [v for v in ids if v in train]  # order of first appearance
    assert split_by_volume(ids, 0.3, seed=1) != (train, test)
    assert split_by_volume(["a", "b"], 0.01)[1] and split_by_volume(["a", "b"], 0.99)[0]  # 1 each
    with pytest.raises(ValueError, match="two"):
        split_by_volume(["a", "a"])
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_volume(ids, test_fraction=1.0)


def test_slices_of_several_sizes_train_in_batches_of_one_size():
    from src_model.data import SizeGroupedSampler, SliceDataset, collate_slices, mixed_sizes

    def pair(h, w, n):
        vol = np.zeros((n, h, w), np.uint8)
        lab = np.zeros_like(vol)
        lab[:, 5:9, 5:9] = 1
        return vol, lab

    ds = SliceDataset([pair(40, 32, 6), pair(48, 40, 2), pair(40, 32, 3)])
    assert mixed_sizes(ds) and not mixed_sizes(SliceDataset([pair(40, 32, 2)]))
    stream = iter(SizeGroupedSampler(ds, batch_size=4, seed=0))
    seen = set()
    for _ in range(40):
        batch = [ds[next(stream)] for _ in range(4)]
        images, _ = collate_slices(batch)  # raises if the sizes differ
        seen.add(tuple(images.shape[-2:]))
    assert seen == {(40, 32), (48, 40)}
