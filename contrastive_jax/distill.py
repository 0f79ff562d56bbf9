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
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import (checkpoint, config_defaults, export, files, finetune, losses, loop,
                             metrics_io, parallel, train)
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
  """finetune.resolve_config after replacing model_from='teacher'."""
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.teacher:
    raise ValueError('config.teacher is empty: pass --config.teacher=FINETUNE_WORKDIR.')
  if config.model_from == TEACHER:
    config.model_from = config.init_from or config.teacher
  return finetune.resolve_config(config)


def _with_labelled_mask(batches: Iterator[dict], label_ids: np.ndarray | None
                        ) -> Iterator[dict]:
  """Adds 'labelled' (bool): the row is in the teacher's label subset (None:
  every row with a label)."""
  for batch in batches:
    labelled = (batch['label'] >= 0 if label_ids is None
                else np.isin(batch['index'], label_ids))
    yield dict(batch, labelled=labelled)


def make_objective(teacher: export.Classifier, teacher_size: int, student_size: int,
                   temperature: float, alpha: float) -> finetune.Objective:
  """(student logits, batch, view, teacher variables) -> (loss, metrics).

  The teacher sees the student's view, resized to its own input side when
  the two networks were trained at different sizes.
  """

  def objective(logits, batch, x, teacher_variables):
    xt = x
    if teacher_size != student_size:
      xt = jnp.clip(jax.image.resize(x, x.shape[:1] + (teacher_size, teacher_size) + x.shape[3:],
                                     'bicubic'), 0.0, 1.0)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Distils the teacher into a student in `workdir` (or resumes); returns metrics."""
  # --- Set-up: resolve the student's architecture, validate -------------------
  config = resolve_config(config)
  finetune.validate(config, draws_label_subset=False)
  if not 0.0 <= config.alpha <= 1.0:
    raise ValueError(f'config.alpha={config.alpha} must be in [0, 1].')
  if config.temperature <= 0:
    raise ValueError(f'config.temperature={config.temperature} must be positive.')
  parallel.maybe_initialize_distributed(config.multihost)
  mesh = parallel.make_mesh()
  parallel.local_batch_size(config.batch_size, mesh)
  writer = metrics_io.MetricsWriter(workdir)

  # --- Teacher --------------------------------------------------------------------
  teacher = export.load_classifier(config.teacher,
                                   None if config.teacher_step < 0 else config.teacher_step)
  teacher_variables = parallel.replicate(jax.device_get(teacher.variables), mesh)
  label_ids: np.ndarray | None = np.zeros((0,), np.int64)
  if config.alpha > 0 and pipeline.streaming(teacher.config.data):
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
    label_ids = None  # every labelled row of the shared stream
  elif config.alpha > 0:
    path = os.path.join(config.teacher, finetune.LABEL_SUBSET_FILE)
    if not files.exists(path):
      raise FileNotFoundError(f'config.alpha={config.alpha} needs the teacher\'s labelled '
                              f'subset, but {path} does not exist.')
    label_ids = np.asarray(json.loads(files.read_text(path)), np.int64)

  # --- Input: the unlabeled training images ----------------------------------
  ckpt = checkpoint.Checkpointer(f'{workdir}/checkpoints', max_to_keep=config.keep_checkpoints,
                                 save_interval_steps=config.checkpoint_every_steps)
  start_step = ckpt.latest_step() or 0
  data = finetune.train_input(config, start_step)
  num_classes = teacher.num_classes
  out_size = config.data.image_size or data.image_shape[0]
  image_shape = (out_size, out_size, data.image_shape[2])
  steps_per_epoch, total_steps, warmup_steps = finetune.schedule_lengths(
      config, data.steps_per_epoch)

  # --- Student and optimizer ----------------------------------------------------
  model = finetune.build_model(config, num_classes)
  tx, schedule = finetune.build_optimizer(config, total_steps=total_steps,
                                          warmup_steps=warmup_steps)
  if start_step:
    state = train.init_state(model, tx, seed=config.seed, image_shape=image_shape, mesh=mesh)
    state = loop.resume(ckpt, start_step, state, data, writer, total_steps)
  else:
    state, _ = finetune.create_state(config, model, tx, mesh, image_shape)
  # Written only now: a rerun whose config does not fit the checkpoint fails in
  # restore and leaves the run's own config.json as it was.
  writer.write_config(config)

  # --- Loop ---------------------------------------------------------------------
  teacher_size = int(teacher.config.data.image_size) or data.image_shape[0]
  objective = make_objective(teacher, teacher_size, out_size, config.temperature, config.alpha)
  step_fn = finetune.make_train_step(model, tx, schedule, config, mesh, out_size, objective)
  logging.info('Distilling %s into a student on %d unlabeled images for %d steps '
               '(%.1f per epoch), tau %.2f, alpha %.2f.', config.teacher,
               data.num_examples, total_steps, steps_per_epoch, config.temperature,
               config.alpha)
  progress = metrics_io.Progress(total_steps, config.batch_size,
                                 log_every=config.log_every_steps, start_step=start_step)
  flusher = loop.MetricsFlusher(writer, progress, config.batch_size, start_step,
                                ('loss', 'teacher_agreement'))
  started = time.monotonic()
  state, step = loop.train_until_done(
      state, step_fn, data, batches=_with_labelled_mask(data, label_ids), config=config,
      mesh=mesh, start_step=start_step, total_steps=total_steps, ckpt=ckpt, flusher=flusher,
      step_args=(teacher_variables,))
  train_seconds = time.monotonic() - started

  # --- Eval: student top-1, teacher top-1 and agreement ----------------------------
  results: dict[str, Any] = {'step': step, 'total_steps': total_steps,
                             'teacher': config.teacher, 'train_seconds': train_seconds,
                             **flusher.last}
  if step < total_steps:
    logging.warning('Stopped at step %d of %d (SIGTERM or stop_at_step); rerun to resume.',
                    step, total_steps)
    writer.close()
    return results
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  student_logits = finetune.make_logits_fn(model, variables, mesh, out_size)
  results.update(finetune.evaluate(student_logits, config, workdir, mesh))
  teacher_logits = finetune.make_logits_fn(teacher.model, teacher_variables, mesh,
                                           teacher_size)
  both = jax.jit(lambda images: jnp.stack(
      [jnp.argmax(student_logits(images), -1), jnp.argmax(teacher_logits(images), -1),
       ], -1).astype(jnp.float32))
  pred = loop.predict_split(both, config.data, 'test', config.batch_size, mesh,
                            keep_logits=True)
  results['test_teacher_agreement'] = float(np.mean(pred['logits'][:, 0] == pred['logits'][:, 1]))
  results['teacher_test_top1'] = float(np.mean(pred['logits'][:, 1] == pred['label']))
  writer.write_scalars(step, {k: v for k, v in results.items()
                              if k.endswith('_top1') or k.endswith('_agreement')})
  writer.write_json(RESULTS_FILE, results)
  if jax.process_index() == 0:
    print(f'student top-1: test {results["test_top1"]:.4f} (teacher '
          f'{results["teacher_test_top1"]:.4f}), agreement with the teacher '
          f'{results["test_teacher_agreement"]:.4f}', flush=True)
  writer.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
