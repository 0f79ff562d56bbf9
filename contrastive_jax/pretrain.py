r"""SimCLR / SupCon pretraining.

  python -m contrastive_jax.pretrain --config=configs/smoke.py --workdir=/tmp/run \
      [--config.total_steps=1000 ...]

Running the same command again resumes from the latest checkpoint in
WORKDIR/checkpoints. On a TPU pod the same command runs on every host.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from contrastive_jax import checkpoint, config_defaults, metrics_io, optim, parallel, train
from contrastive_jax.data import pipeline
from contrastive_jax.models import build_model


class PreemptionFlag:
  """Set by SIGTERM (TPU preemption, `kill`): the loop checkpoints and stops."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def install(self) -> None:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # Every host must agree on the step at which to stop; JAX's preemption
      # service (started by jax.distributed) tells all of them the same step.
      return self._event.is_set() or multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()


def _schedule_lengths(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int, int]:
  """(steps_per_epoch, total_steps, warmup_steps) from the config and data size."""
  steps_per_epoch = max(num_examples // config.batch_size, 1)
  total = config.total_steps if config.total_steps > 0 else int(
      config.num_epochs * steps_per_epoch)
  warmup = optim.warmup_steps_from(config.optim, total_steps=total,
                                   steps_per_epoch=steps_per_epoch)
  return steps_per_epoch, total, warmup


def evaluate_probe(predict_fn, variables: Any, data_cfg: ml_collections.ConfigDict,
                   split: str, batch_size: int, mesh) -> dict[str, float]:
  """Top-1 of the online linear probe on a whole split (eval preprocessing)."""
  correct = total = 0
  for batch in pipeline.make_eval_iterator(data_cfg, split, global_batch_size=batch_size):
    arrays = parallel.global_batch({'image': batch['image']}, mesh)
    logits = predict_fn(variables, arrays['image'])['probe_logits']
    logits = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    mask = np.asarray(multihost_utils.process_allgather(
        batch['mask'], tiled=True))
    labels = np.asarray(multihost_utils.process_allgather(
        batch['label'], tiled=True))
    correct += int(np.sum((logits.argmax(-1) == labels) & mask))
    total += int(mask.sum())
  return {f'{split}_probe_acc': correct / max(total, 1), f'{split}_examples': total}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns the final metrics and probe accuracy."""
  # --- Set-up: validate before anything compiles or loads ---------------------
  config_defaults.validate(config)
  parallel.maybe_initialize_distributed(config.multihost)
  mesh = parallel.make_mesh()
  parallel.local_batch_size(config.batch_size, mesh)  # fails early if it does not divide
  writer = metrics_io.MetricsWriter(workdir)
  writer.write_config(config)

  # --- Input ------------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(f'{workdir}/checkpoints', max_to_keep=config.keep_checkpoints,
                                 save_interval_steps=config.checkpoint_every_steps)
  start_step = ckpt.latest_step() or 0
  data = pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                      seed=config.seed, start_step=start_step)
  image_shape = data.image_shape
  out_size = config.data.image_size or image_shape[0]
  steps_per_epoch, total_steps, warmup_steps = _schedule_lengths(config, data.num_examples)
  if config.mode == 'supcon' and data.num_classes <= 0:
    raise ValueError("config.mode='supcon' needs labels, but the training data has none; "
                     "use config.mode='simclr' or a labelled config.data.source.")

  # --- Model and optimizer ----------------------------------------------------
  num_classes = data.num_classes if config.probe else 0
  model = build_model(config.model, num_classes=max(num_classes, 0))
  tx, schedule = optim.build_optimizer(config.optim, batch_size=config.batch_size,
                                       total_steps=total_steps, warmup_steps=warmup_steps)
  state = train.init_state(model, tx, seed=config.seed,
                           image_shape=(out_size, out_size, image_shape[2]), mesh=mesh)

  # --- Checkpoint: resume where the last run stopped ---------------------------
  if start_step:
    state, extra = ckpt.restore(start_step, target=checkpoint.to_abstract(state))
    data.restore(extra['data'])
    writer.truncate(start_step)
    logging.info('Resumed from step %d.', start_step)

  # --- Update step -------------------------------------------------------------
  step_fn = train.make_pretrain_step(model, tx, schedule, config, mesh, out_size)
  if start_step == 0 and config.summary_images:
    first = parallel.global_batch(data.get_batch(0) if hasattr(data, 'get_batch')
                                  else next(iter(data)), mesh)
    views = train.make_view_fn(config, out_size)(0, first)
    k = min(config.summary_images, views.shape[1])
    pairs = np.asarray(multihost_utils.process_allgather(views[:, :k],
                                                                          tiled=True))
    writer.write_images(0, 'augmented_pairs', pairs.transpose(1, 0, 2, 3, 4).reshape(
        (-1,) + pairs.shape[2:]))

  # --- Loop ---------------------------------------------------------------------
  logging.info('Pretraining %s for %d steps (%d per epoch, warmup %d), batch %d on %d devices.',
               config.mode, total_steps, steps_per_epoch, warmup_steps, config.batch_size,
               jax.device_count())
  progress = metrics_io.Progress(total_steps, config.batch_size,
                                 log_every=config.log_every_steps, start_step=start_step)
  preempted = PreemptionFlag()
  preempted.install()
  pending: Optional[tuple[int, dict]] = None  # metrics of a previous step, still on device
  last_time, last_step = time.monotonic(), start_step
  last_metrics: dict[str, float] = {}
  step = start_step

  def flush_pending():
    nonlocal pending, last_time, last_step, last_metrics
    if pending is None:
      return
    logged_step, metrics = pending
    pending = None
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.monotonic()
    metrics['images_per_sec'] = (logged_step - last_step) * config.batch_size / max(
        now - last_time, 1e-9)
    last_time, last_step = now, logged_step
    writer.write_scalars(logged_step, metrics)
    progress.update(logged_step, {k: metrics[k] for k in ('loss', 'contrast_acc', 'probe_acc')
                                  if k in metrics})
    last_metrics = metrics

  end_step = min(config.stop_at_step or total_steps, total_steps)
  try:
    while step < end_step:
      batch = parallel.global_batch(next(data), mesh)
      state, metrics = step_fn(state, batch)
      flush_pending()  # the previous log step's values are ready by now
      step += 1
      if step % config.log_every_steps == 0 or step == total_steps:
        pending = (step, metrics)
      if step % config.checkpoint_every_steps == 0 and step < total_steps:
        ckpt.save(step, state, {'data': data.state(), 'total_steps': total_steps})
      if preempted.should_stop(step):
        logging.warning('SIGTERM: checkpointing step %d and exiting.', step)
        break
    flush_pending()
    ckpt.save(step, state, {'data': data.state(), 'total_steps': total_steps}, force=True)
    ckpt.wait()
  finally:
    preempted.uninstall()
    ckpt.close()
    if hasattr(data, 'close'):
      data.close()

  # --- Eval: the online probe, on val (for choices) and test (the reported number)
  results: dict[str, Any] = {'step': step, **last_metrics}
  if step >= total_steps and num_classes > 0:
    predict = train.make_predict_fn(model, mesh, out_size)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    splits = (['val'] if config.data.val_examples else []) + ['test']
    for split in splits:
      results.update(evaluate_probe(predict, variables, config.data, split,
                                    config.batch_size, mesh))
    writer.write_scalars(step, {k: v for k, v in results.items() if k.endswith('probe_acc')})
    writer.write_json('pretrain_results.json', results)
    if jax.process_index() == 0:
      print('online linear probe: ' + ', '.join(
          f'{s} {results[f"{s}_probe_acc"]:.4f}' for s in splits), flush=True)
  writer.close()
  return results


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and summaries go.')


def main(argv):
  del argv
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
