"""The model process: its main loop, and what a job is given (:class:`JobContext`).

Started by :class:`napari_roiseg.worker.process.ProcessWorker` as ``python -m
napari_roiseg.worker FD NICE THREADS EAGER`` (:mod:`napari_roiseg.worker.__main__`) (FD: its end of a socket pair); it imports torch once, keeps the models it loaded (once per version), and runs one job at a time:
a function of :mod:`napari_roiseg.worker.jobs`, called with the context and the job's keyword
arguments. What a generator job yields is sent back as it comes; its return value, a warning or
an exception (type name, message and traceback) too. It leaves when told to, or when the GUI
process is gone (its end of the pipe closes).
"""

from __future__ import annotations

import inspect
import os
import pickle
import traceback
import warnings
from collections import OrderedDict
from typing import Any

TORCH_FREE_JOBS = ("echo", "fail")  # the protocol's test jobs: no torch import for them
MODELS_KEPT = 2  # versions kept loaded (the current one and the one compared with it)


def send(conn: Any, message: Any) -> None:
    """Send with plain pickle: ``Connection.send`` uses multiprocessing's pickler, where torch
    registers tensor reductions that pass file descriptors, which only works between
    processes that multiprocessing itself started."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Any) -> Any:
    return pickle.loads(conn.recv_bytes())


class JobContext:
    """What a job gets besides its arguments: the stop request and the loaded models."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._stopped = False
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0  # checkpoints read so far (a test checks "once per version")

    def stop_requested(self) -> bool:
        """True once the GUI process asked the job in progress to stop (the only message it
        sends during a job; read here without waiting)."""
        while not self._stopped and self._conn.poll(0):
            self._stopped = receive(self._conn)[0] in ("stop", "quit")
        return self._stopped

    def new_job(self) -> None:
        self._stopped = False

    def model(self, spec: tuple) -> Any:
        """The model ``spec`` names (see ``Session.model_spec``), loaded once and kept."""
        net = self._models.get(spec)
        if net is not None:
            self._models.move_to_end(spec)
            return net
        net = self._load(spec)
        self.loads += 1
        self._models[spec] = net
        while len(self._models) > MODELS_KEPT:
            self._models.popitem(last=False)
        return net

    @staticmethod
    def _load(spec: tuple) -> Any:
        from src_model.checkpoint import load_checkpoint

        from ..segment import default_checkpoint

        kind = spec[0]
        if kind == "default":
            net, _ = load_checkpoint(default_checkpoint())
        elif kind == "file":
            net, _ = load_checkpoint(spec[1])
        elif kind == "project":
            from ..project.project import Project

            net = Project(spec[1]).load_version(spec[2])
        else:
            raise ValueError(f"unknown model description {spec!r}")
        net.eval()
        return net


def _import_torch(threads: int | None) -> None:
    from ..api import prepare_torch_import

    prepare_torch_import()
    import torch
    import torchvision  # noqa: F401

    if threads:
        torch.set_num_threads(threads)


def main(conn: Any, nice: int, threads: int | None, eager: bool = True) -> None:
    """The process's entry point (see the module docstring)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is napari's to handle
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: run at the GUI's priority
            pass
    from . import jobs

    if eager:  # torch now, so that the first run finds the process warm
        _import_torch(threads)
    context = JobContext(conn)
    send(conn, ("ready", os.getpid()))
    while True:
        try:
            message = receive(conn)
        except (EOFError, OSError):  # the GUI process is gone
            return
        if message[0] == "quit":
            return
        if message[0] != "job":  # a stop that came after its job ended
            continue
        _, name, kwargs = message
        context.new_job()
        if name not in TORCH_FREE_JOBS:
            _import_torch(threads)
        _run(conn, context, getattr(jobs, name), kwargs)


def _run(conn: Any, context: JobContext, job: Any, kwargs: dict[str, Any]) -> None:
    def forward(message: Any, category: type, *_args: Any, **_kwargs: Any) -> None:
        send(conn, ("warn", str(message), category.__name__))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = forward
        try:
            out = job(context, **kwargs)
            if inspect.isgenerator(out):
                while True:
                    try:
                        send(conn, ("yield", next(out)))
                    except StopIteration as end:
                        out = end.value
                        break
            send(conn, ("return", out))
        except BaseException as exc:  # everything goes back to the GUI process as a message
            send(conn, ("error", type(exc).__name__, str(exc), traceback.format_exc()))

