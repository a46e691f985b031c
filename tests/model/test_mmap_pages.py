"""release_slices: memory-mapped slices leave the resident set, their data stays."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from src_model.mmap_pages import release_slices
from src_model.preprocess import intensity_range


def _resident_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_plain_arrays_are_left_alone():
    arr = np.ones((4, 8, 8), np.uint8)
    assert release_slices(arr, 0, 2) is False
    assert arr.sum() == 256


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_read_and_written_pages_are_released_and_kept(tmp_path):
    path = tmp_path / "v.raw"
    data = np.random.default_rng(0).integers(0, 255, (64, 512, 512), dtype=np.uint8)  # 16 MiB
    data.tofile(path)
    src = np.memmap(path, np.uint8, "r", shape=data.shape)
    dst = np.memmap(tmp_path / "o.raw", np.uint8, "w+", shape=data.shape)
    before = _resident_mib()
    for start in range(0, 64, 8):
        dst[start : start + 8] = src[start : start + 8] // 2
        assert release_slices(np.asarray(src), start, start + 8)
        assert release_slices(dst, start, start + 8)
    assert _resident_mib() - before < 8  # not the 32 MiB both files would take
    np.testing.assert_array_equal(np.asarray(dst), data // 2)  # written data survived
    copy_on_write = np.memmap(path, np.uint8, "c", shape=data.shape)
    assert release_slices(copy_on_write, 0, 8) is False  # its changes live only in memory


def test_intensity_range_is_unchanged_by_chunking(monkeypatch):
    import src_model.preprocess as pre

    rng = np.random.default_rng(1)
    vol = rng.normal(100, 20, (37, 61, 53)).astype(np.float32)
    vol[3, 0, :5] = 1e6
    whole = intensity_range(vol)
    flat = vol.reshape(-1)[:: vol.size // 1000 + 1].astype(np.float64)
    monkeypatch.setattr(pre, "_MAX_STAT_VALUES", 1000)
    monkeypatch.setattr(pre, "_CHUNK_VALUES", 3 * 61 * 53 + 7)  # chunks of 3 slices
    assert intensity_range(vol) == tuple(float(v) for v in np.percentile(flat, (0.5, 99.5)))
    monkeypatch.setattr(pre, "_MAX_STAT_VALUES", 4_000_000)
    assert intensity_range(vol) == whole
    const = np.full((5, 20, 20), 7, np.int16)
    const[2, 3, 3] = 9
    assert intensity_range(const) == (7.0, 9.0)  # near-constant: the full range
