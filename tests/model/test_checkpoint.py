"""Checkpoints: atomic round trip and an actionable CheckpointError for every failure."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from src_model import checkpoint as ckpt_module
from src_model.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from src_model.model import build_model

from .conftest import tiny_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def _payload(model, **changes):
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "metadata": {},
        "state_dict": model.state_dict(),
    }
    payload.update(changes)
    return payload


def test_round_trip_restores_weights_config_and_metadata(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, {"note": "phantom", "steps": [1, 2]})
    loaded, meta = load_checkpoint(path, expected_arch="rpn_fcn")
    assert loaded.config == model.config and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert meta["note"] == "phantom" and meta["steps"] == [1, 2]
    assert meta["preset"] == "fast" and meta["torch_version"] == torch.__version__
    assert {"date", "torchvision_version"} <= set(meta)
    x = torch.rand(1, 1, 64, 48)
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["probabilities"], b["probabilities"]) and torch.equal(
        a["boxes"], b["boxes"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


def test_failed_save_leaves_the_old_file_untouched(model, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model, {"version": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, {"version": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_a_full_disk_is_named_and_loses_nothing(model, tmp_path, monkeypatch):
    import errno

    path = save_checkpoint(tmp_path / "m.pt", model, {"version": 1})
    before = path.read_bytes()

    def full_disk_save(obj, f, *args, **kwargs):
        # What torch's zip writer really raises when the disk fills under it.
        try:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 12 vs 8")

    monkeypatch.setattr(ckpt_module.torch, "save", full_disk_save)
    with pytest.raises(OSError, match="no space left in .*MiB free, about .*MiB needed") as caught:
        save_checkpoint(path, model, {"version": 2})
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_metadata_must_be_plain_data(model, tmp_path):
    import numpy as np

    meta = {
        "dice": np.float64(0.5),
        "n": np.int64(3),
        "where": tmp_path,
        "v": torch.__version__,
        "t": (1, 2),
    }
    _, back = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, meta))
    assert back["dice"] == 0.5 and type(back["dice"]) is float and type(back["n"]) is int
    assert back["where"] == str(tmp_path) and back["v"] == str(torch.__version__)
    assert back["t"] == [1, 2]
    with pytest.raises(CheckpointError, match=r"metadata\['a'\]\[0\] is a ndarray"):
        save_checkpoint(tmp_path / "m.pt", model, {"a": [np.zeros(3)]})
    with pytest.raises(CheckpointError, match="folder"):
        save_checkpoint(tmp_path / "no" / "m.pt", model, {})
    with pytest.raises(CheckpointError, match="no ModelConfig"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2), {})


def test_not_a_file_and_truncated(model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "empty.pt")


def test_not_a_roiseg_checkpoint(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a napari-roiseg checkpoint.*bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt")
    torch.save({"format": "something-else/3"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a napari-roiseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(_payload(model, format="napari-roiseg-checkpoint/2"), tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="upgrade napari-roiseg"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save(_payload(model, metadata=None), tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="'metadata' entry is missing"):
        load_checkpoint(tmp_path / "damaged.pt")


class _Exploit:
    """Unpickling this would create a file (it runs ``open(path, "w")``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Exploit(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    # Same for a plain (non-zip) pickle file.
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Exploit(str(marker)), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config(model, tmp_path):
    state = dict(model.state_dict())
    missing = {k: v for k, v in state.items() if k != "head.fc6.weight"}
    torch.save(_payload(model, state_dict=missing), tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"1 missing weights \(head.fc6.weight\)"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(
        _payload(model, state_dict={**state, "extra.weight": torch.zeros(1)}), tmp_path / "x.pt"
    )
    with pytest.raises(CheckpointError, match=r"1 unexpected weights \(extra.weight\)"):
        load_checkpoint(tmp_path / "x.pt")
    # The weights of another preset (wider) under this config: shapes differ.
    wider = build_model(tiny_config(width_divisor=8))
    torch.save(_payload(model, state_dict=wider.state_dict()), tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \(backbone.features.0.weight: "
        r"checkpoint \[8, 3, 3, 3\] vs model \[4, 3, 3, 3\]",
    ):
        load_checkpoint(tmp_path / "other.pt")


def test_bad_config_and_wrong_arch(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    with pytest.raises(CheckpointError, match="holds a 'rpn_fcn' model, but a 'unet' model"):
        load_checkpoint(path, expected_arch="unet")
    config = {**model.config.to_dict(), "new_option": 1}
    torch.save(_payload(model, config=config), tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="unknown ModelConfig keys: new_option"):
        load_checkpoint(tmp_path / "future.pt")
    assert issubclass(CheckpointError, ValueError)


def test_loads_onto_map_location(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    loaded, _ = load_checkpoint(path, map_location=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert os.path.getsize(path) < 2_000_000


def test_saving_through_a_ddp_style_wrapper(model, tmp_path):
    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    path = save_checkpoint(tmp_path / "m.pt", Wrapper(model), {})
    loaded, _ = load_checkpoint(path)
    assert set(loaded.state_dict()) == set(model.state_dict())  # no "module." prefix
