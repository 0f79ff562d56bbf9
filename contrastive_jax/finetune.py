r"""Fine-tuning a pretrained encoder on a labelled subset (SimCLR semi-supervised).

  python -m contrastive_jax.finetune --config=configs/finetune_v1.py:1pct \
      --workdir=/tmp/ft --config.init_from=/tmp/cj_smoke

Restores the encoder (and the projection layers below `ft_proj_selector`) of
the pretraining run in `init_from`, puts a linear classifier on top and trains
on a class-balanced subset of the training labels (`label_fraction` or
`labels_per_class`), saved as WORKDIR/label_subset.json and reused from there.
Streamed data (ImageNet, `data.in_memory=False`) trains on all its labels
(label_fraction=1: the 100% fine-tune, the linear evaluation); a subset of it
needs the split in memory, or a dataset that is the subset.
`init_from=''` trains the same network from scratch (the baseline); the
architecture then comes from `model_from` (a workdir) or config.model.
Running the same command again resumes from WORKDIR/checkpoints. At the end,
val and test top-1 go to WORKDIR/finetune_results.json; the trained network
loads back with `contrastive_jax.export.load_classifier(WORKDIR)`.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import logging

from contrastive_jax import classification, loop, modalities, trainer
from contrastive_jax.data import sources

RESULTS_FILE = 'finetune_results.json'
LABEL_SUBSET_FILE = classification.LABEL_SUBSET_FILE


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (or resumes) in `workdir`; returns the final metrics and top-1."""
  # --- Set-up: resolve the architecture, validate before anything compiles ----
  run = trainer.Run.start(classification.resolve_config(config), workdir,
                          validate=classification.validate)
  config = run.config

  # --- Input: the labelled subset of train (minus the val carve) ---------------
  def labelled(split: sources.ArraySource) -> sources.ArraySource:
    if split.num_classes <= 0:
      raise ValueError(f'{split.name} has no labels; fine-tuning needs a labelled '
                       'config.data.source.')
    positions = classification.label_subset(config, split, workdir)
    return split.subset(positions, name=f'{split.name}:labelled')

  data = classification.train_input(config, run.start_step, labelled)
  if data.num_classes <= 0:  # a stream
    raise ValueError(f'{config.data.name} has no labels; fine-tuning needs a labelled '
                     'config.data.source.')
  modality = modalities.build(config, data.input_shape)

  # --- Model and optimizer; pretrained weights unless resuming ----------------
  model, tx, schedule, state, steps_per_epoch, total_steps = classification.model_and_state(
      run, data, data.num_classes, modality)

  # --- Loop ---------------------------------------------------------------------
  step_fn = classification.make_train_step(model, tx, schedule, modality, run.mesh,
                                           nan_policy=config.nan_policy)
  logging.info('Fine-tuning on %d labelled examples for %d steps (%.2f per epoch), batch %d '
               'on %d devices.', data.num_examples, total_steps, steps_per_epoch,
               config.batch_size, jax.device_count())
  state, step = run.train(state, step_fn, data, total_steps=total_steps,
                          progress_keys=('loss', 'train_acc'), step_args=({},),
                          unit=modality.unit)

  # --- Eval: val (for choices) and test (the reported number) ------------------
  results: dict[str, Any] = {'step': step, 'total_steps': total_steps, 'preempted': run.preempted,
                             'label_examples': data.num_examples,
                             'init_from': config.init_from, 'train_seconds': run.train_seconds,
                             **run.last_metrics}
  if run.finished(step, total_steps):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits_fn = classification.make_logits_fn(model, variables, run.mesh, modality)
    results.update(classification.evaluate(logits_fn, config, workdir, run.mesh, modality))
    run.write_results(RESULTS_FILE, step, results, ('_top1', '_balanced_acc'))
    trainer.print_results('fine-tuned top-1: ' + ', '.join(
        f'{k[:-5]} {v:.4f}' for k, v in results.items() if k.endswith('_top1')) +
        ' (balanced: ' + ', '.join(f'{k[:-13]} {v:.4f}' for k, v in results.items()
                                   if k.endswith('_balanced_acc')) + ')')
  run.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
