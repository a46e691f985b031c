"""Every file the project writes atomically gets the permissions a plain write would (umask).

Atomic writes go through a temporary file; one made by ``tempfile.mkstemp`` is 0600, and renamed
into place it kept that: a colleague on a shared lab machine could not load a model another user
trained. Each case writes under a set umask and compares with a plain ``open()`` write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_mode(folder: Path) -> int:
    plain = folder / "plain.txt"
    with open(plain, "w") as fh:
        fh.write("x")
    return _mode(plain)


def test_plain_write_mode_matches_open(tmp_path, umask):
    from napari_roiseg.io.volumes import plain_write_mode

    assert plain_write_mode() == _plain_mode(tmp_path) == 0o666 & ~umask


def test_atomic_path_gives_plain_permissions_even_to_a_0600_temp_file(tmp_path, umask):
    from napari_roiseg.io.volumes import atomic_path

    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as mkstemp makes it
        os.close(fd)
    assert _mode(target) == _plain_mode(tmp_path)


def test_labels_boxes_and_project_files(tmp_path, umask, untrained_model):
    from napari_roiseg.project import Project
    from napari_roiseg.io.volumes import write_boxes_csv, write_labels_tiff

    plain = _plain_mode(tmp_path)
    labels = write_labels_tiff(tmp_path / "labels.tif", np.zeros((2, 8, 8), np.uint8))
    boxes = write_boxes_csv(tmp_path / "boxes.csv", np.zeros((0, 6), np.float32))
    project = Project(tmp_path / "p.roiseg")
    name = project.add_version(untrained_model(), {"parent": None, "source": "test"})
    written = [Path(labels), Path(boxes), project.folder / "project.json",
               *project.folder.rglob("*.pt")]
    assert any(p.suffix == ".pt" for p in written), f"no checkpoint written for {name}"
    assert {p.name: _mode(p) for p in written} == {p.name: plain for p in written}


def test_checkpoint_file_is_readable_by_the_group_under_a_group_umask(tmp_path, umask,
                                                                     untrained_model):
    from src_model.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "model.pt", untrained_model())
    assert _mode(Path(path)) == 0o666 & ~umask


def test_phantom_files(tmp_path, umask):
    from sample_data.phantom import write_phantom

    paths = write_phantom(tmp_path, seed=1, n_slices=2, shape=(32, 32))
    assert {_mode(Path(p)) for p in paths} == {0o666 & ~umask}
