"""Training a classifier on an encoder: what fine-tuning and distillation share.

  config = resolve_config(config)              # the pretraining run's architecture
  model = build_model(config, num_classes)     # encoder [+ projection layers] + linear head
  tx, schedule = build_optimizer(config, total_steps=..., warmup_steps=...)
  state = copy_pretrained(state, config, tx, mesh)   # encoder weights of config.init_from
  step = make_train_step(model, tx, schedule, config, modality, mesh, objective)

The label subset of semi-supervised fine-tuning (class-balanced, saved in the
workdir) and the val / test top-1 at the end live here too.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from contrastive_jax import (config_defaults, export, files, losses, loop, optim, parallel, train,
                             trainer)
from contrastive_jax.data import pipeline, sources
from contrastive_jax.modalities import Modality
from contrastive_jax.models import HEAD_ARCH_KEYS, encoders
from contrastive_jax.models import classifier as classifier_lib

LABEL_SUBSET_FILE = 'label_subset.json'

Batch = dict[str, jax.Array]
# (logits, batch, model inputs, aux) -> (loss, metrics): what a step minimises.
Objective = Callable[[jax.Array, Batch, jax.Array, Any], tuple[jax.Array, dict]]


# -----------------------------------------------------------------------------
# Configuration.

def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` whose config.model architecture is that of
  `model_from` (or `init_from`) when set, so a pretrain workdir alone says
  which network to build: the encoder's name and arch_keys, and the head's
  (keys missing from an older run's config.json keep their defaults). dtype,
  BatchNorm settings and config.kernels stay the fine-tune config's."""
  config = ml_collections.ConfigDict(config.to_dict())
  source = config.get('model_from') or config.get('init_from')
  if source:
    arch = export.read_config(source).model
    config.model.name = arch.get('name', config.model.name)
    spec = encoders.spec(config.model)
    theirs = arch.get(spec.name, {})
    if spec.name not in config.model:
      config.model[spec.name] = spec.defaults()
    for key in spec.arch_keys:
      if key in theirs:
        value = theirs[key]
        config.model[spec.name][key] = tuple(value) if isinstance(value, list) else value
    for key in HEAD_ARCH_KEYS:
      if key in arch:
        config.model[key] = arch[key]
  return config


def validate(config: ml_collections.ConfigDict, draws_label_subset: bool = True) -> None:
  """Fails in the first second, naming the key at fault. draws_label_subset=False:
  the run draws no label subset (distillation), so streamed data is fine."""
  config_defaults.validate(config)
  if not 0.0 < config.label_fraction <= 1.0 and config.labels_per_class <= 0:
    raise ValueError(f'config.label_fraction={config.label_fraction} must be in (0, 1] '
                     '(or set config.labels_per_class > 0).')
  if config.labels_per_class < 0:
    raise ValueError(f'config.labels_per_class={config.labels_per_class} must be >= 0.')
  if pipeline.streaming(config.data) and config.data.val_examples:
    raise ValueError(
        f'config.data.val_examples={config.data.val_examples} on streamed data: a val '
        'carve needs config.data.in_memory=True. Set --config.data.val_examples=0 (the '
        'test_split, e.g. validation, gives the reported number).')
  if (draws_label_subset and pipeline.streaming(config.data)
      and (config.label_fraction < 1.0 or config.labels_per_class > 0)):
    raise ValueError(
        f'config.label_fraction={config.label_fraction} / labels_per_class='
        f'{config.labels_per_class} on streamed data: the class-balanced subset is '
        'drawn in memory. Set config.data.in_memory=True, or label_fraction=1.0 with a '
        "dataset that is the subset (e.g. config.data.name='imagenet2012_subset/1pct').")
  classifier_lib.kept_projection_layers(config.model, config.ft_proj_selector)
  classifier_lib.check_fine_tune_after_block(config.model, config.fine_tune_after_block)


# -----------------------------------------------------------------------------
# Labelled subset and input.

def label_subset(config: ml_collections.ConfigDict, train_split: sources.ArraySource,
                 workdir: str) -> np.ndarray:
  """Sorted positions in `train_split` of the labelled subset.

  Read from WORKDIR/label_subset.json (a list of example ids) when it exists,
  else drawn with `sources.select_label_subset` (class-balanced, seeded by
  config.label_seed) and written there.
  """
  path = os.path.join(workdir, LABEL_SUBSET_FILE)
  if files.exists(path):
    ids = np.asarray(json.loads(files.read_text(path)), np.int64)
    position_of = {int(i): p for p, i in enumerate(train_split.example_ids())}
    missing = [int(i) for i in ids if int(i) not in position_of]
    if missing:
      raise ValueError(f'{path} names example ids {missing[:5]} that are not in the training '
                       f'split {train_split.name} (did config.data or val_examples change?). '
                       'Delete the file to draw a new subset.')
    logging.info('Reusing the %d labelled examples of %s.', len(ids), path)
    return np.sort(np.asarray([position_of[int(i)] for i in ids], np.int64))
  if config.labels_per_class > 0:
    positions = sources.select_label_subset(train_split.labels,
                                            per_class=config.labels_per_class,
                                            seed=config.label_seed)
  else:
    positions = sources.select_label_subset(train_split.labels,
                                            fraction=config.label_fraction,
                                            seed=config.label_seed)
  ids = train_split.example_ids()[positions]
  if jax.process_index() == 0:
    files.write_text_atomic(path, json.dumps([int(i) for i in ids]))
  return positions


def train_input(config: ml_collections.ConfigDict, start_step: int,
                select: Callable[[sources.ArraySource], sources.ArraySource] = lambda s: s):
  """The training batches from `start_step`: in-memory data as a BatchIterator
  over select(train split) (runs on across epoch ends), streamed data as
  `pipeline.make_train_iterator`'s tf.data stream of the whole split. Both
  have .num_examples, .steps_per_epoch, .num_classes, .input_shape, .state()
  and .restore()."""
  if pipeline.streaming(config.data):
    return pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed, start_step=start_step)
  return pipeline.BatchIterator(select(pipeline.load_split(config.data, 'train')),
                                global_batch_size=config.batch_size, seed=config.seed,
                                start_step=start_step, drop_remainder=False,
                                prefetch=config.data.prefetch,
                                **pipeline.sequence_options(config.data))


# -----------------------------------------------------------------------------
# Model, optimizer and state.

def build_model(config: ml_collections.ConfigDict,
                num_classes: int) -> classifier_lib.Classifier:
  return classifier_lib.build_classifier(
      config.model, num_classes, ft_proj_selector=config.ft_proj_selector,
      zero_init=config.zero_init, fine_tune_after_block=config.fine_tune_after_block,
      kernels_cfg=config.get('kernels'))


def build_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                    warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """config.optim's optimizer; frozen parameters (fine_tune_after_block) get
  exact-zero updates and no optimizer state."""
  tx, schedule = optim.build_optimizer(config.optim, batch_size=config.batch_size,
                                       total_steps=total_steps, warmup_steps=warmup_steps)
  k = config.fine_tune_after_block
  if k >= 0:
    tx = optax.multi_transform(
        {'trained': tx, 'frozen': optax.set_to_zero()},
        lambda params: classifier_lib.frozen_labels(params, k, config.model))
  return tx, schedule


def _copy_subtree(target: Any, source: Any, where: str) -> Any:
  """`source` as host arrays, after checking it has `target`'s structure and shapes."""
  t_paths = {jax.tree_util.keystr(p): np.shape(l)
             for p, l in jax.tree_util.tree_leaves_with_path(target)}
  s_paths = {jax.tree_util.keystr(p): np.shape(l)
             for p, l in jax.tree_util.tree_leaves_with_path(source)}
  if t_paths != s_paths:
    diff = sorted(set(t_paths.items()) ^ set(s_paths.items()))[:4]
    raise ValueError(f'The pretrained {where} does not match the fine-tuned network '
                     f'(first differences: {diff}). Is config.model the architecture of '
                     'config.init_from? (It is copied from there unless model_from is set.)')
  return jax.tree.map(np.asarray, source)


def pretrained_variables(variables: dict[str, Any], init_from: str,
                         init_step: int = -1) -> tuple[dict[str, Any], int]:
  """`variables` (host trees of the Classifier) with the encoder and the kept
  projection layers replaced by those of the pretraining run in `init_from`.
  The classifier keeps its initialisation. Returns (variables, restored step)."""
  pre = export.load_pretrained(init_from, None if init_step < 0 else init_step)
  out = {}
  for collection in ('params', 'batch_stats'):
    mine = dict(variables.get(collection, {}))
    theirs = pre.variables.get(collection, {})
    if 'encoder' in mine:
      mine['encoder'] = _copy_subtree(mine['encoder'], theirs.get('encoder', {}),
                                      f'encoder {collection}')
    if 'head' in mine:
      mine['head'] = {name: _copy_subtree(layer, theirs.get('head', {}).get(name, {}),
                                          f'projection layer {name} {collection}')
                      for name, layer in mine['head'].items()}
    out[collection] = mine
  return out, pre.step


def copy_pretrained(state: train.TrainState, config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation, mesh) -> train.TrainState:
  """`state` with the encoder (and kept projection layers) of config.init_from,
  the optimizer state initialised for them; unchanged when init_from is ''."""
  if not config.init_from:
    if config.fine_tune_after_block >= 0:
      logging.warning('fine_tune_after_block=%d without init_from freezes random weights.',
                      config.fine_tune_after_block)
    return state
  host = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  variables, step = pretrained_variables(host, config.init_from, config.init_step)
  params = parallel.replicate(variables['params'], mesh)
  opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
  logging.info('Restored the encoder (+%d projection layers) of %s, step %d.',
               classifier_lib.kept_projection_layers(config.model, config.ft_proj_selector),
               config.init_from, step)
  return state.replace(params=params, opt_state=opt_state,
                       batch_stats=parallel.replicate(variables['batch_stats'], mesh))


def fresh_state(state: train.TrainState, config: ml_collections.ConfigDict,
                tx: optax.GradientTransformation, mesh, modality: Modality) -> train.TrainState:
  """A new run's state: config.init_from's encoder copied in, or (from scratch)
  the modality's initial parameters (e.g. word vectors in a text embedding)."""
  state = copy_pretrained(state, config, tx, mesh)
  if config.init_from:
    return state
  return train.with_params(state, modality.init_params(state.params), mesh)


def model_and_state(run: Any, data: Any, num_classes: int, modality: Modality
                    ) -> tuple[classifier_lib.Classifier, optax.GradientTransformation,
                               optax.Schedule, train.TrainState, float, int]:
  """What finetune and distill build the same way: the classifier, its
  optimizer and schedule over `data`'s epochs, and the state (resumed from the
  run's checkpoint, else initialised with config.init_from's encoder).
  Returns (model, tx, schedule, state, steps_per_epoch, total_steps)."""
  config = run.config
  steps_per_epoch, total_steps, warmup_steps = trainer.schedule_lengths(
      config, data.steps_per_epoch)
  model = build_model(config, num_classes)
  tx, schedule = build_optimizer(config, total_steps=total_steps, warmup_steps=warmup_steps)
  state = run.init_or_resume(
      lambda: train.init_state(model, tx, seed=config.seed, dummy_input=modality.dummy_input(),
                               mesh=run.mesh), data, total_steps,
      fresh_fn=lambda s: fresh_state(s, config, tx, run.mesh, modality))
  return model, tx, schedule, state, steps_per_epoch, total_steps


# -----------------------------------------------------------------------------
# Steps and evaluation.

def cross_entropy_objective(logits: jax.Array, batch: Batch, x: jax.Array,
                            aux: Any) -> tuple[jax.Array, dict]:
  del x, aux
  loss, acc = losses.softmax_cross_entropy(logits, batch['label'].astype(jax.numpy.int32))
  return loss, {'loss': loss, 'train_acc': acc}


def make_train_step(model: classifier_lib.Classifier, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, modality: Modality, mesh,
                    objective: Objective = cross_entropy_objective, nan_policy: str = 'stop'):
  """Jitted `step(state, batch, aux) -> (state, metrics)`; the state is donated.

  The batch (raw inputs, 'label', 'index', ...) is split over 'data'; `aux`
  (e.g. a teacher's variables) is replicated. Inputs: the modality's light
  training augmentation keyed by (seed, step, example index), as in
  pretraining; BatchNorm statistics are global over the batch.
  """
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)

  def step(state: train.TrainState, batch: Batch, aux: Any):
    x = modality.train_inputs(state.step, batch)
    x = jax.lax.with_sharding_constraint(x, data)

    def loss_fn(params):
      logits, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, rngs=modality.rngs(state.step),
                                    mutable=['batch_stats'])
      loss, metrics = objective(logits, batch, x, aux)
      return loss, (mutated['batch_stats'], metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return train.guard_nonfinite(
        state, state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics, nan_policy)

  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


def make_logits_fn(model: classifier_lib.Classifier, variables: Any, mesh,
                   modality: Modality) -> Callable[[jax.Array], jax.Array]:
  """Raw inputs (sharded over 'data') -> eval-mode logits, eval preprocessing."""
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
  apply = jax.jit(lambda v, raw: model.apply(v, modality.eval_inputs(raw), train=False),
                  in_shardings=(rep, data), out_shardings=data)
  return lambda raw: apply(variables, raw)


def evaluate(logits_fn: Callable[[jax.Array], jax.Array], config: ml_collections.ConfigDict,
             workdir: str, mesh, modality: Modality) -> dict[str, Any]:
  """Top-1 on val (when carved) and test; WORKDIR/logits_<split>.npz if save_logits."""
  results: dict[str, Any] = {}
  for split in (['val'] if config.data.val_examples else []) + ['test']:
    pred = loop.predict_split(logits_fn, config.data, split, config.batch_size, mesh,
                              keep_logits=config.save_logits, input_key=modality.input_key)
    results[f'{split}_top1'] = loop.top1(pred)
    results[f'{split}_balanced_acc'] = loop.balanced_accuracy(pred)
    results[f'{split}_examples'] = int(len(pred['label']))
    if config.save_logits and jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, **pred)
      files.write_bytes_atomic(os.path.join(workdir, f'logits_{split}.npz'), buffer.getvalue())
  return results
