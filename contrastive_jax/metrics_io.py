"""Metrics out of a run: WORKDIR/metrics.jsonl, TensorBoard, console progress.

Everything here writes only on the process that owns it (default: process 0);
on other processes the writers are inert, so binaries call them unconditionally.

  WORKDIR/metrics.jsonl    one JSON object per write_scalars call: {"step": s, ...}
  WORKDIR/tensorboard/     tensorboardX event files (scalars, image grids)
  WORKDIR/config.json      the run's config
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Mapping

import jax
import numpy as np

from contrastive_jax import files

__all__ = ['MetricsWriter', 'Progress', 'read_metrics', 'format_duration']

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
CONFIG_FILE = 'config.json'


def _to_float(name: str, value: Any) -> float | int:
  """A scalar metric as a Python number (ints stay ints: counts, steps)."""
  arr = np.asarray(value)  # also fetches a jax scalar from device
  if arr.size != 1:
    raise ValueError(f'Metric {name!r} must be a scalar; got shape {arr.shape}.')
  item = arr.reshape(()).item()
  if isinstance(item, bool):
    return int(item)
  if isinstance(item, (int, float)):
    return item
  return float(item)


def to_json_types(obj: Any, strict: bool = False) -> Any:
  """Plain JSON types: ConfigDicts and mappings -> dicts, tuples -> lists,
  numpy / jax scalars and arrays -> numbers and lists. Anything else: str(obj)
  (best effort for configs, e.g. a dtype or a callable), or TypeError if strict.
  """
  if hasattr(obj, 'to_dict') and callable(obj.to_dict):
    obj = obj.to_dict()
  if isinstance(obj, Mapping):
    return {str(k): to_json_types(v, strict) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json_types(v, strict) for v in obj]
  if isinstance(obj, (str, bool, int, float)) or obj is None:
    return obj
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if strict:
    raise TypeError(f'{type(obj).__name__} ({obj!r}) is not JSON-serialisable; convert it '
                    'to int/float/str/list/dict first.')
  return str(obj)


class MetricsWriter:
  """Appends scalars to WORKDIR/metrics.jsonl and TensorBoard; images to TB.

  Args:
    workdir: the run directory (created if missing).
    enabled: write or not; default: only on process 0.
    filename: the JSON-lines file under workdir (e.g. 'eval_metrics.jsonl' for
      a separate evaluator writing into the same workdir).
    tensorboard_subdir: event-file directory under workdir ('' = no TensorBoard).
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None,
               filename: str = METRICS_FILE,
               tensorboard_subdir: str = TENSORBOARD_DIR):
    # '~' expanded here once, so TensorBoard's directory gets it too (files.py
    # expands it for the rest; orbax's checkpoint path is expanded the same way).
    self.workdir = workdir if files.is_remote(workdir) else os.path.expanduser(workdir)
    workdir = self.workdir
    self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
    self.metrics_path = os.path.join(workdir, filename)
    self._tb = None
    self._tb_dir = os.path.join(workdir, tensorboard_subdir) if tensorboard_subdir else ''
    if not self.enabled:
      return
    files.makedirs(workdir)
    if self._tb_dir:
      self._tb = _tensorboard_writer(self._tb_dir)

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """One line {"step": step, **metrics} in metrics.jsonl, flushed now."""
    if not self.enabled:
      return
    step = int(step)
    values = {str(k): _to_float(k, v) for k, v in metrics.items()}
    # NaN / inf are written as NaN / Infinity, which Python's json reads back:
    # a diverged loss should show up in the log, not crash the writer.
    files.append_line(self.metrics_path, json.dumps({'step': step, **values}))
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, step)
      self._tb.flush()

  def write_images(self, step: int, tag: str, images: Any) -> None:
    """An image grid in TensorBoard. images: [N,H,W,C] float in [0,1], C=1 or 3."""
    if not self.enabled or self._tb is None:
      return
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
      raise ValueError(f'write_images({tag!r}): want [N,H,W,C] with C in (1,3,4); '
                       f'got shape {images.shape}.')
    images = np.clip(images, 0.0, 1.0)
    self._tb.add_images(tag, images, int(step), dataformats='NHWC')
    self._tb.flush()

  def write_config(self, config: Any) -> None:
    """WORKDIR/config.json from an ml_collections.ConfigDict (or a dict)."""
    self.write_json(CONFIG_FILE, config)
    if self._tb is not None:
      # The config as text in TensorBoard too, so a run is self-describing there.
      text = json.dumps(to_json_types(config), indent=2, sort_keys=True)
      self._tb.add_text('config', '```\n' + text + '\n```', 0)
      self._tb.flush()

  def write_json(self, relpath: str, obj: Any) -> None:
    """WORKDIR/relpath := obj as JSON (atomically replaced)."""
    if not self.enabled:
      return
    text = json.dumps(to_json_types(obj), indent=2, sort_keys=True) + '\n'
    files.write_text_atomic(os.path.join(self.workdir, relpath), text)

  def truncate(self, after_step: int) -> None:
    """Drops metrics.jsonl lines with step > after_step.

    Call when resuming from a checkpoint at `after_step`, so lines logged after
    that checkpoint by the interrupted run are not duplicated. TensorBoard's
    events cannot be edited: a purge marker makes TensorBoard hide them.
    """
    if not self.enabled:
      return
    if self._tb is not None:
      # TensorBoard hides the earlier events at steps > after_step from here on.
      self._tb.close()
      self._tb = _tensorboard_writer(self._tb_dir, purge_step=after_step + 1,
                                     filename_suffix=f'.resumed-{os.getpid()}')
    if not files.exists(self.metrics_path):
      return
    kept = [r for r in read_metrics(self.workdir, os.path.basename(self.metrics_path))
            if r.get('step', 0) <= after_step]
    files.write_text_atomic(self.metrics_path, ''.join(json.dumps(r) + '\n' for r in kept))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _tensorboard_writer(logdir: str, purge_step: int | None = None,
                        filename_suffix: str = '') -> Any:
  """A tensorboardX SummaryWriter, or None (with a warning) where it cannot write.

  tensorboardX writes gs:// (with google-cloud-storage) and s3:// (with boto3)
  itself; metrics.jsonl is the run's record either way.
  """
  # Imported here: only the writing process pays for it.
  from tensorboardX import SummaryWriter, record_writer  # pylint: disable=g-import-not-at-top
  if files.is_remote(logdir):
    scheme = logdir.split('://')[0]
    # Checked up front: tensorboardX's remote writers fail in their constructor
    # without their client library, and then again in __del__.
    usable = {'gs': ('GCS_ENABLED', 'google-cloud-storage'), 's3': ('S3_ENABLED', 'boto3')}
    flag, package = usable.get(scheme, (None, None))
    if flag is None or not getattr(record_writer, flag, False):
      reason = (f'tensorboardX writes {scheme}:// only with {package} installed' if package
                else f'tensorboardX cannot write {scheme}:// paths')
      warnings.warn(f'No TensorBoard events for {logdir}: {reason}; metrics.jsonl in the '
                    'workdir has every scalar.')
      return None
  # tensorboardX names event files by the second and host only: the suffix keeps
  # a writer reopened within the same second from overwriting the first file.
  return SummaryWriter(logdir, purge_step=purge_step, filename_suffix=filename_suffix)


def read_metrics(workdir: str, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in order ([] if the file is missing).

  A truncated last line (the run was killed mid-write) is skipped.
  """
  path = os.path.join(workdir, filename)
  if not files.exists(path):
    return []
  records = []
  lines = files.read_text(path).splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break  # partial final line
      raise ValueError(f'{path}:{i + 1} is not valid JSON: {line[:200]!r}')
  return records


def format_duration(seconds: float) -> str:
  """45s, 3m12s, 1h02m."""
  if not math.isfinite(seconds) or seconds < 0:
    return '?'
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{(seconds % 3600) // 60:02d}m'


def _format_value(value: Any) -> str:
  value = _to_float('value', value)
  if isinstance(value, int):
    return str(value)
  return f'{value:.4g}'


class Progress:
  """One console line per log step:

    step 120/1000 | loss 4.123 | contrast_acc 0.52 | 1234 img/s | ETA 3m12s

  img/s and ETA come from the steps and wall time since the previous printed
  line (the first line measures from construction, compile time included).

  Args:
    total_steps: the last step.
    batch_size: global images per step.
    enabled: print or not; default: only on process 0.
    log_every: update() prints when step % log_every == 0 or at the last step
      (1 = every call).
    start_step: the step training (re)starts from.
    print_fn: where lines go (default: stdout, flushed).
    unit: what batch_size counts, shown as '<unit>/s' ('img'; word2vec: 'words').
  """

  def __init__(self, total_steps: int, batch_size: int, *,
               enabled: bool | None = None, log_every: int = 1,
               start_step: int = 0,
               print_fn: Callable[[str], None] | None = None,
               unit: str = 'img'):
    self.total_steps = int(total_steps)
    self.batch_size = batch_size if isinstance(batch_size, float) else int(batch_size)
    self.unit = unit
    self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
    self.log_every = max(1, int(log_every))
    self._print = print_fn or (lambda line: print(line, file=sys.stdout, flush=True))
    self._last_step = int(start_step)
    self._last_time = time.monotonic()

  def format(self, step: int, metrics: Mapping[str, Any], images_per_s: float,
             eta_s: float) -> str:
    parts = [f'step {step}/{self.total_steps}']
    parts += [f'{k} {_format_value(v)}' for k, v in metrics.items()]
    parts.append(f'{images_per_s:.0f} {self.unit}/s' if math.isfinite(images_per_s)
                 else f'- {self.unit}/s')
    parts.append(f'ETA {format_duration(eta_s)}')
    return ' | '.join(parts)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> str | None:
    """Prints (and returns) the line at log steps; returns None otherwise."""
    step = int(step)
    if not self.enabled:
      return None
    if step % self.log_every != 0 and step != self.total_steps:
      return None
    now = time.monotonic()
    steps_done = step - self._last_step
    elapsed = now - self._last_time
    if steps_done > 0 and elapsed > 0:
      steps_per_s = steps_done / elapsed
      images_per_s = steps_per_s * self.batch_size
      eta_s = (self.total_steps - step) / steps_per_s
    else:
      images_per_s, eta_s = float('nan'), float('nan')
    self._last_step, self._last_time = step, now
    line = self.format(step, metrics or {}, images_per_s, eta_s)
    self._print(line)
    return line
