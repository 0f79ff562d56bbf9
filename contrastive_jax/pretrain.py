r"""SimCLR / SupCon pretraining.

  python -m contrastive_jax.pretrain --config=configs/smoke.py --workdir=/tmp/run \
      [--config.total_steps=1000 ...]

Running the same command again resumes from the latest checkpoint in
WORKDIR/checkpoints. On a TPU pod the same command runs on every host.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from contrastive_jax import (checkpoint, config_defaults, loop, metrics_io, optim, parallel,
                             train)
from contrastive_jax.data import pipeline
from contrastive_jax.models import build_model


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
  out = loop.predict_split(lambda images: predict_fn(variables, images)['probe_logits'],
                           data_cfg, split, batch_size, mesh)
  return {f'{split}_probe_acc': loop.top1(out), f'{split}_examples': len(out['label'])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns the final metrics and probe accuracy."""
  # --- Set-up: validate before anything compiles or loads ---------------------
  config_defaults.validate(config)
  parallel.maybe_initialize_distributed(config.multihost)
  mesh = parallel.make_mesh()
  parallel.local_batch_size(config.batch_size, mesh)  # fails early if it does not divide
  writer = metrics_io.MetricsWriter(workdir)

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
    state = loop.resume(ckpt, start_step, state, data, writer, total_steps)
  # Written only now: a rerun whose config does not fit the checkpoint fails in
  # restore and leaves the run's own config.json as it was.
  writer.write_config(config)

  # --- Update step -------------------------------------------------------------
  step_fn = train.make_pretrain_step(model, tx, schedule, config, mesh, out_size)
  if start_step == 0 and config.summary_images:
    if hasattr(data, 'get_batch'):
      first = data.get_batch(0)
    else:  # a tf.data stream: read the first batch, then rewind to it
      first = next(data)
      data.restore({'step': 0})
    views = train.make_view_fn(config, out_size)(0, parallel.global_batch(first, mesh))
    k = min(config.summary_images, views.shape[1])
    pairs = np.asarray(multihost_utils.process_allgather(views[:, :k], tiled=True))
    writer.write_images(0, 'augmented_pairs', pairs.transpose(1, 0, 2, 3, 4).reshape(
        (-1,) + pairs.shape[2:]))

  # --- Loop ---------------------------------------------------------------------
  logging.info('Pretraining %s for %d steps (%d per epoch, warmup %d), batch %d on %d devices.',
               config.mode, total_steps, steps_per_epoch, warmup_steps, config.batch_size,
               jax.device_count())
  progress = metrics_io.Progress(total_steps, config.batch_size,
                                 log_every=config.log_every_steps, start_step=start_step)
  flusher = loop.MetricsFlusher(writer, progress, config.batch_size, start_step,
                                ('loss', 'contrast_acc', 'probe_acc'))
  state, step = loop.train_until_done(
      state, step_fn, data, config=config, mesh=mesh, start_step=start_step,
      total_steps=total_steps, ckpt=ckpt, flusher=flusher)

  # --- Eval: the online probe, on val (for choices) and test (the reported number)
  results: dict[str, Any] = {'step': step, **flusher.last}
  if step >= total_steps and num_classes > 0:
    predict = train.make_predict_fn(model, mesh, out_size)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    splits = (['val'] if config.data.val_examples else []) + ['test']
    for split in splits:
      results.update(evaluate_probe(predict, variables, config.data, split,
                                    config.batch_size, mesh))
    # Rerunning a finished run evaluates again but logs the probe only once
    # (read on the writing process only: the others write nothing anyway).
    logged = writer.enabled and any(r.get('step') == step and 'test_probe_acc' in r
                                    for r in metrics_io.read_metrics(workdir))
    if not logged:
      writer.write_scalars(step, {k: v for k, v in results.items() if k.endswith('probe_acc')})
    writer.write_json('pretrain_results.json', results)
    if jax.process_index() == 0:
      print('online linear probe: ' + ', '.join(
          f'{s} {results[f"{s}_probe_acc"]:.4f}' for s in splits), flush=True)
  writer.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
