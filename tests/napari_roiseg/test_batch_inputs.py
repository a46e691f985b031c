"""Which volumes `roiseg segment IN [IN ...]` segments, their output names, and the rank shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_roiseg.batch_inputs import BatchItem, expand_inputs, is_frame_folder, shard


def _stack(path: Path, slices: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((slices, 16, 16), np.uint8), photometric="minisblack")
    return path


def _frames(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        _stack(folder / f"f{i}.tif", slices=1)
    return folder


def test_one_file_or_one_frame_folder_keeps_the_one_volume_layout(tmp_path):
    vol = _stack(tmp_path / "a.tif")
    assert expand_inputs([str(vol)]) == ([BatchItem(str(vol), "a")], True)
    frames = _frames(tmp_path / "sweep")
    assert is_frame_folder(frames)
    assert expand_inputs([frames]) == ([BatchItem(str(frames), "sweep")], True)


def test_folder_of_volumes_glob_and_several_inputs_use_the_batch_layout(tmp_path):
    study = tmp_path / "study"
    a, b = _stack(study / "p2.tif"), _stack(study / "p10.tif")
    sweep = _frames(study / "sweep")
    (study / "notes.txt").write_text("not a volume")
    items, single = expand_inputs([study])
    assert not single and [i.source for i in items] == [str(a), str(b), str(sweep)]  # natural order
    items, single = expand_inputs([str(study / "p*.tif")])
    assert not single and [i.name for i in items] == ["p2", "p10"]
    # Same stem twice: names stay unique in input order; a missing file is kept (an error row).
    other = _stack(tmp_path / "x" / "p2.tif")
    items, single = expand_inputs([a, other, tmp_path / "missing.tif"])
    assert not single
    assert [i.name for i in items] == ["p2", "p2-2", "missing"]


def test_a_folder_of_stacks_is_not_a_folder_of_frames(tmp_path):
    assert not is_frame_folder(_stack(tmp_path / "s" / "a.tif").parent)


def test_inputs_that_name_nothing_say_so(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.tif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no volume files"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="no input"):
        expand_inputs([])


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_partition_the_list_deterministically(world):
    items = [BatchItem(f"v{i}.tif", f"v{i}") for i in range(10)]
    parts = [shard(items, r, world) for r in range(world)]
    assert sorted(i.name for p in parts for i in p) == sorted(i.name for i in items)
    assert parts == [shard(items, r, world) for r in range(world)]
    with pytest.raises(ValueError, match="rank"):
        shard(items, world, world)
