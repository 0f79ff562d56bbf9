r"""Contrastive pretraining (SimCLR, SupCon, any registered method).

  python -m contrastive_jax.pretrain --config=configs/smoke.py --workdir=/tmp/run \
      [--config.total_steps=1000 --config.method=supcon ...]

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

from contrastive_jax import loop, methods, modalities, optim, parallel, train, trainer
from contrastive_jax.data import pipeline
from contrastive_jax.models import build_model

RESULTS_FILE = 'pretrain_results.json'


def evaluate_probe(predict_fn, variables: Any, config: ml_collections.ConfigDict,
                   modality: modalities.Modality, split: str, mesh) -> dict[str, float]:
  """Top-1 of the online linear probe on a whole split (eval preprocessing)."""
  out = loop.predict_split(lambda raw: predict_fn(variables, raw)['probe_logits'],
                           config.data, split, config.batch_size, mesh,
                           input_key=modality.input_key)
  return {f'{split}_probe_acc': loop.top1(out), f'{split}_examples': len(out['label'])}


def write_view_summary(run: trainer.Run, data: Any, modality: modalities.Modality,
                       num_views: int) -> None:
  """The first batch's augmented views, as image pairs in TensorBoard."""
  if hasattr(data, 'get_batch'):
    first = data.get_batch(0)
  else:  # a tf.data stream: read the first batch, then rewind to it
    first = next(data)
    data.restore({'step': 0})
  views = train.make_view_fn(modality, num_views)(0, parallel.global_batch(first, run.mesh))
  if views.ndim != 5:
    return  # not images
  k = min(run.config.summary_images, views.shape[1])
  pairs = np.asarray(multihost_utils.process_allgather(views[:, :k], tiled=True))
  run.writer.write_images(0, 'augmented_pairs', pairs.transpose(1, 0, 2, 3, 4).reshape(
      (-1,) + pairs.shape[2:]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains (or resumes) in `workdir`; returns the final metrics and probe accuracy."""
  # --- Set-up: validate before anything compiles or loads ---------------------
  run = trainer.Run.start(config, workdir)
  config = run.config
  method = methods.build(config)

  # --- Input ------------------------------------------------------------------
  data = pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                      seed=config.seed, start_step=run.start_step)
  modality = modalities.build(config, data.input_shape)
  steps_per_epoch, total_steps, warmup_steps = trainer.schedule_lengths(
      config, max(data.num_examples // config.batch_size, 1))
  if method.needs_labels and data.num_classes <= 0:
    raise ValueError(f"config.method='{method.name}' needs labels, but the training data has "
                     "none; use config.method='simclr' or a labelled config.data.source.")

  # --- Model, optimizer, state: resume where the last run stopped -------------
  num_classes = max(data.num_classes, 0) if config.probe else 0
  model = build_model(config.model, num_classes=num_classes, kernels_cfg=config.kernels,
                      predictor=method.predictor(config.model))
  tx, schedule = optim.build_optimizer(config.optim, batch_size=config.batch_size,
                                       total_steps=total_steps, warmup_steps=warmup_steps)
  init_extra = lambda params, stats: method.init_extra(
      params, stats, global_batch_size=config.batch_size)
  state = run.init_or_resume(
      lambda: train.init_state(model, tx, seed=config.seed, dummy_input=modality.dummy_input(),
                               mesh=run.mesh, init_extra=init_extra), data, total_steps,
      fresh_fn=lambda s: train.with_params(s, modality.init_params(s.params), run.mesh))

  # --- Update step --------------------------------------------------------------
  step_fn = train.make_pretrain_step(model, tx, schedule, method, modality, run.mesh,
                                     total_steps, nan_policy=config.nan_policy)
  if run.start_step == 0 and config.summary_images:
    write_view_summary(run, data, modality, method.num_views)

  # --- Loop ---------------------------------------------------------------------
  logging.info('Pretraining %s on %s for %d steps (%d per epoch, warmup %d), batch %d on %d '
               'devices.', method.name, modality.describe(), total_steps, steps_per_epoch,
               warmup_steps, config.batch_size, jax.device_count())
  state, step = run.train(state, step_fn, data, total_steps=total_steps,
                          progress_keys=('loss', 'contrast_acc', 'probe_acc'),
                          unit=modality.unit)

  # --- Eval: the online probe, on val (for choices) and test (the reported number)
  results: dict[str, Any] = {'step': step, 'preempted': run.preempted, **run.last_metrics}
  if run.finished(step, total_steps) and num_classes > 0:
    predict = train.make_predict_fn(model, run.mesh, modality)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    splits = (['val'] if config.data.val_examples else []) + ['test']
    for split in splits:
      results.update(evaluate_probe(predict, variables, config, modality, split, run.mesh))
    run.write_results(RESULTS_FILE, step, results, ('probe_acc',))
    trainer.print_results('online linear probe: ' + ', '.join(
        f'{s} {results[f"{s}_probe_acc"]:.4f}' for s in splits))
  run.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
