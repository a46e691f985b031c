"""One model job at a time per process: segmentation and fine-tuning never interleave.

Both run the network on the same CPU cores (or GPU memory); run together they would slow each
other down several times over, or run the GPU out of memory, and a fine-tune started from a
half-written segmentation would learn from it. So the widgets and the API take this lock for
the whole of a run, and a second run is refused with a message naming the one in progress
(never queued silently behind it).

The lock is not tied to a thread: a widget takes it in the GUI thread when it starts a napari
worker and gives it back when the worker has finished.

No napari, Qt or torch here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BusyError", "RunToken", "acquire", "exclusive", "running", "try_acquire"]


class BusyError(RuntimeError):
    """Another segmentation or fine-tuning run is in progress in this process."""


class RunToken:
    """Proof of holding the run lock; :meth:`release` gives it back (safe to call twice)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._held = True

    def release(self) -> None:
        global _holder
        with _guard:
            if self._held and _holder is self:
                _holder = None
            self._held = False

    @property
    def held(self) -> bool:
        return self._held


_guard = threading.Lock()
_holder: RunToken | None = None


def running() -> str | None:
    """What holds the lock now (e.g. ``"segmenting 'hip'"``), None when nothing runs."""
    holder = _holder
    return holder.what if holder is not None else None


def try_acquire(what: str) -> RunToken | None:
    """Take the lock for ``what`` (e.g. ``"fine-tuning"``); None if another run holds it."""
    global _holder
    with _guard:
        if _holder is not None:
            return None
        _holder = RunToken(what)
        return _holder


def refusal(what: str) -> str:
    """The message that says why ``what`` cannot start now."""
    holder = running() or "another run"
    return (f"Cannot start {what}: {holder} is still running. Wait for it to finish (or stop "
            "it), then try again; segmentation and fine-tuning run one at a time.")


def acquire(what: str) -> RunToken:
    """Take the lock for ``what`` or raise :class:`BusyError` naming the run in progress."""
    token = try_acquire(what)
    if token is None:
        raise BusyError(refusal(what))
    return token


@contextmanager
def exclusive(what: str) -> Iterator[RunToken]:
    """``with exclusive("segmenting"):`` -- hold the lock for the block (BusyError if taken)."""
    token = acquire(what)
    try:
        yield token
    finally:
        token.release()
