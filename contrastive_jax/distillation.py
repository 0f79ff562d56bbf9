"""What the distillation binary is made of: its config keys, the student's
architecture, the teacher's labelled rows and the objective (SimCLR v2,
Chen et al. 2020b, section 2.3: tau^2 x CE(softmax(teacher / tau),
softmax(student / tau)), optionally mixed with the labelled cross entropy).
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax import classification, config_defaults, export, files, losses, modalities
from contrastive_jax.data import pipeline

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


def with_labelled_mask(batches: Iterator[dict], label_ids: np.ndarray | None
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
