"""Training data: slices of labelled volumes as a torch ``Dataset``, GT boxes, augmentation, splits.

Items follow the model's forward contract (docs/architecture.md)::

    image, target = dataset[i]
    image                 Tensor[1, H, W] float32 in [0, 1]   (as preprocess.normalize_slices)
    target["boxes"]       Tensor[K, 4] float32, K = 0 or 1    (x1, y1, x2, y2; see gt_box_from_mask)
    target["masks"]       Tensor[H, W] int64, 0/1

``collate_slices`` stacks items into ``(Tensor[N, 1, H, W], list of targets)``.
Split train/test with ``split_by_volume`` before building datasets: neighbouring slices of one
volume are near-duplicates, so a volume must never be on both sides.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .preprocess import normalize_slices

__all__ = [
    "gt_box_from_mask",
    "flip_boxes",
    "UltrasoundAugment",
    "SliceDataset",
    "collate_slices",
    "SizeGroupedSampler",
    "mixed_sizes",
    "split_by_volume",
]


def gt_box_from_mask(mask: np.ndarray) -> np.ndarray:
    """The one tight box around all foreground (``!= 0``) pixels of a slice.

    Returns ``float32 [1, 4]`` = ``x1, y1, x2, y2`` with ``x1, y1`` the first foreground column
    and row and ``x2 = last column + 1``, ``y2 = last row + 1``: the box ``[x1, x2) x [y1, y2)``
    covers exactly the foreground pixels' extent and its area ``(x2 - x1) * (y2 - y1)`` is that
    extent in pixels (torchvision's continuous-coordinate convention, where pixel ``c`` spans
    ``[c, c + 1)``). An empty mask gives ``float32 [0, 4]``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"gt_box_from_mask expects one slice (H, W), got shape {m.shape}")
    m = m != 0
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 4), np.float32)
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes ``[K, 4]`` (x2 exclusive) of a slice ``width`` wide, after a left-right flip."""
    out = np.array(boxes, np.float32, copy=True)
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out


@dataclass(frozen=True)
class UltrasoundAugment:
    """Augmentation suited to B-mode ultrasound, applied to a float image in [0, 1].

    Left-right flip (the hip of the other side; mask and box follow), gamma and gain (the
    scanner's compression and gain settings), multiplicative speckle-like noise (gamma-distributed,
    mean 1) and a small intensity shift, then clipping to [0, 1]. No rotation or elastic warp: the
    anatomy has a fixed orientation towards the transducer (bone above, shadow below).
    Set a range to ``(v, v)`` or ``flip_p=0`` to switch a part off.
    """

    flip_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.4)
    gain: tuple[float, float] = (0.8, 1.25)
    speckle_sigma: tuple[float, float] = (0.0, 0.15)
    shift: tuple[float, float] = (-0.05, 0.05)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image float32, mask)``; the mask only changes by the flip."""
        if rng.random() < self.flip_p:
            image, mask = image[:, ::-1], mask[:, ::-1]
        out = np.power(image, rng.uniform(*self.gamma), dtype=np.float32)
        out *= np.float32(rng.uniform(*self.gain))
        sigma = rng.uniform(*self.speckle_sigma)
        if sigma > 0:
            shape = 1.0 / sigma**2  # gamma(k, 1/k): mean 1, standard deviation sigma
            out *= rng.gamma(shape, 1.0 / shape, size=out.shape).astype(np.float32)
        out += np.float32(rng.uniform(*self.shift))
        return np.clip(out, 0.0, 1.0), mask


def _to_unit_float(slice_: np.ndarray) -> np.ndarray:
    if slice_.dtype == np.uint8:
        return slice_.astype(np.float32) / np.float32(255)
    return slice_.astype(np.float32)  # bool, or float32 already normalised at construction


def _check_pair(i: int, volume: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    vol, lab = np.asarray(volume), np.asarray(labels)
    if vol.ndim == 2 and lab.ndim == 2:
        vol, lab = vol[None], lab[None]
    if vol.ndim != 3 or vol.shape != lab.shape:
        raise ValueError(
            f"volume {i}: expected a volume (S, H, W) or slice (H, W) and labels of the same "
            f"shape, got volume {np.shape(volume)} and labels {np.shape(labels)}"
        )
    if vol.dtype != np.uint8 and vol.dtype != np.bool_:
        # Other dtypes are scaled exactly as inference scales them (whole-volume statistics).
        vol = normalize_slices(vol)
    return vol, lab


class SliceDataset(Dataset):
    """Every (volume, slice) of a list of ``(volume, labels)`` pairs as one training item.

    Parameters
    ----------
    volumes
        ``(volume, labels)`` pairs: volume ``(S, H, W)`` or ``(H, W)``, labels of the same shape
        (foreground = ``!= 0``). uint8 and bool volumes are referenced, not copied (memmaps
        work) and scaled per slice by 1/255; any other dtype is converted once, per volume, by
        ``preprocess.normalize_slices``, exactly as inference converts it.
    negatives
        Which slices without foreground to keep: ``"all"``, ``"none"`` or a fraction in [0, 1]
        of them, drawn once, deterministically from ``seed``. Slices with foreground are always
        kept.
    augment
        False/None (off), True (``UltrasoundAugment()``) or an ``UltrasoundAugment``.
    seed
        Seeds the negative subset and the augmentation. The k-th fetch of item i is augmented
        with ``numpy.random.default_rng((seed, i, k))``: a run that fetches the same items in
        the same order sees the same images, and a slice drawn again gets a fresh augmentation.
    volume_ids
        Optional names of the volumes (default ``0..len(volumes)-1``), reported by ``locate``.

    Attributes ``index`` (``int64 [N, 2]`` of volume position, slice), ``n_positive`` and
    ``n_negative`` (kept slices with / without foreground).
    """

    def __init__(
        self,
        volumes: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        negatives: str | float = "all",
        augment: bool | UltrasoundAugment | None = False,
        seed: int = 0,
        volume_ids: Sequence[Hashable] | None = None,
    ) -> None:
        self.volumes = [_check_pair(i, v, l) for i, (v, l) in enumerate(volumes)]
        self.volume_ids = list(range(len(self.volumes))) if volume_ids is None else list(volume_ids)
        if len(self.volume_ids) != len(self.volumes):
            raise ValueError(f"{len(self.volume_ids)} volume_ids for {len(self.volumes)} volumes")
        if augment is True:
            augment = UltrasoundAugment()
        self.augment: UltrasoundAugment | None = augment or None
        self.seed = int(seed)

        pos, neg = [], []
        for v, (_, lab) in enumerate(self.volumes):
            has_object = lab.reshape(lab.shape[0], -1).any(axis=1)
            for s, flag in enumerate(has_object):
                (pos if flag else neg).append((v, s))
        neg = self._select_negatives(neg, negatives)
        index = sorted(pos + neg)
        self.index = np.array(index, np.int64).reshape(-1, 2)
        self.n_positive, self.n_negative = len(pos), len(neg)
        self._draws = np.zeros(len(self.index), np.int64)

    def _select_negatives(self, neg: list[tuple[int, int]], negatives: str | float) -> list:
        if isinstance(negatives, str):
            if negatives == "all":
                return neg
            if negatives == "none":
                return []
        elif isinstance(negatives, (int, float)) and not isinstance(negatives, bool) \
                and 0.0 <= negatives <= 1.0:
            k = int(round(negatives * len(neg)))
            rng = np.random.default_rng(self.seed)
            chosen = rng.choice(len(neg), size=k, replace=False)
            return [neg[j] for j in sorted(chosen)]
        raise ValueError(
            f"negatives must be 'all', 'none' or a fraction in [0, 1], got {negatives!r}")

    def __len__(self) -> int:
        return len(self.index)

    def locate(self, i: int) -> tuple[Hashable, int]:
        """``(volume_id, slice)`` of item ``i``."""
        v, s = self.index[i]
        return self.volume_ids[v], int(s)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        v, s = self.index[i]
        vol, lab = self.volumes[v]
        image = _to_unit_float(np.asarray(vol[s]))
        mask = np.asarray(lab[s]) != 0
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, int(i), int(self._draws[i])))
            self._draws[i] += 1
            image, mask = self.augment(image, mask, rng)
        image = np.ascontiguousarray(image, dtype=np.float32)
        target = {
            "boxes": torch.from_numpy(gt_box_from_mask(mask)),
            "masks": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
        }
        return torch.from_numpy(image[None]), target


class SizeGroupedSampler(torch.utils.data.Sampler[int]):
    """Endless seeded indices of a :class:`SliceDataset` whose volumes differ in slice size, in
    runs of ``batch_size`` that share one size (a batch must: :func:`collate_slices`).

    Each run picks a size group with probability proportional to its number of items, then
    ``batch_size`` items of it (a permutation, or with repeats when the group is smaller). A
    DataLoader with the same ``batch_size`` (or a divisor of it) then gets one size per batch.
    """

    def __init__(self, dataset: SliceDataset, batch_size: int, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("the training set is empty: give at least one slice to train on")
        sizes = [tuple(dataset.volumes[v][0].shape[-2:]) for v, _ in dataset.index]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        self.groups = [np.array(g, np.int64) for g in groups.values()]
        self.batch_size, self.seed = int(batch_size), int(seed)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        weights = np.array([len(g) for g in self.groups], float)
        weights /= weights.sum()
        while True:
            group = self.groups[rng.choice(len(self.groups), p=weights)]
            replace = len(group) < self.batch_size
            yield from rng.choice(group, size=self.batch_size, replace=replace).tolist()


def mixed_sizes(dataset: Any) -> bool:
    """Whether ``dataset`` is a :class:`SliceDataset` whose volumes differ in slice size."""
    if not isinstance(dataset, SliceDataset):
        return False
    return len({tuple(v.shape[-2:]) for v, _ in dataset.volumes}) > 1


def collate_slices(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict]]:
    """Stack items into ``(Tensor[N, 1, H, W], [target, ...])``; all slices must share one size."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    sizes = [tuple(img.shape) for img, _ in batch]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"slices in one batch must have the same size, got {sorted(set(sizes))}; resize them "
            "to one size (e.g. sample_data.real_data.from_hc18(resize_to=(H, W))) or use batch_size=1"
        )
    return torch.stack([img for img, _ in batch]), [t for _, t in batch]


def split_by_volume(
    volume_ids: Sequence[Hashable], test_fraction: float = 0.3, seed: int = 0
) -> tuple[list[Hashable], list[Hashable]]:
    """Split volumes (never slices) into ``(train_ids, test_ids)``.

    ``volume_ids`` may repeat (e.g. one id per slice); each distinct id goes to exactly one side.
    ``round(test_fraction * n)`` ids, at least 1 and at most n - 1, are drawn for the test side
    with ``seed``; both lists keep the order of first appearance.
    """
    unique = list(dict.fromkeys(volume_ids))
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if len(unique) < 2:
        raise ValueError(f"need at least two distinct volumes to split, got {len(unique)}")
    n_test = min(max(int(round(test_fraction * len(unique))), 1), len(unique) - 1)
    test = set(np.random.default_rng(seed).permutation(len(unique))[:n_test].tolist())
    train_ids = [u for j, u in enumerate(unique) if j not in test]
    test_ids = [u for j, u in enumerate(unique) if j in test]
    return train_ids, test_ids
