"""Model work out of the GUI process: one ``spawn``-ed model process per session.

- :mod:`.process` -- :class:`ProcessWorker`, the GUI side: start, run a job as a generator,
  cancel (kill after a second), crash reports;
- :mod:`.child` -- the process's main loop and the models it keeps loaded;
- :mod:`.jobs` -- what it runs: segment, fine-tune (+ gate), gate, compare;
- :mod:`.arrays` -- volumes and masks shared as memory-mapped files, never sent through pipes.

The session (``napari_roiseg.session.Session``) owns the worker and chooses between it and
the in-process thread path (``Session.worker_mode``).
"""

from .process import (DEFAULT_NICE, JobError, JobKilled, ProcessWorker, WorkerCrashed,
                      process_available, worker_safe)

__all__ = ["DEFAULT_NICE", "JobError", "JobKilled", "ProcessWorker", "WorkerCrashed",
           "process_available", "worker_safe"]
