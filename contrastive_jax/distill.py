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

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import classification, distillation, export, loop, modalities, parallel, trainer

RESULTS_FILE = 'distill_results.json'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Distils the teacher into a student in `workdir` (or resumes); returns metrics."""
  # --- Set-up: resolve the student's architecture, validate -------------------
  run = trainer.Run.start(distillation.resolve_config(config), workdir,
                          validate=distillation.validate)
  config = run.config

  # --- Teacher --------------------------------------------------------------------
  teacher = export.load_classifier(config.teacher,
                                   None if config.teacher_step < 0 else config.teacher_step)
  teacher_variables = parallel.replicate(jax.device_get(teacher.variables), run.mesh)
  label_ids = distillation.teacher_label_ids(config, teacher)

  # --- Input: the unlabeled training examples -----------------------------------
  data = classification.train_input(config, run.start_step)
  modality = modalities.build(config, data.input_shape)
  teacher_modality = modalities.build(teacher.config, data.input_shape)

  # --- Student and optimizer ----------------------------------------------------
  model, tx, schedule, state, steps_per_epoch, total_steps = classification.model_and_state(
      run, data, teacher.num_classes, modality)

  # --- Loop ---------------------------------------------------------------------
  objective = distillation.make_objective(teacher, teacher_modality, config.temperature,
                                         config.alpha)
  step_fn = classification.make_train_step(model, tx, schedule, modality, run.mesh, objective,
                                           nan_policy=config.nan_policy)
  logging.info('Distilling %s into a student on %d unlabeled examples for %d steps '
               '(%.1f per epoch), tau %.2f, alpha %.2f.', config.teacher,
               data.num_examples, total_steps, steps_per_epoch, config.temperature,
               config.alpha)
  state, step = run.train(state, step_fn, data, total_steps=total_steps,
                          progress_keys=('loss', 'teacher_agreement'),
                          batches=distillation.with_labelled_mask(data, label_ids),
                          step_args=(teacher_variables,),
                          unit=modality.unit)

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
