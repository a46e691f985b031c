"""One line about a model or a project version, for the docks and the console (no Qt, no
torch import)."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_model", "describe_version"]


def describe_model(net: Any, metadata: dict[str, Any] | None, source: str) -> str:
    """Preset and architecture, training, date, and where it came from."""
    config = getattr(net, "config", None)
    parts = [f"{config.preset} preset, {config.arch}"] if config is not None else [
        type(net).__name__]
    meta = metadata or {}
    version = meta.get("version") or meta.get("napari_roiseg_version")
    if version:
        parts.append(f"v{version}")
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    steps = training.get("steps_done")
    if steps is None and training.get("state") in (None, "finished"):
        steps = training.get("steps")  # a finished run did all its planned steps
    if steps is not None:
        parts.append(f"{steps} training steps")
    elif training.get("state"):
        parts.append(f"training {training['state']} early")
    if training.get("best_step") is not None:
        parts.append(f"weights of step {training['best_step']}")
    if isinstance(meta.get("date"), str):
        parts.append(meta["date"][:10])
    return f"{' · '.join(parts)} ({source})"


def describe_version(name: str, info: dict[str, Any]) -> str:
    """A project version: its parent, training length and slices, validation dice change."""
    parts = [name]
    if info.get("parent"):
        parts.append(f"from {info['parent']}")
    if "steps_done" in info:
        parts.append(f"{info['steps_done']} steps ({info.get('state')})")
        parts.append(f"{len(info.get('train_slices', []))} train / "
                     f"{len(info.get('validation_slices', []))} val slices")
    before, after = info.get("metrics_before"), info.get("metrics_after")
    if before and after:
        parts.append(f"val dice {before['pooled']['dice']:.3f} → "
                     f"{after['pooled']['dice']:.3f}")
    elif info.get("source"):
        parts.append(str(info["source"]))
    return " · ".join(parts)
