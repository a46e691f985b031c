"""Loaders for the small sets of real ultrasound kept beside the repository (``../shared/data``).

Neither set is 3D infant-hip data with acetabulum labels (none is publicly available); they let
tests and benchmarks run on real speckle, not only on the phantom.

- ``hc18/``: 2D fetal-head ultrasound (800 x 540, uint8) with an expert outline of the skull.
  HC18 grand challenge training set: T. L. A. van den Heuvel, D. de Bruijn, C. L. de Korte,
  B. van Ginneken, "Automated measurement of fetal head circumference using 2D ultrasound
  images", PLoS ONE 13(8): e0200412, 2018. Zenodo record 1327317. License: CC BY 4.0.
- ``spj-hip/``: 2D real infant-hip (DDH) ultrasound in the coronal plane (256 x 256), unlabelled.
  The SPJ (standard plane judgment) dataset of NHBS-Net. License: Apache-2.0 (LICENSE beside
  the files).

Pillow reads the PNGs; scipy fills the HC18 outlines. No torch import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from src_model.data import SliceDataset

__all__ = ["default_data_root", "from_hc18", "load_hc18", "load_spj_hip"]


def default_data_root() -> Path:
    """``<repository>/../shared/data``: where the shared real data sets live."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _folder(folder: str | os.PathLike[str] | None, name: str, what: str) -> Path:
    path = Path(folder) if folder is not None else default_data_root() / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} folder not found: {path}. Pass folder=... pointing at the folder that holds "
            f"the PNG files (expected by default at <repository>/../shared/data/{name})."
        )
    return path


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "P", "I;16", "I"):
            return np.asarray(im.convert("L"))
        rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])  # gray content stored as RGB: take one channel
    return np.asarray(Image.fromarray(rgb).convert("L"))


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """Fill a closed one-pixel outline (nonzero pixels) into a solid uint8 0/1 mask.

    A small closing first bridges one-pixel gaps in the drawn outline, which would otherwise
    let the fill leak out and leave the mask empty.
    """
    from scipy import ndimage as ndi

    ring = ndi.binary_closing(outline != 0, structure=np.ones((3, 3), bool), iterations=2)
    return ndi.binary_fill_holes(ring).astype(np.uint8)


def load_hc18(
    folder: str | os.PathLike[str] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The HC18 images with filled head masks.

    Returns a list of ``(name, image uint8 (H, W), mask uint8 (H, W) 0/1)`` sorted by name, where
    name is the file stem (``"000_HC"``, ``"014_2HC"``...). Raises FileNotFoundError when the
    folder (default ``<repository>/../shared/data/hc18/images``) or an annotation is missing.
    """
    root = _folder(folder, "hc18", "HC18")
    images = root / "images" if (root / "images").is_dir() else root
    out = []
    for path in sorted(images.glob("*HC.png")):
        ann = path.with_name(f"{path.stem}_Annotation.png")
        if not ann.exists():
            raise FileNotFoundError(f"HC18 annotation missing for {path.name}: expected {ann}")
        image = _read_gray(path)
        mask = fill_outline(_read_gray(ann))
        if mask.shape != image.shape:
            raise ValueError(f"{ann.name} is {mask.shape}, its image {image.shape}")
        out.append((path.stem, image, mask))
    if not out:
        raise FileNotFoundError(f"no HC18 images (*HC.png) in {images}")
    return out


def load_spj_hip(folder: str | os.PathLike[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """The real infant-hip images as ``(name, image uint8 (H, W))``, sorted by name.

    The PNGs are RGB with gray content; one channel is returned. The name (file stem) carries
    the standard-plane rating, e.g. ``standard_ultrasound__standard_0``.
    """
    root = _folder(folder, "spj-hip", "SPJ infant-hip")
    out = [(p.stem, _read_gray(p)) for p in sorted(root.glob("*.png"))]
    if not out:
        raise FileNotFoundError(f"no PNG images in {root}")
    return out


def _resize(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    import torch  # deferred: sample_data imports no torch

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if mode == "bilinear":
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                            antialias=True)
    else:
        t = torch.nn.functional.interpolate(t, size=size, mode="nearest")
    return t[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def from_hc18(
    samples: Sequence[tuple[str, np.ndarray, np.ndarray]] | None = None,
    *,
    folder: str | None = None,
    resize_to: tuple[int, int] | None = None,
    **dataset_kwargs: Any,
) -> SliceDataset:
    """A :class:`SliceDataset` of HC18 fetal-head images (each image a one-slice volume).

    ``samples`` are ``(name, image uint8 (H, W), mask uint8 (H, W))`` as returned by
    ``sample_data.real_data.load_hc18`` (loaded from ``folder`` when None). Native size 800 x 540
    is kept unless ``resize_to=(H, W)`` is given: bilinear (antialiased) for images, nearest for
    masks. Volume ids are the image names; other keywords go to ``SliceDataset``.
    """
    from src_model.data import SliceDataset  # deferred: sample_data imports no torch

    if samples is None:
        samples = load_hc18(folder)
    pairs, names = [], []
    for name, image, mask in samples:
        if resize_to is not None:
            size = (int(resize_to[0]), int(resize_to[1]))
            image, mask = _resize(image, size, "bilinear"), _resize(mask != 0, size, "nearest")
        mask = (np.asarray(mask) != 0).astype(np.uint8)
        pairs.append((np.asarray(image, np.uint8)[None], mask[None]))
        names.append(name)
    return SliceDataset(pairs, volume_ids=names, **dataset_kwargs)
