"""One writer per run directory: an advisory lock held for the life of a training, study or
quickstart process.

    with RunLock(run_dir):    # creates run_dir if needed; UserError if another process holds it
        ...

The lock is `fcntl.flock` on run_dir/lock (blt.runs.layout.LOCK), a file holding the pid of
the process that took it. The kernel releases a flock when its holder exits, however it exits
(kill -9 included), so the lock of a dead process is stale and simply taken over; a second
live writer gets one line naming the holder's pid. The file stays after the run (naming its
last writer). Where the filesystem has no flock (some network filesystems), the pid decides:
a live pid other than ours holds the run.

A directory the lock created is removed again when the block fails before anything but the
lock was written into it, so bad input leaves no empty run directory behind.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from blt.errors import UserError
from blt.files import make_directory, write_errors
from blt.runs import layout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holds_nothing(run_dir: Path) -> bool:
    """True when run_dir holds only the lock file and (empty) directories."""
    return all(p.is_dir() or p.name == layout.LOCK for p in run_dir.rglob("*"))


class RunLock:
    def __init__(self, run_dir, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.fd: int | None = None
        self.created = False

    def _holder(self) -> int | None:
        try:
            return int(os.pread(self.fd, 32, 0).decode().strip())
        except (OSError, ValueError):
            return None

    def _refuse(self, holder: int | None) -> None:
        os.close(self.fd)
        self.fd = None
        who = f"pid {holder}" if holder is not None else "a process whose pid it does not record"
        raise UserError(f"{self.run_dir} is in use by another blt process ({who}); "
                        f"wait for it to end or choose another --out")

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        self.created = not self.run_dir.exists()
        make_directory(self.run_dir)
        path = self.run_dir / layout.LOCK
        with write_errors(path):
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse(self._holder())
        except OSError as e:  # no flock here: a live recorded pid holds the run
            holder = self._holder()
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if holder not in (None, os.getpid()) and _pid_alive(holder):
                self._refuse(holder)
        with write_errors(path):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.fd is None:
            return False
        if exc_type is not None and self.created and _holds_nothing(self.run_dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        os.close(self.fd)  # releases the flock
        self.fd = None
        return False
