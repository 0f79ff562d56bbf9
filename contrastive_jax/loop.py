"""Pieces of the training loop that every binary shares.

  flusher = MetricsFlusher(writer, progress, batch_size, start_step, ('loss', 'train_acc'))
  preempted = PreemptionFlag(); preempted.install()
  state, step = run_steps(state, step_fn, batches, mesh=mesh, ...,
                          should_stop=preempted.should_stop)
  out = predict_split(logits_fn, config.data, 'test', batch_size, mesh)

`run_steps` is the loop body of pretrain/finetune/distill: global batch
assembly, asynchronous metrics (a log step's values are fetched after the next
step is dispatched, so the host never waits on the device), periodic
checkpoints with the data position, and a clean stop on SIGTERM or Ctrl-C (the
caller passes its `PreemptionFlag.should_stop`).
"""

from __future__ import annotations

import ast
import collections
import errno
import logging as py_logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from contrastive_jax import checkpoint, errors, metrics_io, parallel, probes
from contrastive_jax.data import pipeline


class PreemptionFlag:
  """A stop request the loop answers with a checkpoint at a step boundary.

  One process: SIGTERM (TPU preemption, `kill`) and the first Ctrl-C (SIGINT;
  Colab's interrupt button) set the flag; a second Ctrl-C interrupts at once.
  Several processes: no Python handler at all. `jax.distributed` installs
  JAX's own SIGTERM notifier, which tells the coordination service, and every
  host then stops at the same step (`reached_preemption_sync_point`). A Python
  handler would replace that notifier: each host would stop at its own step and
  its checkpoint would wait forever for hosts still inside a collective step.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}
    self._sync_point_available = True

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # Python only delivers signals to the main thread
    if jax.process_count() > 1:
      return
    self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._event.set()

  def _on_sigint(self, signum, frame) -> None:
    if self._event.is_set():  # the second Ctrl-C: the user does not want to wait
      raise KeyboardInterrupt
    self._event.set()
    # os.write, not print: a handler that prints while the interrupted code is
    # itself writing to stderr raises 'reentrant call'.
    os.write(2, b'\nInterrupt: checkpointing at the end of this step, then stopping '
                b'(Ctrl-C again to abort without a checkpoint).\n')

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      if not self._sync_point_available:
        return False
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as e:  # jax_enable_preemption_service=False
        self._sync_point_available = False
        warnings.warn(f'No preemption handling on this multi-host run ({e}); enable '
                      'jax_enable_preemption_service to checkpoint on SIGTERM.')
        return False
    return self._event.is_set()


class MetricsFlusher:
  """Holds a log step's metrics (still on device) and writes them one step later.

  Adds `rate_name` (default `images_per_sec`: batch_size per second since the
  previous flush) and prints the `progress_keys` on the console line.
  """

  def __init__(self, writer: metrics_io.MetricsWriter, progress: metrics_io.Progress,
               batch_size: int, start_step: int, progress_keys: Sequence[str],
               rate_name: str = 'images_per_sec'):
    self.writer, self.progress, self.rate_name = writer, progress, rate_name
    self.batch_size, self.progress_keys = batch_size, tuple(progress_keys)
    self._pending: Optional[tuple[int, Any]] = None
    self._last_time, self._last_step = time.monotonic(), start_step
    self.last: dict[str, float] = {}  # the latest flushed metrics

  def set(self, step: int, device_metrics: Any) -> None:
    self._pending = (step, device_metrics)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.monotonic()
    metrics[self.rate_name] = (step - self._last_step) * self.batch_size / max(
        now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    self.writer.write_scalars(step, metrics)
    self.progress.update(step, {k: metrics[k] for k in self.progress_keys if k in metrics})
    self.last = metrics


# Steps dispatched but not finished, at most (see run_steps).
MAX_STEPS_IN_FLIGHT = 2
NAN_POLICIES = ('stop', 'skip_step')


class _FiniteCheck:
  """Reads each step's 'nonfinite' metric once it is on the host (the loop
  waits for it anyway) and stops the run at the first non-finite step, or
  counts the batches the step skipped (config.nan_policy='skip_step')."""

  def __init__(self, policy: str, ckpt):
    if policy not in NAN_POLICIES:
      raise ValueError(f'config.nan_policy={policy!r}; choose one of {NAN_POLICIES}.')
    self.policy, self.ckpt, self.skipped = policy, ckpt, 0

  def __call__(self, step: int, metrics: Any) -> None:
    if 'nonfinite' not in metrics or not float(metrics['nonfinite']):
      return
    if self.policy == 'skip_step':
      self.skipped += 1
      logging.warning('Step %d: non-finite loss or gradient; the batch was skipped '
                      "(config.nan_policy='skip_step'; %d so far).", step, self.skipped)
      return
    raise errors.NonFiniteError(step, self.ckpt.latest_step(), self.ckpt.directory)


def run_steps(state: Any, step_fn: Callable[..., tuple[Any, Any]],
              batches: Iterator[Mapping[str, np.ndarray]], *, mesh,
              start_step: int, total_steps: int, log_every: int, checkpoint_every: int,
              ckpt, extra_fn: Callable[[], dict], flusher: MetricsFlusher,
              should_stop: Callable[[int], bool], step_args: tuple = (),
              stop_at_step: int = 0, nan_policy: str = 'stop') -> tuple[Any, int]:
  """Runs `state, metrics = step_fn(state, batch, *step_args)` up to total_steps
  (or up to `stop_at_step` when > 0: config.stop_at_step, runs in chunks).

  Checkpoints every `checkpoint_every` steps and at the end (or on stop) with
  `extra_fn()` (data position, ...), then waits for the write. A step whose
  metrics say 'nonfinite' stops the run with errors.NonFiniteError before
  anything after it is saved (every step up to a checkpoint is checked before
  the checkpoint is written), unless nan_policy='skip_step' (the step itself
  then kept the previous state). Returns (state, step reached); step <
  total_steps means it stopped early.
  """
  if log_every <= 0 or checkpoint_every <= 0:
    raise ValueError(f'config.log_every_steps={log_every} and config.checkpoint_every_steps='
                     f'{checkpoint_every} must both be positive (use a large value for "rarely").')
  check = _FiniteCheck(nan_policy, ckpt)
  step = start_step
  end_step = min(stop_at_step or total_steps, total_steps)
  in_flight: collections.deque = collections.deque()

  def drain(keep: int) -> None:
    while len(in_flight) > keep:
      done_step, done = in_flight.popleft()
      check(done_step, jax.block_until_ready(done))

  while step < end_step:
    batch = parallel.global_batch(next(batches), mesh)
    state, metrics = step_fn(state, batch, *step_args)
    # Dispatch is asynchronous: unchecked, the host ran up to a log interval
    # ahead of the device, and a stop (SIGTERM, a deadline) waited for all of
    # them before its checkpoint. One step queued behind the running one
    # keeps the device busy.
    step += 1
    in_flight.append((step, metrics))
    drain(MAX_STEPS_IN_FLIGHT)
    flusher.flush()  # the previous log step's values are ready by now
    if step % log_every == 0 or step == total_steps:
      flusher.set(step, metrics)
    if step % checkpoint_every == 0 and step < total_steps:
      drain(0)  # never save a state that follows a non-finite step
      ckpt.save(step, state, extra_fn())
    if should_stop(step):
      break
  drain(0)
  flusher.flush()
  ckpt.save(step, state, extra_fn(), force=True)
  ckpt.wait()
  return state, step


def resume(ckpt, state: Any, data: Any, writer: metrics_io.MetricsWriter,
           total_steps: int) -> tuple[Any, int]:
  """(state, step): the newest intact checkpoint (shaped and sharded like
  `state`; damaged newer ones are set aside, see checkpoint.py), with the data
  iterator moved to its position and the metrics the interrupted run logged
  after that step dropped. Raises (before anything is written) when the
  checkpoint does not fit `state`.
  """
  target = checkpoint.to_abstract(state)

  def restore(step: int) -> tuple[Any, dict]:
    saved = ckpt.item_metadata(step)
    if (hasattr(state, 'extra') and not jax.tree.leaves(state.extra)
        and isinstance(saved, Mapping) and 'extra' not in saved):
      # Written before TrainState had the method's extra state: restore the
      # four fields it had, and start the (empty) extra state as it is.
      fields = ('step', 'params', 'batch_stats', 'opt_state')
      restored, extra = ckpt.restore(step, target={k: getattr(target, k) for k in fields})
      return state.replace(**restored), extra
    return ckpt.restore(step, target=target)

  state, extra, step = ckpt.restore_latest_intact(target, restore)
  data.restore(extra['data'])
  if extra.get('total_steps', total_steps) != total_steps:
    # The schedule follows this run's length: the LR jumps at the resume step.
    logging.warning('The checkpoint was written for %s total steps; this run has %d.',
                    extra.get('total_steps'), total_steps)
  writer.truncate(step)
  logging.info('Resumed from step %d.', step)
  return state, step


def train_until_done(state: Any, step_fn: Callable[..., tuple[Any, Any]], data: Any, *,
                     config: ml_collections.ConfigDict, mesh, start_step: int,
                     total_steps: int, ckpt, flusher: MetricsFlusher,
                     batches: Optional[Iterator[Mapping[str, np.ndarray]]] = None,
                     step_args: tuple = ()) -> tuple[Any, int]:
  """run_steps as every binary runs it: the config's log / checkpoint / stop_at_step
  cadence, SIGTERM -> checkpoint and stop, the data position and total_steps in
  every checkpoint; closes the checkpointer and the data iterator at the end.

  data: the iterator whose position is saved (`data.state()`); batches: what
  the step consumes, when it wraps data (default: data itself).
  """
  preempted = PreemptionFlag()
  preempted.install()
  try:
    return run_steps(
        state, step_fn, data if batches is None else batches, mesh=mesh,
        start_step=start_step, total_steps=total_steps, log_every=config.log_every_steps,
        checkpoint_every=config.checkpoint_every_steps, ckpt=ckpt, flusher=flusher,
        step_args=step_args,
        extra_fn=lambda: {'data': data.state(), 'total_steps': total_steps},
        should_stop=preempted.should_stop, stop_at_step=config.stop_at_step,
        nan_policy=config.get('nan_policy', 'stop'))
  finally:
    preempted.uninstall()
    ckpt.close()
    if hasattr(data, 'close'):
      data.close()


def predict_split(logits_fn: Callable[[jax.Array], jax.Array],
                  data_cfg: ml_collections.ConfigDict, split: str, batch_size: int,
                  mesh, keep_logits: bool = False,
                  input_key: str = 'image') -> dict[str, np.ndarray]:
  """One pass over 'train' | 'val' | 'test' with `logits_fn(global raw inputs)`
  (the modality's batch[input_key]).

  Returns host arrays over the real (unpadded) examples: 'pred', 'label', 'id'
  and, with keep_logits, 'logits' [N, classes].
  """
  out: dict[str, list] = {'pred': [], 'label': [], 'id': [], 'logits': []}
  for batch in pipeline.make_eval_iterator(data_cfg, split, global_batch_size=batch_size):
    # Every field as a global array, so all come back in the same (device) order.
    batch = parallel.global_batch(
        {k: batch[k] for k in (input_key, 'mask', 'label', 'index')}, mesh)
    logits = parallel.gather(logits_fn(batch[input_key]))
    mask = parallel.gather(batch['mask'])
    out['pred'].append(logits.argmax(-1)[mask])
    out['label'].append(parallel.gather(batch['label'])[mask])
    out['id'].append(parallel.gather(batch['index'])[mask])
    if keep_logits:
      out['logits'].append(logits[mask])
  if not keep_logits:
    del out['logits']
  return {k: np.concatenate(v) for k, v in out.items()}


def top1(prediction: Mapping[str, np.ndarray]) -> float:
  return float(np.mean(prediction['pred'] == prediction['label'])) if len(
      prediction['label']) else 0.0


def balanced_accuracy(prediction: Mapping[str, np.ndarray]) -> float:
  """probes.balanced_accuracy of a predict_split output."""
  return probes.balanced_accuracy(prediction['pred'], prediction['label'])


# Library log lines below WARNING that the console does not show (--library_logs
# brings them back), and harmless warnings that read like errors.
_LIBRARY_PATHS = ('/orbax/', '/etils/', '/tensorflow/', '/tensorflow_datasets/', '/jax/_src/',
                  '/gensim/', '/smart_open/')
_HARMLESS = ('Unable to initialize backend', 'directory is read only',
             'Given directory is read only')


class _QuietLibraries:
  """A logging filter: progress and results, and real warnings, only.

  orbax also logs, with its traceback, every failure of a background save
  thread, which the main thread then raises (as errors.CheckpointWriteError
  when the write failed), and asyncio logs the sibling writes that failed
  the same way at exit ("Future exception was never retrieved"): those
  repeats are dropped too.
  """

  def filter(self, record) -> bool:
    if record.levelno < 30 and any(p in record.pathname for p in _LIBRARY_PATHS):
      return False
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and (
        ('/orbax/' in record.pathname and 'thread' in record.getMessage().lower())
        or (record.name == 'asyncio' and checkpoint.is_write_error(exc))):
      return False
    return not any(h in record.getMessage() for h in _HARMLESS)


def _quiet_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
  """sys.unraisablehook without 'Event loop is closed' from asyncio's
  call_soon_threadsafe: tensorstore delivering the result of a write whose
  save already failed (another write ran out of space) to the event loop
  orbax closed when it gave up on that save. Nobody waits for that result;
  the failure itself is raised in the main thread."""

  def hook(unraisable: Any) -> None:
    e, tb = unraisable.exc_value, unraisable.exc_traceback
    names = set()
    while tb is not None:
      names.add(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'
        and 'call_soon_threadsafe' in names):
      return
    previous(unraisable)
  return hook


def _user_message(e: BaseException) -> str:
  """An exception's message on one line (ml_collections quotes and escapes its own)."""
  while e.__cause__ is not None and str(e.__cause__) and not str(e).strip():
    e = e.__cause__
  text = str(e)
  if isinstance(e, (KeyError, AttributeError)):
    try:
      text = ast.literal_eval(text) if text[:1] in '"\'' else text
      text = ast.literal_eval(text) if text[:1] in '"\'' else text
    except (ValueError, SyntaxError):
      pass
  return ' '.join(str(text).split())


def _exit_code(e: BaseException) -> int | None:
  """The exit status of an error the user can fix (None: a bug, show the traceback)."""
  if isinstance(e, errors.NonFiniteError):
    return errors.EXIT_DIVERGED
  if isinstance(e, errors.WorkdirLockedError):
    return errors.EXIT_LOCKED
  if isinstance(e, errors.CheckpointWriteError) or (
      isinstance(e, OSError) and e.errno == errno.ENOSPC):
    return errors.EXIT_WRITE_FAILED
  if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError,
                    TimeoutError, KeyError, AttributeError, TypeError)):
    return errors.EXIT_USER_ERROR
  return None


def _fail(e: BaseException, code: int) -> None:
  message = _user_message(e)
  if (isinstance(e, OSError) and e.errno == errno.ENOSPC
      and not isinstance(e, errors.CheckpointWriteError)):
    message = (f'No space left on device while writing {e.filename or "the workdir"}: '
               'free some space (or point --workdir elsewhere) and rerun the same command; '
               'the checkpoints written before are intact.')
  sys.stderr.write(f'error: {message}\n(exit {code}; --verbosity=1 shows the traceback)\n')
  sys.stderr.flush()
  sys.exit(code)


def run_binary(entry: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """The `__main__` of every binary: --config / --workdir flags, then entry(config, workdir).

  Flags are defined here, only when a module is the program, so the binaries
  can import each other (absl refuses a flag defined by two modules). The
  XLA:CPU defaults are applied before the first computation starts the backend.
  A user's mistake (an unknown or invalid config key, a path, a diverged run,
  a locked workdir) ends in one line on stderr and the exit status of
  `contrastive_jax.errors`, a traceback only with --verbosity=1; a stop on
  SIGTERM / Ctrl-C exits with errors.EXIT_PREEMPTED. Open checkpointers are
  closed on every path out.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from contrastive_jax import config_migration  # pylint: disable=g-import-not-at-top
  from contrastive_jax.kernels import xla_cpu  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory: checkpoints, metrics, results.')
  flags.DEFINE_bool('library_logs', False, "Show the libraries' (orbax, TensorFlow, JAX) "
                    'informational log lines.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      overrides = [a for a in argv[1:] if a.startswith('--config')]
      message = _user_message(e)
      for arg in overrides:
        key = arg[len('--config.'):].split('=')[0] if arg.startswith('--config.') else ''
        if config_migration.renamed(key):
          message = (f'config.{key} is now config.{config_migration.renamed(key)}; write '
                     f'--config.{config_migration.renamed(key).split(" ")[0]}=...')
          break
      else:
        if isinstance(e, (KeyError, AttributeError)) or 'Did you mean' in message:
          message = f'unknown config key: {message}'
      sys.stderr.write(f'error: {message} (flags: {" ".join(overrides)})\n')
      sys.exit(errors.EXIT_USER_ERROR)

  def main(argv):
    del argv
    if not flags.FLAGS.library_logs:
      absl_logging.get_absl_handler().addFilter(_QuietLibraries())
      py_logging.getLogger().addFilter(_QuietLibraries())
      sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    xla_cpu.apply_defaults()
    try:
      result = entry(flags.FLAGS.config, flags.FLAGS.workdir)
    except BaseException as e:  # pylint: disable=broad-except
      checkpoint.close_all()
      code = _exit_code(e)
      if code is None or flags.FLAGS.verbosity > 0 or isinstance(e, KeyboardInterrupt):
        raise
      _fail(e, code)
    checkpoint.close_all()
    if isinstance(result, Mapping) and result.get('preempted'):
      sys.exit(errors.EXIT_PREEMPTED)

  app.run(main, flags_parser=parse)
