"""Sharing a project folder safely: the folder lock, JSON files several writers share, and
numbered names claimed by exclusive creation.

Several objects may hold the same folder at once (the docks, the API, a script, another
process): none keeps a private copy of a shared JSON file. Readers see the file as it is now
(re-read when it changed on disk), and every change is a read-modify-write of the file under the
folder's lock (:func:`folder_lock`), so one object never writes back another's stale copy. The
lock holds across threads and, through an advisory lock on ``<project>/.roiseg.lock`` (POSIX
``flock``), across processes. No napari, Qt or torch.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "FolderLock", "SharedJson", "claim_numbered_file", "folder_lock"]


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    from ..io.writers import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())


LOCK_FILE = ".roiseg.lock"


class FolderLock:
    """A re-entrant lock of one project folder, for threads and processes alike: a thread lock,
    and while it is held (outermost ``with`` only) an exclusive ``flock`` on the folder's
    :data:`LOCK_FILE`. The operating system drops the flock when a process dies, so a killed
    script never leaves the folder locked. Where the lock file cannot be made (a read-only
    folder, no ``fcntl`` on Windows) only the thread lock is taken."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._thread_lock = threading.RLock()
        self._depth = 0  # nesting of the holding thread; changed only while holding _thread_lock
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._fd = _flock(os.path.join(self.folder, LOCK_FILE))
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)  # closing the descriptor releases its flock
        finally:
            self._thread_lock.release()


def _flock(path: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock (blocks until it is free), or
    None where there is no flock or the file cannot be made."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # read-only folder (nothing can be written there anyway), or gone
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


_LOCKS: dict[str, FolderLock] = {}
_LOCKS_GUARD = threading.Lock()
_WRITES: dict[str, int] = {}  # file -> how many times this process wrote it (cache key part)


def folder_lock(folder: str | os.PathLike) -> FolderLock:
    """The lock of a project folder (one object per resolved path in a process; re-entrant;
    exclusive across processes too, see :class:`FolderLock`): held for every read-modify-write
    of the folder's JSON files and while a new name is reserved."""
    key = os.path.realpath(os.fspath(folder))
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = FolderLock(key)
        return _LOCKS[key]


class SharedJson:
    """A small JSON file that several objects and processes share: :meth:`read` returns the file
    as it is now (parsed again only when its modification time, size or inode changed, or this
    process wrote it since), :meth:`update` re-reads it, applies one change and writes it
    atomically, all under ``lock``. The dict :meth:`read` returns must not be changed."""

    def __init__(self, path: Path, lock: FolderLock | threading.RLock,
                 default: Callable[[], dict[str, Any]],
                 check: Callable[[dict[str, Any]], None] | None = None, advice: str = "") -> None:
        self.path, self.lock = path, lock
        self._key = os.path.realpath(path)
        self._default, self._check, self._advice = default, check, advice
        self._data: dict[str, Any] | None = None
        self._stamp: tuple[int, ...] | None = None

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, _WRITES.get(self._key, 0))

    def read(self) -> dict[str, Any]:
        stamp = self._stat()
        if stamp is None:
            return self._default()
        if self._data is None or stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{self.path} cannot be read ({exc}); {self._advice}") from exc
            if self._check is not None:
                self._check(data)
            self._data, self._stamp = data, stamp
        return self._data

    def exists(self) -> bool:
        return self.path.exists()

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """``change(state)`` on the state as it is on disk now, then write it back; returns what
        ``change`` returns. Nothing is written if ``change`` raises."""
        with self.lock:
            state = copy.deepcopy(self.read())
            out = change(state)
            _write_json_atomic(self.path, state)
            _WRITES[self._key] = _WRITES.get(self._key, 0) + 1
            self._data, self._stamp = state, self._stat()
        return out


def claim_numbered_file(folder: Path, prefix: str, suffix: str, width: int,
                        names: Any, first: int) -> str:
    """The next free name ``prefix + number`` (one more than the largest among ``names`` and the
    files ``folder/<prefix><number><suffix>``, else ``first``), its file created empty and
    exclusively so that no other writer, in this process or another, takes it."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)")
    taken = {int(m.group(1)) for n in names if (m := pattern.fullmatch(str(n)))}
    taken |= {int(m.group(1)) for f in folder.glob(f"{prefix}*{suffix}")
              if (m := pattern.fullmatch(f.name[: -len(suffix)]))}
    number = max(taken) + 1 if taken else first
    while True:
        name = f"{prefix}{number:0{width}d}"
        try:
            with open(folder / f"{name}{suffix}", "xb"):
                return name
        except FileExistsError:
            number += 1
