"""Which code a benchmark figure came from: the git commit of this checkout."""

from __future__ import annotations

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit(repo: str = REPO) -> str:
  """'abc1234', 'abc1234+dirty' with uncommitted changes, or 'unknown' (no git).

  A copy of the tree whose git metadata lags its files (the device tool's, at
  times) names the older commit: name the code with the benchmark's --note then.
  """
  try:
    out = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'],
                         capture_output=True, text=True, timeout=5, check=False)
    dirty = subprocess.run(['git', '-C', repo, 'status', '--porcelain'],
                           capture_output=True, text=True, timeout=5, check=False)
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  commit = out.stdout.strip()
  if not commit:
    return 'unknown'
  return commit + ('+dirty' if dirty.stdout.strip() else '')
