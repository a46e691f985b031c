"""The GUI process's side of a session's model process (see :mod:`napari_roiseg.worker`).

:meth:`ProcessWorker.run` is a generator: it sends a job to the process and yields what the job
yields, so it drops into a napari thread worker in place of the in-process generator. That
thread only waits on a pipe (the wait releases the GIL); the model's Python work -- proposal
filtering, box handling, the numpy post-processing, training steps -- runs in the other
process, which competes with the GUI for neither the GIL nor, at its lower priority, the CPU.

The process is a fresh interpreter (``python -m napari_roiseg.worker``, as the
``spawn`` start method makes one) talking over a private socket pair, started with
:mod:`subprocess` rather than :mod:`multiprocessing`: ``multiprocessing``'s spawn re-imports
the parent's ``__main__``, which runs a user's napari script (or refuses to start) when it has
no ``if __name__ == "__main__"`` guard. No torch, napari or Qt here: the process imports torch
itself.
"""

from __future__ import annotations

import builtins
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Generator
from typing import Any

from src_model.generators import drain

from .arrays import SharedArrays
from .child import receive, send

__all__ = ["DEFAULT_NICE", "JobError", "JobKilled", "ProcessWorker", "WorkerCrashed",
           "process_available", "worker_safe"]

# The model process runs at the viewer's priority: at nice +5 (README, 2026-11-30 probe), with
# two busy programs on 2 cores a 256-slice run took 166 s instead of the thread path's 33 s, and
# the viewer's gaps were no shorter (median 27 vs 19 ms): the GUI's own drawing is what stalls.
DEFAULT_NICE = 0
NICE_VARIABLE = "NAPARI_ROISEG_WORKER_NICE"  # overrides DEFAULT_NICE
KILL_AFTER_S = 1.0  # a cancelled job that has not stopped by then is killed
POLL_S = 0.05


class JobError(Exception):
    """A RuntimeError of model work (torch raises many), re-raised as this type: napari's
    generator workers take a RuntimeError for "the worker was deleted" and then never emit
    ``finished``, which would leave a run holding the run lock for good."""


class WorkerCrashed(ChildProcessError):
    """The model process ended during a job (a crash, or killed by the system)."""


class JobKilled(ChildProcessError):
    """The job was cancelled and, as it did not stop in time, its process was killed."""


def worker_safe(job: Any) -> Any:
    """``job`` (a generator function) with its RuntimeErrors raised as :class:`JobError`."""

    def safe(*args: Any, **kwargs: Any) -> Any:
        try:
            return (yield from job(*args, **kwargs))
        except RuntimeError as exc:
            raise JobError(str(exc)) from exc

    return safe


def process_available() -> bool:
    """True where a model process can be started (POSIX: it inherits one end of a socket
    pair); elsewhere the session runs models in threads."""
    return os.name == "posix"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = (" (the system may have run out of memory and killed it)"
                if -code == signal.SIGKILL else "")
        return f"was ended by {name}{hint}"
    return f"exited with code {code}"


def _rebuild(name: str, message: str) -> BaseException:
    """The child's exception as one of the same type where it is a builtin one (so messages
    and ``except`` clauses read as in the thread path), else a :class:`JobError` (named)."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, RuntimeError):
        try:
            return cls(message)
        except TypeError:  # e.g. UnicodeDecodeError's constructor
            pass
    if name == "RuntimeError":
        return JobError(message)
    return JobError(f"{name}: {message}" if message else name)


class ProcessWorker:
    """One model process (a fresh interpreter, as ``spawn`` makes), started on first use and
    kept warm between jobs.

    Parameters
    ----------
    nice : int, optional
        Added to the process's nice value (lower CPU priority than the viewer); default
        ``NAPARI_ROISEG_WORKER_NICE`` or :data:`DEFAULT_NICE`.
    threads : int, optional
        torch threads in the process (default: torch's, one per core).
    eager : bool
        Import torch as soon as the process starts (False: with the first job that needs it).
    """

    def __init__(self, nice: int | None = None, threads: int | None = None,
                 eager: bool = True) -> None:
        if nice is None:
            nice = int(os.environ.get(NICE_VARIABLE, DEFAULT_NICE))
        self.nice, self.threads, self.eager = nice, threads, eager
        self._process: subprocess.Popen | None = None
        self._conn: Any = None
        self._jobs = itertools.count(1)
        self._job: int | None = None  # the job in progress
        self._killed: int | None = None  # the job whose process was killed on purpose
        self._guard = threading.Lock()
        self.starts = 0  # processes started so far
        self.pid: int | None = None
        self.arrays = SharedArrays()

    # ------------------------------------------------------------------ the process

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        return self._job is not None

    def start(self) -> None:
        """Start the process if it is not running (returns at once; it imports torch itself)."""
        with self._guard:
            if self.alive:
                return
            self._forget_process()
            from multiprocessing.connection import Connection

            ours, theirs = socket.socketpair()
            env = dict(os.environ)
            # the parent's import path (a script's folder, an editable install) as spawn does
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            command = [sys.executable, "-m", "napari_roiseg.worker", str(theirs.fileno()),
                       str(self.nice), str(self.threads or 0), str(int(self.eager))]
            try:
                process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=env,
                                           stdin=subprocess.DEVNULL, close_fds=True)
            finally:
                theirs.close()
            self._conn = Connection(ours.detach())
            self._process, self.pid = process, process.pid
            self.starts += 1

    def _forget_process(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.poll()  # reap it if it has ended
        self._process = self._conn = None

    def kill(self) -> None:
        """End the process now (SIGKILL); the next job starts a new one."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(2)

    def shutdown(self, timeout_s: float = 1.0) -> None:
        """Ask the process to leave, kill it if it does not, remove the shared files."""
        if self.alive:
            try:
                send(self._conn, ("quit",))
                self._process.wait(timeout_s)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self.kill()
        self._forget_process()
        self.arrays.close()

    # ------------------------------------------------------------------ jobs

    def run(self, job: str, **kwargs: Any) -> Generator[Any, None, Any]:
        """Run ``napari_roiseg.worker.jobs.<job>(context, **kwargs)`` in the process: yields
        what it yields, returns what it returns, raises what it raises (builtin exception
        types kept), re-issues its warnings here. Raises :class:`WorkerCrashed` if the process
        dies, :class:`JobKilled` if :meth:`cancel` had to kill it."""
        if self._job is not None:
            raise RuntimeError("the model process is already running a job")
        self.start()
        job_id = self._job = next(self._jobs)
        ended = False
        try:
            send(self._conn, ("job", job, kwargs))
            while True:
                message = self._receive(job_id)
                kind = message[0]
                if kind == "yield":
                    yield message[1]
                elif kind == "return":
                    ended = True
                    return message[1]
                elif kind == "error":
                    ended = True
                    raise _rebuild(message[1], message[2])
                elif kind == "warn":
                    category = getattr(builtins, message[2], UserWarning)
                    if not (isinstance(category, type) and issubclass(category, Warning)):
                        category = UserWarning
                    warnings.warn(message[1], category, stacklevel=2)
        except (WorkerCrashed, JobKilled):
            ended = True
            raise
        finally:
            if not ended:  # the caller let go early: stop the job before the next one
                self._abandon(job_id)
            self._job = None

    def _receive(self, job_id: int) -> tuple:
        while True:
            try:
                if self._conn.poll(POLL_S):
                    return receive(self._conn)
            except (EOFError, OSError):
                pass  # the process's end closed: it is gone
            else:
                if self._process.poll() is None:
                    continue
            try:
                code = self._process.wait(1)
            except subprocess.TimeoutExpired:
                code = None
            self._forget_process()
            if self._killed == job_id:
                raise JobKilled("cancelled: the model process did not stop within "
                                f"{KILL_AFTER_S:.0f} s and was ended")
            raise WorkerCrashed(
                f"the model process {_describe_exit(code)}. Your layers are unchanged; the "
                "next run starts a new model process")

    def _request_stop(self) -> None:
        try:
            send(self._conn, ("stop",))
        except (OSError, ValueError, AttributeError):
            pass  # the process is gone: nothing to stop

    def _abandon(self, job_id: int) -> None:
        self._request_stop()
        deadline = time.monotonic() + KILL_AFTER_S
        try:
            while time.monotonic() < deadline:
                if self._conn.poll(POLL_S) and receive(self._conn)[0] in ("return", "error"):
                    return
        except (EOFError, OSError, AttributeError):
            return
        self._killed = job_id
        self.kill()

    def cancel(self, kill_after_s: float | None = KILL_AFTER_S) -> None:
        """Ask the job in progress to stop at its next step; if it has not ended after
        ``kill_after_s`` seconds, kill the process (the job then raises :class:`JobKilled`)."""
        job_id = self._job
        if job_id is None:
            return
        self._request_stop()
        if kill_after_s is not None:
            timer = threading.Timer(kill_after_s, self._kill_if_running, args=(job_id,))
            timer.daemon = True
            timer.start()

    def _kill_if_running(self, job_id: int) -> None:
        if self._job == job_id:
            self._killed = job_id
            self.kill()

    def call(self, job: str, **kwargs: Any) -> Any:
        """:meth:`run` to its end; returns the job's return value."""
        return drain(self.run(job, **kwargs))

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.kill()
            self.arrays.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
