"""One trainer per workdir: an exclusive OS lock on `<workdir>/train.lock`.

`flock` locks belong to the open file and the kernel drops them when the process dies, so a
SIGKILLed run never leaves a stale lock: the file may stay behind, unlocked, and the next run
takes it. The holder writes its pid into the file so that a refused run can name it.

The lock file is removed when the holder lets go, so that a run refused before it wrote anything
leaves the workdir as it found it. Removing a lock file races with a process that opened it
just before: that process would lock an unlinked file while a third one creates and locks a new
one. So after locking, a taker checks that the path still names the file it locked, and tries
again when it does not.

Which modes lock: `train` (it writes checkpoints, metrics.jsonl and config.json). The other
modes read checkpoints, which are replaced by atomic renames, and write only their own output
files (each written to a temporary name and renamed), so they can run beside a trainer.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "train.lock"
PID_PATIENCE_S = 2.0


class WorkdirBusyError(OSError):
    """Another process holds the workdir's lock."""


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): ...` holds the lock (creating the workdir)."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.handle = None
        self.created = False

    def acquire(self) -> "WorkdirLock":
        self.created = not self.workdir.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        while True:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _wait_for_pid(handle)
                os.close(handle)
                self._remove_if_created()
                raise WorkdirBusyError(f"workdir {self.workdir} is in use by another training run "
                                       f"(pid {holder or 'unknown'}, lock {self.path}); wait for it to "
                                       f"finish or stop it") from None
            if _same_file(handle, self.path):
                break
            os.close(handle)  # the holder removed the file between our open and our lock
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody else can hold this file
        finally:
            os.close(self.handle)  # drops the lock
            self.handle = None
            self._remove_if_created()

    def _remove_if_created(self) -> None:
        """A workdir this lock created and nothing filled (a run refused at once) goes again."""
        if self.created:
            try:
                self.workdir.rmdir()
            except OSError:
                pass
    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(handle: int) -> str:
    try:
        return os.pread(handle, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _wait_for_pid(handle: int) -> str:
    """The holder writes its pid just after it locks; a run refused in between waits for it.

    On a busy machine the holder can be descheduled between its flock and its write for longer
    than a refused run takes to read the file, which then named no pid.
    """
    deadline = time.monotonic() + PID_PATIENCE_S
    while not (holder := _read_pid(handle)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return holder


def _same_file(handle: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
