"""The run's own small files (config.json, metrics.jsonl, results, plots), local or remote.

A pod run's workdir is a bucket URL (`--workdir=gs://BUCKET/run`): orbax
writes the checkpoints there, and everything else must go there too, or it
lands in a local folder named `gs:` on worker 0 and is lost with the VM.
`etils.epath` (an orbax dependency) routes `gs://` and other URLs to
TensorFlow's file system or fsspec and plain paths to `os`.

Object stores cannot append, so `append_line` rewrites a remote file whole:
fine for a metrics log of a few thousand lines written once a log interval.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike[str]) -> bool:
  return '://' in os.fspath(path)


def _path(path: str | os.PathLike[str]) -> epath.Path:
  # '~' as checkpoint.py resolves it for orbax: --workdir=~/run is one folder.
  return epath.Path(path if is_remote(path) else os.path.expanduser(os.fspath(path)))


def exists(path: str | os.PathLike[str]) -> bool:
  return _path(path).exists()


def makedirs(path: str | os.PathLike[str]) -> None:
  _path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str | os.PathLike[str]) -> str:
  return _path(path).read_text(encoding='utf-8')


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
  """Readers see the old file or the new one, never half of it."""
  path = _path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'{path.name}.tmp-{os.getpid()}'
  tmp.write_bytes(data)
  tmp.replace(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
  write_bytes_atomic(path, text.encode('utf-8'))


def append_line(path: str | os.PathLike[str], line: str) -> None:
  """Adds `line` + newline at the end of the file (created if missing)."""
  if not is_remote(path):
    with _path(path).open('a', encoding='utf-8') as f:
      f.write(line + '\n')
      f.flush()
    return
  old = read_text(path) if exists(path) else ''
  write_text_atomic(path, old + line + '\n')
