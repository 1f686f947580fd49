"""An OS-level lock on a file (a run directory's ``.lock``, a dataset being written), held for the life of a process.

Two training commands on one run directory would both append to its metrics and
race on checkpoint rotation; a second command started later would silently
resume from the live run's checkpoint and repeat its work. :class:`FileLock`
prevents that with ``fcntl.flock`` on a lock file (``<run dir>/.lock``):

- the kernel releases the lock when the holding process dies, however it dies
  (SIGKILL, OOM, node reboot of a local disk): a stale lock of a dead process is
  simply taken over by the next ``flock`` call, nothing to clean up by hand;
- a second process does not wait: it gets :class:`~deflow_trl.errors.RunLockedError`
  at once, naming the holder's pid, host and start time (written into the lock
  file by the holder);
- the lock file stays in place after release (deleting it would let two
  processes lock two different files of the same name); the app removes it
  only from a directory that a refused launch would otherwise leave holding
  nothing but the lock.

Limits: ``flock`` is per host on most network file systems (NFS gives each
client its own view unless the server supports it; Lustre needs ``-o flock``).
The holder's host is in the message so a user can tell.

Examples:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with FileLock(d + "/.lock", what="run directory " + d):
    ...     try:
    ...         FileLock(d + "/.lock", what="run directory " + d).acquire()
    ...     except RunLockedError as err:
    ...         print("refused:", "is in use by pid" in str(err))
    refused: True
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket

from deflow_trl.errors import RunLockedError

__all__ = ["FileLock"]


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path``; a context manager.

    Args:
        path: the lock file (created if missing; release() leaves it in place).
        what: how the error message names the locked thing.
    """

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self._fd: int | None = None
        self.created = False  # whether acquire() created the lock file

    def acquire(self) -> "FileLock":
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.what} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"(started {holder.get('started', '?')}; lock file {self.path}); wait for it to finish, stop it, "
                "or use another directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                f"started={datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd, self.created = fd, created
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)  # no stale holder info for the next reader
            except OSError:
                pass
            os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict[str, str]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
