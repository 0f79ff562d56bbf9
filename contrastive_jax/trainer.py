"""The lifecycle every training binary shares (pretrain, finetune, distill).

  run = trainer.Run.start(config, workdir, validate=...)    # set-up, nothing compiled yet
  data = ...(start_step=run.start_step)
  state = run.init_or_resume(init_fn, data, total_steps)   # exact resume, config.json
  state, step = run.train(state, step_fn, data, total_steps=..., progress_keys=...)
  if run.finished(step, total_steps): ... evaluate, run.write_results(...)
  run.close()

Set-up migrates an old config layout (config_migration), validates it before
anything compiles or the workdir is touched, starts `jax.distributed` on a
multi-host launch, builds the mesh and checks the batch divides over it,
locks the workdir against a second process (workdir_lock), lets the modality
make or check the run's own files (the text tokenizer), opens the metrics
writer and the checkpointer. `init_or_resume` restores the latest checkpoint (state, data
position; metrics logged after it are dropped) or builds a fresh state, then
writes config.json — only then, so a rerun whose config does not fit the
checkpoint fails in restore and leaves the run's config.json as it was.
`train` runs the loop with the config's log / checkpoint / stop_at_step
cadence and SIGTERM / Ctrl-C handling (loop.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import (checkpoint, config_defaults, config_migration, errors, files, loop,
                             metrics_io, modalities, optim, parallel, workdir_lock)


def schedule_lengths(config: ml_collections.ConfigDict, steps_per_epoch: float
                     ) -> tuple[float, int, int]:
  """(steps_per_epoch, total_steps, warmup_steps): total_steps when > 0, else
  num_epochs x steps_per_epoch rounded up (at least 1); warmup from config.optim."""
  total = config.total_steps if config.total_steps > 0 else max(
      1, math.ceil(config.num_epochs * steps_per_epoch - 1e-9))
  warmup = optim.warmup_steps_from(config.optim, total_steps=total,
                                   steps_per_epoch=steps_per_epoch)
  return steps_per_epoch, total, warmup


@dataclasses.dataclass
class Run:
  """One training run in one workdir (see the module docstring)."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  writer: metrics_io.MetricsWriter
  ckpt: checkpoint.Checkpointer
  start_step: int
  train_seconds: float = 0.0
  last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)

  lock: Optional[workdir_lock.WorkdirLock] = None
  preempted: bool = False   # stopped by SIGTERM / Ctrl-C (not stop_at_step)

  @classmethod
  def start(cls, config: ml_collections.ConfigDict, workdir: str, *,
            validate: Callable[[ml_collections.ConfigDict], None] = config_defaults.validate,
            ) -> 'Run':
    """Validates everything the config alone can tell before the workdir is
    touched, then takes the workdir (one writer at a time) and opens it."""
    config = config_migration.migrate(config)
    validate(config)
    if not files.is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
      raise errors.WorkdirError(f'--workdir={workdir} is a file; give a directory (new or '
                                'a run to resume).')
    parallel.maybe_initialize_distributed(config.multihost)
    mesh = parallel.make_mesh()
    parallel.local_batch_size(config.batch_size, mesh)  # fails early if it does not divide
    lock = None
    if jax.process_index() == 0:
      files.makedirs(workdir)
      lock = workdir_lock.WorkdirLock(workdir)
      lock.acquire()
    if 'data' in config:                    # (word2vec reads config.corpus instead)
      modalities.setup_run(config, workdir)   # e.g. the text tokenizer, before any data
    writer = metrics_io.MetricsWriter(workdir)
    ckpt = checkpoint.Checkpointer(f'{workdir}/checkpoints', max_to_keep=config.keep_checkpoints,
                                   save_interval_steps=config.checkpoint_every_steps)
    return cls(config=config, workdir=workdir, mesh=mesh, writer=writer, ckpt=ckpt,
               start_step=ckpt.latest_intact_step() or 0, lock=lock)

  def init_or_resume(self, init_fn: Callable[[], Any], data: Any, total_steps: int,
                     fresh_fn: Optional[Callable[[Any], Any]] = None) -> Any:
    """The state to train from: `init_fn()` restored from the latest checkpoint
    when there is one, else `fresh_fn(init_fn())` (default: as it is; e.g. a
    fine-tune copies the pretrained weights in). Writes config.json after."""
    state = init_fn()
    if self.start_step:
      state, self.start_step = loop.resume(self.ckpt, state, data, self.writer, total_steps)
    if not self.start_step:
      # A run killed before its first checkpoint starts again at step 0:
      # what it logged goes, so every step appears once in metrics.jsonl.
      self.writer.truncate(0)
      if fresh_fn is not None:
        state = fresh_fn(state)
    self.writer.write_config(self.config)
    return state

  def train(self, state: Any, step_fn: Callable[..., tuple[Any, Any]], data: Any, *,
            total_steps: int, progress_keys: Sequence[str],
            batches: Optional[Iterator[Mapping[str, np.ndarray]]] = None,
            step_args: tuple = (), items_per_step: Optional[float] = None,
            unit: str = 'img') -> tuple[Any, int]:
    """Runs the loop to total_steps (or a stop); returns (state, step reached).
    The throughput counts `items_per_step` (default config.batch_size) `unit`s
    per step: images_per_sec for 'img', else '<unit>_per_sec' (word2vec: words)."""
    config = self.config
    per_step = config.batch_size if items_per_step is None else items_per_step
    progress = metrics_io.Progress(total_steps, per_step, log_every=config.log_every_steps,
                                   start_step=self.start_step, unit=unit)
    flusher = loop.MetricsFlusher(self.writer, progress, per_step, self.start_step,
                                  progress_keys,
                                  rate_name='images_per_sec' if unit == 'img' else f'{unit}_per_sec')
    started = time.monotonic()
    state, step = loop.train_until_done(
        state, step_fn, data, batches=batches, config=config, mesh=self.mesh,
        start_step=self.start_step, total_steps=total_steps, ckpt=self.ckpt,
        flusher=flusher, step_args=step_args)
    self.train_seconds = time.monotonic() - started
    self.last_metrics = flusher.last
    self.preempted = step < min(config.stop_at_step or total_steps, total_steps)
    return state, step

  def finished(self, step: int, total_steps: int) -> bool:
    """Whether the run reached total_steps; says how to continue when not."""
    if step >= total_steps:
      return True
    logging.warning('Stopped at step %d of %d (SIGTERM or stop_at_step); rerun the same '
                    'command to resume.', step, total_steps)
    return False

  def write_results(self, filename: str, step: int, results: Mapping[str, Any],
                    scalar_suffixes: Sequence[str]) -> None:
    """Logs the results whose names end in one of `scalar_suffixes` at `step`
    (once: a rerun of a finished run evaluates again without logging twice)
    and writes them all to WORKDIR/filename."""
    scalars = {k: v for k, v in results.items()
               if any(k.endswith(s) for s in scalar_suffixes)}
    logged = self.writer.enabled and any(
        r.get('step') == step and set(scalars) <= set(r)
        for r in metrics_io.read_metrics(self.workdir))
    if scalars and not logged:
      self.writer.write_scalars(step, scalars)
    self.writer.write_json(filename, dict(results))

  def close(self) -> None:
    self.writer.close()
    if self.lock is not None:
      self.lock.release()


def print_results(line: str) -> None:
  """A result line on the console, from the first process only."""
  if jax.process_index() == 0:
    print(line, flush=True)
