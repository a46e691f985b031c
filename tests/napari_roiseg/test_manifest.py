"""The npe2 manifest: valid, installed with the package, every python_name importable."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from npe2 import PluginManifest

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "napari.yaml"


def _python_names() -> list[str]:
    commands = yaml.safe_load(MANIFEST.read_text())["contributions"]["commands"]
    return [command["python_name"] for command in commands]


def test_manifest_is_valid():
    manifest = PluginManifest.from_file(MANIFEST)  # validates against the npe2 schema
    assert (manifest.name, manifest.display_name) == ("napari-roiseg", "ROI Seg")
    assert [s.key for s in manifest.contributions.sample_data] == ["hip_phantom"]
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "All steps", "Segment", "Fine-tune", "Review queue"}


def test_package_manifest_is_the_root_manifest():
    packaged = REPO_ROOT / "napari_roiseg" / "napari.yaml"
    assert packaged.read_text() == MANIFEST.read_text()


def test_installed_distribution_exposes_the_manifest():
    # What napari does at start-up: entry point napari.manifest -> napari_roiseg:napari.yaml.
    installed = PluginManifest.from_distribution("napari-roiseg")
    assert installed.contributions == PluginManifest.from_file(MANIFEST).contributions


@pytest.mark.parametrize("python_name", _python_names())
def test_every_python_name_imports(python_name):
    module_name, _, attribute = python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute)), python_name
