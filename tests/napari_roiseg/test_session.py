"""The Qt-free session: what the docks and the console share (no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_roiseg import api  # noqa: E402
from napari_roiseg.project import Project  # noqa: E402
from napari_roiseg.session import DEFAULT, MEMORY, PROJECT, Session  # noqa: E402


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _halved(net):
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    return net


def test_the_model_follows_the_projects_current_version(tmp_path, untrained_model):
    start = untrained_model()
    session = Session()
    assert session.source == DEFAULT and "shipped default" in session.model_text()
    session.set_model(start)
    assert session.source == MEMORY and session.model() is start
    project = session.open_project(tmp_path / "p")
    assert session.source == MEMORY  # no versions yet: what was chosen stays
    net, parent = session.training_start()
    assert net is start and parent == "v000" and session.source == PROJECT
    # another dock (or process) adds a version and makes it current: the next run uses it
    other = Project(project.folder)
    other.add_version(_halved(untrained_model()), {"parent": "v000"})
    assert _same_weights(session.model(), other.load_version("v001"))
    assert "project version v001" in session.model_text()
    session.use_version("v000")
    assert _same_weights(session.model(), start)


def test_training_start_saves_a_chosen_model_as_the_parent(tmp_path, untrained_model):
    """A model chosen instead of the project's current version is what a fine-tune trains,
    so it is saved as a version first and recorded as the parent."""
    session = Session()
    Project(tmp_path / "p").add_version(untrained_model(), {"parent": None})
    session.open_project(tmp_path / "p")
    assert session.source == PROJECT
    chosen = _halved(untrained_model())
    session.set_model(chosen)
    net, parent = session.training_start()
    assert net is chosen and parent == "v001" and session.project.current_version == "v001"
    assert _same_weights(session.project.load_version("v001"), chosen)


def test_api_functions_work_on_a_session(tmp_path, phantom, untrained_model):
    session = Session()
    net = untrained_model()
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    session.set_model(net)
    session.device = "cpu"
    labels, boxes = api.segment_volume(phantom.volume, session=session)
    assert calls and labels.shape == phantom.volume.shape

    session.open_project(tmp_path / "p")
    truth = labels.copy()
    slices = [1, 4, 7, 10]
    truth[slices] = phantom.labels[slices]
    tuned = api.finetune(phantom.volume, truth, slices=slices, steps=2, batch_size=1,
                         validation=[], session=session)
    summary = tuned.finetune_summary
    assert summary["version"] == "v001" == session.project.current_version
    assert session.project.versions["v001"]["parent"] == "v000"
    assert session.loaded_model() is tuned  # the docks' next model, at once

    scores = api.review_scores(labels, session=session)
    assert scores.n_slices == len(labels)
    with pytest.raises(ValueError, match="needs a project"):
        api.gate_version(session=Session())


def test_without_a_session_the_api_works_as_before(phantom, untrained_model):
    labels, _ = api.segment_volume(phantom.volume, model=untrained_model(), device="cpu")
    assert labels.shape == phantom.volume.shape
    with pytest.raises(ValueError, match="no image"):
        api.segment_volume()


def test_finetune_on_a_session_without_a_mask_layer_says_what_to_choose(phantom):
    session = Session()
    with pytest.raises(ValueError, match="no image layer"):
        api.finetune(session=session)
    with pytest.raises(ValueError, match="no mask"):
        api.finetune(image=phantom.volume, session=session)
