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

import io
import json
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from contrastive_jax import (augment, checkpoint, config_defaults, export, files, losses, loop,
                             metrics_io, optim, parallel, train)
from contrastive_jax.data import pipeline, sources
from contrastive_jax.models import classifier as classifier_lib

LABEL_SUBSET_FILE = 'label_subset.json'
RESULTS_FILE = 'finetune_results.json'
# config.model keys that define the architecture (and so must match a checkpoint).
# dtype, conv (the convolution implementation) and BN settings are the run's own.
ARCH_KEYS = ('depth', 'stage_sizes', 'block', 'base_width', 'width_multiplier', 'stem',
             'stem_stride', 'sk_ratio', 'pool', 'num_proj_layers', 'proj_dim', 'proj_hidden_dim')

Batch = dict[str, jax.Array]
# (logits, batch, augmented images, aux) -> (loss, metrics): what a step minimises.
Objective = Callable[[jax.Array, Batch, jax.Array, Any], tuple[jax.Array, dict]]


# -----------------------------------------------------------------------------
# Configuration.

def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` whose config.model architecture is that of
  `model_from` (or `init_from`) when set, so a pretrain workdir alone says
  which network to build (ARCH_KEYS; keys missing from an older run's
  config.json keep their defaults). dtype, conv and BN settings stay the
  fine-tune config's."""
  config = ml_collections.ConfigDict(config.to_dict())
  source = config.model_from or config.init_from
  if source:
    arch = export.read_config(source).model
    for key in ARCH_KEYS:
      if key in arch:
        value = arch[key]
        config.model[key] = tuple(value) if isinstance(value, list) else value
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
  if not -1 <= config.fine_tune_after_block <= classifier_lib.FREEZE_ALL:
    raise ValueError(f'config.fine_tune_after_block={config.fine_tune_after_block}; choose '
                     '-1 (train all), 0..3 (freeze stem + stages) or 4 (only the classifier).')


# -----------------------------------------------------------------------------
# Labelled subset.

def label_subset(config: ml_collections.ConfigDict, train: sources.ArraySource,
                 workdir: str) -> np.ndarray:
  """Sorted positions in `train` of the labelled subset.

  Read from WORKDIR/label_subset.json (a list of example ids) when it exists,
  else drawn with `sources.select_label_subset` (class-balanced, seeded by
  config.label_seed) and written there.
  """
  path = os.path.join(workdir, LABEL_SUBSET_FILE)
  if files.exists(path):
    ids = np.asarray(json.loads(files.read_text(path)), np.int64)
    position_of = {int(i): p for p, i in enumerate(train.example_ids())}
    missing = [int(i) for i in ids if int(i) not in position_of]
    if missing:
      raise ValueError(f'{path} names example ids {missing[:5]} that are not in the training '
                       f'split {train.name} (did config.data or val_examples change?). '
                       'Delete the file to draw a new subset.')
    logging.info('Reusing the %d labelled examples of %s.', len(ids), path)
    return np.sort(np.asarray([position_of[int(i)] for i in ids], np.int64))
  if config.labels_per_class > 0:
    positions = sources.select_label_subset(train.labels, per_class=config.labels_per_class,
                                            seed=config.label_seed)
  else:
    positions = sources.select_label_subset(train.labels, fraction=config.label_fraction,
                                            seed=config.label_seed)
  ids = train.example_ids()[positions]
  if jax.process_index() == 0:
    files.write_text_atomic(path, json.dumps([int(i) for i in ids]))
  return positions


def train_input(config: ml_collections.ConfigDict, start_step: int,
                select: Callable[[sources.ArraySource], sources.ArraySource] = lambda s: s):
  """The training batches from `start_step`: in-memory data as a BatchIterator
  over select(train split) (runs on across epoch ends), streamed data as
  `pipeline.make_train_iterator`'s tf.data stream of the whole split. Both
  have .num_examples, .steps_per_epoch, .num_classes, .image_shape, .state()
  and .restore()."""
  if pipeline.streaming(config.data):
    return pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed, start_step=start_step)
  return pipeline.BatchIterator(select(pipeline.load_split(config.data, 'train')),
                                global_batch_size=config.batch_size, seed=config.seed,
                                start_step=start_step, drop_remainder=False,
                                prefetch=config.data.prefetch)


def schedule_lengths(config: ml_collections.ConfigDict, steps_per_epoch: float
                     ) -> tuple[float, int, int]:
  """(steps_per_epoch, total_steps, warmup_steps) from the input's steps per
  epoch: in memory, labelled examples / batch (batches run on across epoch
  ends); streamed, whole local batches per process (each epoch's tail dropped)."""
  total = config.total_steps if config.total_steps > 0 else max(
      1, math.ceil(config.num_epochs * steps_per_epoch))
  warmup = optim.warmup_steps_from(config.optim, total_steps=total,
                                   steps_per_epoch=steps_per_epoch)
  return steps_per_epoch, total, warmup


# -----------------------------------------------------------------------------
# Model, optimizer and state.

def build_model(config: ml_collections.ConfigDict,
                num_classes: int) -> classifier_lib.Classifier:
  return classifier_lib.build_classifier(
      config.model, num_classes, ft_proj_selector=config.ft_proj_selector,
      zero_init=config.zero_init, fine_tune_after_block=config.fine_tune_after_block)


def build_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                    warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """config.optim's optimizer; frozen parameters (fine_tune_after_block) get
  exact-zero updates and no optimizer state."""
  tx, schedule = optim.build_optimizer(config.optim, batch_size=config.batch_size,
                                       total_steps=total_steps, warmup_steps=warmup_steps)
  k = config.fine_tune_after_block
  if k >= 0:
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()},
                               lambda params: classifier_lib.frozen_labels(params, k))
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


def create_state(config: ml_collections.ConfigDict, model: classifier_lib.Classifier,
                 tx: optax.GradientTransformation, mesh, image_shape: tuple[int, int, int]
                 ) -> tuple[train.TrainState, Optional[int]]:
  """Initial state on the mesh (replicated), restored from config.init_from when
  set. Returns (state, pretrained step or None)."""
  state = train.init_state(model, tx, seed=config.seed, image_shape=image_shape, mesh=mesh)
  if not config.init_from:
    return state, None
  host = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  variables, step = pretrained_variables(host, config.init_from, config.init_step)
  params = parallel.replicate(variables['params'], mesh)
  opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
  state = state.replace(params=params, opt_state=opt_state,
                        batch_stats=parallel.replicate(variables['batch_stats'], mesh))
  return state, step


# -----------------------------------------------------------------------------
# Steps.

def cross_entropy_objective(logits: jax.Array, batch: Batch, x: jax.Array,
                            aux: Any) -> tuple[jax.Array, dict]:
  del x, aux
  loss, acc = losses.softmax_cross_entropy(logits, batch['label'].astype(jax.numpy.int32))
  return loss, {'loss': loss, 'train_acc': acc}


def batch_inputs(config: ml_collections.ConfigDict, out_size: int, step: jax.Array | int,
                 batch: Batch) -> jax.Array:
  """The crop + flip training inputs [N, h, w, c] of a batch at `step`; crops
  of letterboxed images stay inside batch['extent'] when the batch has one."""
  return augment.finetune_batch(config.seed, step, batch['index'], batch['image'],
                                config.augment, out_size, extents=batch.get('extent'))


def make_train_step(model: classifier_lib.Classifier, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict, mesh,
                    out_size: int, objective: Objective = cross_entropy_objective):
  """Jitted `step(state, batch, aux) -> (state, metrics)`; the state is donated.

  The batch (uint8 'image', 'label', 'index', ...) is split over 'data'; `aux`
  (e.g. a teacher's variables) is replicated. Augmentation: crop + flip keyed
  by (seed, step, example index), as in pretraining; BatchNorm statistics are
  global over the batch.
  """
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)

  def step(state: train.TrainState, batch: Batch, aux: Any):
    x = batch_inputs(config, out_size, state.step, batch)
    x = jax.lax.with_sharding_constraint(x, data)

    def loss_fn(params):
      logits, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, mutable=['batch_stats'])
      loss, metrics = objective(logits, batch, x, aux)
      return loss, (mutated['batch_stats'], metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return train.TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state), metrics

  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


def make_logits_fn(model: classifier_lib.Classifier, variables: Any, mesh,
                   out_size: int) -> Callable[[jax.Array], jax.Array]:
  """uint8 images (sharded over 'data') -> eval-mode logits, eval preprocessing."""
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
  apply = jax.jit(lambda v, images: model.apply(
      v, augment.eval_preprocess(images, out_size), train=False),
                  in_shardings=(rep, data), out_shardings=data)
  return lambda images: apply(variables, images)


def evaluate(logits_fn: Callable[[jax.Array], jax.Array], config: ml_collections.ConfigDict,
             workdir: str, mesh) -> dict[str, Any]:
  """Top-1 on val (when carved) and test; WORKDIR/logits_<split>.npz if save_logits."""
  results: dict[str, Any] = {}
  for split in (['val'] if config.data.val_examples else []) + ['test']:
    pred = loop.predict_split(logits_fn, config.data, split, config.batch_size, mesh,
                              keep_logits=config.save_logits)
    results[f'{split}_top1'] = loop.top1(pred)
    results[f'{split}_examples'] = int(len(pred['label']))
    if config.save_logits and jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, **pred)
      files.write_bytes_atomic(os.path.join(workdir, f'logits_{split}.npz'), buffer.getvalue())
  return results


# -----------------------------------------------------------------------------
# The binary.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (or resumes) in `workdir`; returns the final metrics and top-1."""
  # --- Set-up: resolve the architecture, validate before anything compiles ----
  config = resolve_config(config)
  validate(config)
  parallel.maybe_initialize_distributed(config.multihost)
  mesh = parallel.make_mesh()
  parallel.local_batch_size(config.batch_size, mesh)  # fails early if it does not divide
  writer = metrics_io.MetricsWriter(workdir)

  # --- Input: the labelled subset of train (minus the val carve) ---------------
  ckpt = checkpoint.Checkpointer(f'{workdir}/checkpoints', max_to_keep=config.keep_checkpoints,
                                 save_interval_steps=config.checkpoint_every_steps)
  start_step = ckpt.latest_step() or 0

  def labelled(split: sources.ArraySource) -> sources.ArraySource:
    if split.num_classes <= 0:
      raise ValueError(f'{split.name} has no labels; fine-tuning needs a labelled '
                       'config.data.source.')
    return split.subset(label_subset(config, split, workdir), name=f'{split.name}:labelled')

  data = train_input(config, start_step, labelled)
  if data.num_classes <= 0:  # a stream
    raise ValueError(f'{config.data.name} has no labels; fine-tuning needs a labelled '
                     'config.data.source.')
  image_shape = data.image_shape
  out_size = config.data.image_size or image_shape[0]
  steps_per_epoch, total_steps, warmup_steps = schedule_lengths(config, data.steps_per_epoch)

  # --- Model and optimizer; pretrained weights unless resuming ----------------
  model = build_model(config, data.num_classes)
  tx, schedule = build_optimizer(config, total_steps=total_steps, warmup_steps=warmup_steps)
  image_shape = (out_size, out_size, image_shape[2])
  if start_step:
    state = train.init_state(model, tx, seed=config.seed, image_shape=image_shape, mesh=mesh)
    state = loop.resume(ckpt, start_step, state, data, writer, total_steps)
  else:
    state, pretrained_step = create_state(config, model, tx, mesh, image_shape)
    if config.init_from:
      logging.info('Restored the encoder (+%d projection layers) of %s, step %d.',
                   classifier_lib.kept_projection_layers(config.model, config.ft_proj_selector),
                   config.init_from, pretrained_step)
    elif config.fine_tune_after_block >= 0:
      logging.warning('fine_tune_after_block=%d without init_from freezes random weights.',
                      config.fine_tune_after_block)
  # Written only now: a rerun whose config does not fit the checkpoint fails in
  # restore and leaves the run's own config.json as it was.
  writer.write_config(config)

  # --- Loop ---------------------------------------------------------------------
  step_fn = make_train_step(model, tx, schedule, config, mesh, out_size)
  logging.info('Fine-tuning on %d labelled examples for %d steps (%.2f per epoch), batch %d '
               'on %d devices.', data.num_examples, total_steps, steps_per_epoch,
               config.batch_size, jax.device_count())
  progress = metrics_io.Progress(total_steps, config.batch_size,
                                 log_every=config.log_every_steps, start_step=start_step)
  flusher = loop.MetricsFlusher(writer, progress, config.batch_size, start_step,
                                ('loss', 'train_acc'))
  started = time.monotonic()
  state, step = loop.train_until_done(
      state, step_fn, data, config=config, mesh=mesh, start_step=start_step,
      total_steps=total_steps, ckpt=ckpt, flusher=flusher, step_args=({},))
  train_seconds = time.monotonic() - started

  # --- Eval: val (for choices) and test (the reported number) ------------------
  results: dict[str, Any] = {'step': step, 'total_steps': total_steps,
                             'label_examples': data.num_examples,
                             'init_from': config.init_from, 'train_seconds': train_seconds,
                             **flusher.last}
  if step < total_steps:
    logging.warning('Stopped at step %d of %d (SIGTERM or stop_at_step); rerun to resume.',
                    step, total_steps)
    writer.close()
    return results
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  results.update(evaluate(make_logits_fn(model, variables, mesh, out_size), config,
                          workdir, mesh))
  writer.write_scalars(step, {k: v for k, v in results.items() if k.endswith('_top1')})
  writer.write_json(RESULTS_FILE, results)
  if jax.process_index() == 0:
    print('fine-tuned top-1: ' + ', '.join(
        f'{k[:-5]} {v:.4f}' for k, v in results.items() if k.endswith('_top1')), flush=True)
  writer.close()
  return results


if __name__ == '__main__':
  loop.run_binary(train_and_evaluate)
