"""One writer per workdir: an advisory lock held for the life of the process.

WORKDIR/.lock is locked with fcntl.flock, which the kernel releases when the
process ends however it ends (kill -9 included), so a lock left by a dead
process is simply taken over; the file records the holder's host and PID for
the message a second process prints. On a multi-host run only process 0
locks (the others write nothing but their checkpoint shards, which orbax
coordinates). Remote workdirs (gs://) have no flock: there the lock is not
taken and a warning says so.
"""

from __future__ import annotations

import fcntl
import os
import socket

from absl import logging

from contrastive_jax import files
from contrastive_jax.errors import WorkdirLockedError

LOCK_FILE = '.lock'


class WorkdirLock:
  """`acquire()` or raise WorkdirLockedError naming the holder; `release()`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    if files.is_remote(self.path):
      logging.warning('%s is remote: no lock against a second process on the same workdir.',
                      self.path)
      return
    # A run of this same process that stopped on an error (Colab, tests)
    # still holds the lock: a new run in this process takes it over.
    previous = _HELD.pop(os.path.realpath(self.path), None)
    if previous is not None:
      previous.release()
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip() or 'unknown'
      os.close(fd)
      raise WorkdirLockedError(
          f'Another process is already running in {os.path.dirname(self.path)} ({holder}). '
          'Wait for it, stop it, or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'host {socket.gethostname()} pid {os.getpid()}\n'.encode(), 0)
    self._fd = fd
    _HELD[os.path.realpath(self.path)] = self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)   # closing the descriptor drops the flock
      self._fd = None
      if _HELD.get(os.path.realpath(self.path)) is self:
        del _HELD[os.path.realpath(self.path)]


# The locks this process holds, by real path.
_HELD: dict[str, WorkdirLock] = {}
