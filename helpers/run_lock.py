"""One writer per run folder: distill.py and export.py hold an exclusive lock on the folder they write for as long as
they run, so two runs can never interleave their files (the same command twice, two learning rates into one folder,
two --resume). A second process is refused with one line naming the holder. The lock is `fcntl.flock` on
<folder>/.lock: the kernel drops it when its process ends, kill -9 included, so there is never a stale lock.

  lock_run_folder     take the lock (`@entrypoint` releases it when the script's main ends)
  remove_stale_temps  what a killed writer left in the folder, removed under the lock
  is_run_file         a folder entry that belongs to a run (not the lock, not a temp file)
"""
import contextlib
import os
import shutil
import sys
from pathlib import Path

from helpers import common
from helpers.common import UserError

try:
    import fcntl  # POSIX; elsewhere a run folder is not locked
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".lock"  # <run folder>/.lock: pid and command of the process writing the folder, while it runs


class FolderLock:
    """An exclusive flock on <folder>/.lock. The kernel drops it when the process dies (kill -9 included), so there
    is never a stale lock; a .lock file left by a killed process is taken over by the next run."""

    def __init__(self, folder, fd, created):
        self.folder, self.fd, self.created = folder, fd, created

    def release(self, undo=False):
        """Remove .lock (while still held, so no one takes a file that is about to go) and unlock. undo: also
        remove the folders this lock created, when they are still empty (a run refused after taking the lock)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.folder / LOCK_NAME)
        os.close(self.fd)
        self.fd = None
        if self in common._LOCKS:
            common._LOCKS.remove(self)
        for folder in self.created if undo else ():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def lock_run_folder(folder, flag="--out"):
    """Take the run folder's exclusive lock for the rest of this process's main (`@entrypoint` releases it), creating
    the folder if needed; another process holding it is one UserError naming that process (pid and command)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first, as undo removes them
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~common._UMASK)
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = " ".join(os.read(fd, 4096).decode(errors="replace").split()) or "starting, pid not written yet"
            os.close(fd)
            for p in created:
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise UserError(f"{folder} is being written by another process (pid {holder}): wait for it to end or "
                            f"stop it, or choose another {flag}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its holder removed it between our open and our lock: take the new one
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}: {' '.join(sys.argv) or 'python'}\n".encode())
    lock = FolderLock(folder, fd, created)
    common._LOCKS.append(lock)
    return lock


def remove_stale_temps(folder):
    """Temp files and folders that a killed writer left in `folder` (atomic_write's .NAME.*.tmp, the open_clip
    export's .open_clip.*.tmp/ and .open_clip.*.old/). Call it only under the folder's lock: no live writer then."""
    for stale in [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.old")]:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def is_run_file(path):
    """Whether a folder entry belongs to a run (not the lock, not a killed writer's temp file)."""
    name = Path(path).name
    return name != LOCK_NAME and not (name.startswith(".") and name.endswith((".tmp", ".old")))
