"""What a binary tells the user when it stops, and its exit status.

Exit status (documented in the README):
  0   finished, or stopped at config.stop_at_step
  1   an unexpected error (a bug or a library failure: the traceback is printed),
      or a write that failed (a full disk, an I/O error: one line naming the
      path; the checkpoints written before it are intact)
  2   a user error: a config value, a path, data that does not fit (one line)
  3   the run diverged: a non-finite loss, gradient or parameter (one line
      naming the step and the last good checkpoint)
  4   another process holds the workdir
  75  stopped by SIGTERM / Ctrl-C after writing a checkpoint: rerun the same
      command to resume (EX_TEMPFAIL: "try again")
A restart loop that should end when the run is done or broken, and retry
after a preemption: `while python -m ...; [ $? -eq 75 ]; do :; done` (or test
for 75 explicitly).
"""

from __future__ import annotations

import errno as errno_lib

EXIT_WRITE_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_LOCKED = 4
EXIT_PREEMPTED = 75


class NonFiniteError(RuntimeError):
  """The loss, a gradient or a parameter became NaN or infinite."""

  def __init__(self, step: int, last_good: int | None, directory: str):
    where = (f'the last good checkpoint is step {last_good} in {directory}' if last_good
             else 'no checkpoint was written before it')
    super().__init__(
        f'The run diverged at step {step}: the loss, a gradient or a parameter is NaN or '
        f'infinite. Nothing non-finite was saved; {where}. Lower config.optim.learning_rate '
        "(or set config.nan_policy='skip_step' to drop such batches) and rerun.")
    self.step, self.last_good = step, last_good


class WorkdirLockedError(RuntimeError):
  """Another process is training in the same workdir."""


class WorkdirError(ValueError):
  """The workdir cannot be used (a file, not writable, ...)."""


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (no space left, an I/O error, ...).

  An OSError with the failing write's errno (ENOSPC for a full disk) and the
  checkpoint directory as its filename; str() is the whole message, one line:
  what failed, where, the space a step needs when the disk is full, and which
  earlier checkpoint a rerun resumes from.
  """

  def __init__(self, code: int, message: str, path: str):
    super().__init__(code, message, path)
    self.message = message

  @property
  def disk_full(self) -> bool:
    return self.errno in (errno_lib.ENOSPC, errno_lib.EDQUOT)

  def __str__(self) -> str:
    return self.message
