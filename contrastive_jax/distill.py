r"""Distillation (SimCLR v2 step 3): a fine-tuned teacher labels unlabeled images.

  python -m contrastive_jax.distill --config=configs/distill.py --workdir=/tmp/distill \
      --config.teacher=/tmp/ft

The teacher (a finetune or distill workdir, loaded with export.load_classifier)
is applied in inference mode to the same crop + flip view as the student, and
the student minimises tau^2 x CE(softmax(teacher / tau), softmax(student / tau))
over the unlabeled training images (train minus the val carve; labels unused).
With `alpha > 0` the loss is (1 - alpha) x distillation + alpha x the labelled
cross entropy of the batch rows that belong to the teacher's label subset
(TEACHER/label_subset.json; a teacher fine-tuned on streamed data used every
label). Streamed data (`data.in_memory=False`) distils over the whole split.

The student is `config.model` when `model_from=''`; by default
(`model_from='teacher'`) it has the architecture of `init_from` when set, else
the teacher's (self-distillation). It starts from scratch or from the
pretraining run in `init_from` (encoder + projection layers below
`ft_proj_selector`, as in fine-tuning). Checkpoints, resume, metrics and
SIGTERM work as in pretraining; at the end val/test top-1 and the test
agreement with the teacher go to WORKDIR/distill_results.json, and the student
loads back with `export.load_classifier(WORKDIR)`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import (classification, config_defaults, export, files, losses, loop,
                             modalities, parallel, train, trainer)
from contrastive_jax.data import pipeline

RESULTS_FILE = 'distill_results.json'
TEACHER = 'teacher'  # model_from value: the student copies an architecture (see above)


def distill_defaults() -> ml_collections.ConfigDict:
  """finetune_defaults() plus the distillation keys (declared here, once).

  label_fraction / labels_per_class / label_seed are not used: the labelled
  rows for `alpha` are the teacher's label subset.
  """
  config = config_defaults.finetune_defaults()
  config.teacher = ''              # finetune (or distill) workdir of the teacher
  config.teacher_step = -1         # its checkpoint step; -1 = the latest
  config.temperature = 1.0         # tau: 1.0 big-to-small, 0.1 self-distillation (v2)
  config.alpha = 0.0               # weight of the labelled cross entropy (0 = pure distillation)
  config.model_from = TEACHER      # 'teacher': init_from's architecture, else the teacher's
  config.num_epochs = 30           # epochs over the unlabeled training images
  config.zero_init = False         # a student from scratch needs a live classifier
  return config


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """classification.resolve_config after replacing model_from='teacher'."""
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.teacher:
    raise ValueError('config.teacher is empty: pass --config.teacher=FINETUNE_WORKDIR.')
  if config.model_from == TEACHER:
    config.model_from = config.init_from or config.teacher
  return classification.resolve_config(config)


def _with_labelled_mask(batches: Iterator[dict], label_ids: np.ndarray | None
                        ) -> Iterator[dict]:
  """Adds 'labelled' (bool): the row is in the teacher's label subset (None:
  every row with a label)."""
  for batch in batches:
    labelled = (batch['label'] >= 0 if label_ids is None
                else np.isin(batch['index'], label_ids))
    yield dict(batch, labelled=labelled)


def make_objective(teacher: export.Classifier, teacher_modality: modalities.Modality,
                   temperature: float, alpha: float) -> classification.Objective:
  """(student logits, batch, view, teacher variables) -> (loss, metrics).

  The teacher sees the student's view, through its modality's `adapt` (an
  image resized to the teacher's input side when the two networks were
  trained at different sizes).
  """

  def objective(logits, batch, x, teacher_variables):
    xt = teacher_modality.adapt(x)
    teacher_logits = jax.lax.stop_gradient(
        teacher.model.apply(teacher_variables, xt, train=False))
    distill = losses.distillation_loss(logits, teacher_logits, temperature=temperature)
    agreement = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
    loss = (1.0 - alpha) * distill
    metrics = {'distill_loss': distill, 'teacher_agreement': agreement}
    if alpha > 0:
      labelled_loss, labelled_acc = losses.softmax_cross_entropy(
          logits, batch['label'].astype(jnp.int32), mask=batch['labelled'])
      loss = loss + alpha * labelled_loss
      metrics.update(labelled_loss=labelled_loss, labelled_acc=labelled_acc,
                     labelled_rows=jnp.sum(batch['labelled']))
    metrics['loss'] = loss
    return loss, metrics

  return objective


def validate(config: ml_collections.ConfigDict) -> None:
  classification.validate(config, draws_label_subset=False)
  if not 0.0 <= config.alpha <= 1.0:
    raise ValueError(f'config.alpha={config.alpha} must be in [0, 1].')
  if config.temperature <= 0:
    raise ValueError(f'config.temperature={config.temperature} must be positive.')


def teacher_label_ids(config: ml_collections.ConfigDict, teacher: export.Classifier
                      ) -> np.ndarray | None:
  """Example ids of the teacher's labelled rows for `alpha` (None: every row
  with a label; empty when alpha = 0)."""
  if config.alpha <= 0:
    return np.zeros((0,), np.int64)
  if pipeline.streaming(teacher.config.data):
    # A streamed fine-tune used every label of its own training split (it writes
    # no subset file); those are this run's labelled rows only if it reads the
    # same split, and only a fine-tune (not a distilled teacher) saw labels.
    same = all(teacher.config.data.get(k) == config.data.get(k)
               for k in ('source', 'name', 'data_dir', 'train_split'))
    if not same or teacher.config.get('teacher'):
      raise ValueError(
          f'config.alpha={config.alpha}: the teacher {config.teacher} was trained on '
          f'streamed {teacher.config.data.name}:{teacher.config.data.train_split}, which '
          f'is not this run\'s {config.data.name}:{config.data.train_split} (or it is '
          'itself distilled), so its labelled rows are unknown. Use config.alpha=0.')
    return None  # every labelled row of the shared stream
  path = os.path.join(config.teacher, classification.LABEL_SUBSET_FILE)
  if not files.exists(path):
    raise FileNotFoundError(f'config.alpha={config.alpha} needs the teacher\'s labelled '
                            f'subset, but {path} does not exist.')
  return np.asarray(json.loads(files.read_text(path)), np.int64)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Distils the teacher into a student in `workdir` (or resumes); returns metrics."""
  # --- Set-up: resolve the student's architecture, validate -------------------
  run = trainer.Run.start(resolve_config(config), workdir, validate=validate)
  config = run.config

  # --- Teacher --------------------------------------------------------------------
  teacher = export.load_classifier(config.teacher,
                                   None if config.teacher_step < 0 else config.teacher_step)
  teacher_variables = parallel.replicate(jax.device_get(teacher.variables), run.mesh)
  label_ids = teacher_label_ids(config, teacher)

  # --- Input: the unlabeled training examples -----------------------------------
  data = classification.train_input(config, run.start_step)
  modality = modalities.build(config, data.input_shape)
  teacher_modality = modalities.build(teacher.config, data.input_shape)
  steps_per_epoch, total_steps, warmup_steps = trainer.schedule_lengths(
      config, data.steps_per_epoch)

  # --- Student and optimizer ----------------------------------------------------
  model = classification.build_model(config, teacher.num_classes)
  tx, schedule = classification.build_optimizer(config, total_steps=total_steps,
                                                warmup_steps=warmup_steps)
  state = run.init_or_resume(
      lambda: train.init_state(model, tx, seed=config.seed, dummy_input=modality.dummy_input(),
                               mesh=run.mesh), data, total_steps,
      fresh_fn=lambda s: classification.copy_pretrained(s, config, tx, run.mesh))

  # --- Loop ---------------------------------------------------------------------
  objective = make_objective(teacher, teacher_modality, config.temperature, config.alpha)
  step_fn = classification.make_train_step(model, tx, schedule, modality, run.mesh, objective,
                                           nan_policy=config.nan_policy)
  logging.info('Distilling %s into a student on %d unlabeled examples for %d steps '
               '(%.1f per epoch), tau %.2f, alpha %.2f.', config.teacher,
               data.num_examples, total_steps, steps_per_epoch, config.temperature,
               config.alpha)
  state, step = run.train(state, step_fn, data, total_steps=total_steps,
                          progress_keys=('loss', 'teacher_agreement'),
                          batches=_with_labelled_mask(data, label_ids),
                          step_args=(teacher_variables,))

  # --- Eval: student top-1, teacher top-1 and agreement ----------------------------
  results: dict[str, Any] = {'step': step, 'total_steps': total_steps, 'preempted': run.preempted,
                             'teacher': config.teacher, 'train_seconds': run.train_seconds,
                             **run.last_metrics}
  if run.finished(step, total_steps):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    student_logits = classification.make_logits_fn(model, variables, run.mesh, modality)
    results.update(classification.evaluate(student_logits, config, workdir, run.mesh,
                                           modality))
    teacher_logits = classification.make_logits_fn(teacher.model, teacher_variables,
                                                   run.mesh, teacher_modality)
    both = jax.jit(lambda raw: jnp.stack(
        [jnp.argmax(student_logits(raw), -1), jnp.argmax(teacher_logits(raw), -1)],
        -1).astype(jnp.float32))
    pred = loop.predict_split(both, config.data, 'test', config.batch_size, run.mesh,
                              keep_logits=True, input_key=modality.input_key)
    results['test_teacher_agreement'] = float(
        np.mean(pred['logits'][:, 0] == pred['logits'][:, 1]))
    results['teacher_test_top1'] = float(np.mean(pred['logits'][:, 1] == pred['label']))
    run.write_results(RESULTS_FILE, step, results, ('_top1', '_agreement'))
    trainer.print_results(
        f'student top-1: test {results["test_top1"]:.4f} (teacher '
        f'{results["teacher_test_top1"]:.4f}), agreement with the teacher '
        f'{results["test_teacher_agreement"]:.4f}')
  run.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
