r"""Evaluation of a trained network: linear probe, kNN, classifier accuracy.

  python -m contrastive_jax.eval --config=configs/eval.py --workdir=EVALDIR \
      --config.init_from=PRETRAIN_OR_FINETUNE_WORKDIR [--config.continuous=True]

`evaluate(config, workdir)` is the importable entry point; the absl `main` at
the bottom only parses flags. EVALDIR may be the init_from workdir itself:
everything is written under EVALDIR/eval/ (results.json = the latest step,
step_<N>.json per step, metrics.jsonl + tensorboard/, config.json, PNGs), so
the run's own config.json and metrics are never touched.

Modes (config.modes, comma-separated):
  linear      SimCLR's linear evaluation of the frozen encoder (probes.linear_protocol).
  knn         weighted kNN on L2-normalised features, k in config.knn.ks.
  classifier  top-1 / top-5 of a fine-tuned or distilled network's own head
              (export.classifier_from_state on the restored checkpoint).
Continuous mode follows a running job: each new checkpoint is evaluated
(newest first: an evaluator that falls behind skips to the newest) until the
step recorded as 'total_steps' in the checkpoint's extra dict is done.
Checkpoints are only ever read (read-only Checkpointer).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from contrastive_jax import (checkpoint, config_defaults, export, loop, metrics_io, modalities,
                             parallel, plots, probes, train)
from contrastive_jax.data import pipeline, sources
from contrastive_jax.data.sources import ArraySource
from contrastive_jax.models import build_encoder, build_model, encoders

MODES = ('linear', 'knn', 'classifier')
PLOT_METHODS = ('pca', 'tsne')

# Valid values of the eval config's own keys (config_defaults.CHOICES covers data.*).
CHOICES: dict[str, tuple[Any, ...]] = {
    'multihost': ('auto', 'yes', 'no'),
    'linear.optimizer': ('sgd', 'lars'),
    'linear.lr_scaling': ('linear', 'sqrt', 'none'),
    'linear.schedule': ('cosine', 'constant'),
}


# ---------------------------------------------------------------------------
# Configuration.

def parse_modes(modes: str) -> tuple[str, ...]:
  parsed = tuple(m.strip() for m in str(modes).split(',') if m.strip())
  bad = [m for m in parsed if m not in MODES]
  if not parsed or bad:
    raise ValueError(f'config.modes={modes!r}: choose a comma-separated subset of {MODES} '
                     "(e.g. --config.modes=linear,knn).")
  return parsed


def resolve_data_config(run_data: ml_collections.ConfigDict,
                        overrides: Optional[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The init_from run's config.data with every key set (not None) in `overrides`."""
  data = ml_collections.ConfigDict(run_data.to_dict())
  for key, value in (overrides.items() if overrides is not None else ()):
    if value is not None:
      data[key] = value
  config_defaults.validate(ml_collections.ConfigDict({'data': data}))
  return data


def _validate(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  config_defaults.validate(config, CHOICES)
  if not config.init_from:
    raise ValueError('config.init_from is empty: pass the workdir of a pretrain / '
                     'finetune run, e.g. --config.init_from=/tmp/cj_smoke.')
  modes = parse_modes(config.modes)
  if 'linear' in modes and not (len(config.linear.learning_rates)
                                and len(config.linear.weight_decays)):
    raise ValueError('config.linear.learning_rates and config.linear.weight_decays '
                     'need at least one value each.')
  if 'linear' in modes:
    probes.parse_feature_norms(config.linear.feature_norm)
  if 'knn' in modes:
    probes.parse_feature_norms(config.knn.feature_norm, 'config.knn.feature_norm')
  if config.val_fraction < 0 or config.val_fraction >= 1:
    raise ValueError(f'config.val_fraction={config.val_fraction} must be in [0, 1).')
  bad = [m for m in plot_methods(config) if m not in PLOT_METHODS]
  if bad:
    raise ValueError(f'config.plot_methods={config.plot_methods!r}: choose from '
                     f'{PLOT_METHODS} (comma-separated).')
  return modes


def plot_methods(config: ml_collections.ConfigDict) -> list[str]:
  return [m.strip() for m in str(config.plot_methods).split(',') if m.strip()]


# ---------------------------------------------------------------------------
# Data: every split read once per evaluate() call.

@dataclasses.dataclass
class EvalData:
  """The splits to evaluate on. In-memory sources hold the arrays; streamed
  (tfds, in_memory=False) data is re-read through `pipeline` on each pass."""
  data_cfg: ml_collections.ConfigDict
  train: Optional[ArraySource]      # train minus the val carve
  val: Optional[ArraySource]
  test: Optional[ArraySource]
  streaming: bool

  @property
  def has_val(self) -> bool:
    return self.val is not None

  def batches(self, which: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    if self.streaming:
      return pipeline.make_eval_iterator(self.data_cfg, which, global_batch_size=batch_size)
    return pipeline.eval_batches(getattr(self, which), batch_size)

  @property
  def num_classes(self) -> int:
    for src in (self.train, self.test):
      if src is not None and src.num_classes > 0:
        return src.num_classes
    return 0


def load_eval_data(data_cfg: ml_collections.ConfigDict, *, need_train: bool,
                   need_val: bool, val_fraction: float) -> EvalData:
  """Loads train (minus val), val and test with `pipeline.load_split`'s carve.

  The val carve is config.data.val_examples class-balanced examples with
  pipeline.VAL_SEED, the same carve pretraining made; when that is 0 and a
  val split is needed, val_fraction of train is carved the same way.
  """
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  if data_cfg.source == 'tfds' and not data_cfg.in_memory:
    if need_val or data_cfg.val_examples:
      raise ValueError(
          'The linear probe chooses its learning rate / weight decay on a val carve of '
          'train, which streamed data (config.data.in_memory=False) cannot make. Set '
          '--config.data.in_memory=True, or give one value each in '
          'config.linear.learning_rates and config.linear.weight_decays.')
    return EvalData(data_cfg, None, None, None, streaming=True)
  train = val = None
  if need_train or need_val:
    full = sources.load_source(data_cfg, data_cfg.train_split)
    if need_val and not data_cfg.val_examples:
      if val_fraction <= 0:
        raise ValueError(
            'The linear probe grid needs a val split, but config.data.val_examples=0 and '
            'config.val_fraction=0; set one of them > 0 (or give one learning rate and one '
            'weight decay in config.linear).')
      data_cfg.val_examples = max(int(round(val_fraction * full.num_examples)), 1)
      logging.info('The run has no val carve (config.data.val_examples=0): carving %d '
                   'examples of train (config.val_fraction=%s).', data_cfg.val_examples,
                   val_fraction)
    # = pipeline.load_split('train' / 'val') without reading train twice.
    train, val = sources.split_train_val(full, data_cfg.val_examples, seed=pipeline.VAL_SEED,
                                         max_class_fraction=pipeline.val_class_fraction(data_cfg))
  test = sources.load_source(data_cfg, data_cfg.test_split)
  return EvalData(data_cfg, train, val, test, streaming=False)


# ---------------------------------------------------------------------------
# Model and features.

def eval_modality(run_config: ml_collections.ConfigDict, data: EvalData) -> modalities.Modality:
  """The run's modality over the evaluated data (its input size and shape)."""
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.data = data.data_cfg
  src = data.train if data.train is not None else data.test
  return modalities.build(config, src.input_shape if src is not None else None)

class EncoderFeatures(nn.Module):
  """The encoder alone (for checkpoints without a projection head): {'h', 'proj': [h]}."""
  encoder: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, Any]:
    h = self.encoder(x, train=train).astype(jnp.float32)
    return {'h': h, 'proj': [h]}


def _has_full_head(model_cfg: ml_collections.ConfigDict, params: dict[str, Any],
                   modality: modalities.Modality) -> bool:
  """Whether params['head'] is the whole projection head of config.model (a
  fine-tuned classifier keeps only its first layers, or none)."""
  if 'head' not in params:
    return False
  shapes = jax.eval_shape(lambda: build_model(model_cfg, num_classes=0, conv_cls=nn.Conv).init(
      jax.random.PRNGKey(0), modality.dummy_input(1), train=False))
  return jax.tree.structure(shapes['params']['head']) == jax.tree.structure(params['head'])


def feature_model(model_cfg: ml_collections.ConfigDict, state: dict[str, Any],
                  modality: modalities.Modality) -> tuple[nn.Module, dict[str, Any]]:
  """(module, variables) computing h and the projection layers from a restored state.

  Only 'encoder' and a complete projection 'head' are kept: the online probe,
  a classifier, or a fine-tuned classifier's partial head play no part (their
  checkpoints give h only).
  """
  params, batch_stats = state.get('params', {}), state.get('batch_stats', {}) or {}
  if 'encoder' not in params:
    raise ValueError(f'The checkpoint has no encoder parameters (top-level modules: '
                     f'{sorted(params)}); config.init_from must be a pretrain or finetune '
                     'workdir written by contrastive_jax.')
  full = _has_full_head(model_cfg, params, modality)
  keep = ('encoder', 'head') if full else ('encoder',)
  module = (build_model(model_cfg, num_classes=0) if full
            else EncoderFeatures(build_encoder(model_cfg)))
  variables = {'params': {k: params[k] for k in keep}}
  if batch_stats:
    variables['batch_stats'] = {k: batch_stats[k] for k in keep if k in batch_stats}
  return module, variables


def extract_features(predict: Callable[[Any, jax.Array], dict], variables: Any,
                     batches: Iterable[dict[str, np.ndarray]], feature: str,
                     mesh: jax.sharding.Mesh, input_key: str = 'image'
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D] float32, labels [N]) of one pass, on every process.

  Each process feeds its rows; the sharded output is all-gathered (tiled), so
  every process ends up with the whole split, padding rows dropped.
  """
  feats, labels = [], []
  for batch in batches:
    # Labels and mask travel as global arrays too: gathered from host numpy they
    # would come in process order, the features in the mesh's device order, and
    # make_mesh may order a pod's hosts differently.
    batch = parallel.global_batch({k: batch[k] for k in (input_key, 'mask', 'label')}, mesh)
    out = predict(variables, batch[input_key])
    if feature not in out:
      raise ValueError(f'config.feature={feature!r} is not an output of this model; '
                       f'choose one of {sorted(out)}.')
    f, mask, y = (parallel.gather(x) for x in (out[feature], batch['mask'], batch['label']))
    feats.append(f[mask].astype(np.float32))
    labels.append(y[mask].astype(np.int32))
  if not feats:
    raise ValueError('An evaluation split has no examples.')
  return np.concatenate(feats), np.concatenate(labels)


def _labelled(features: np.ndarray, labels: np.ndarray, name: str
              ) -> tuple[np.ndarray, np.ndarray]:
  keep = labels >= 0
  if not keep.any():
    raise ValueError(f'The {name} split has no labels (all -1): linear / kNN evaluation '
                     'needs a labelled config.data source.')
  return features[keep], labels[keep]


# ---------------------------------------------------------------------------
# Classifier mode.

def classifier_accuracy(classifier: Any, batches: Iterable[dict[str, np.ndarray]],
                        input_key: str = 'image') -> dict[str, float]:
  """Top-1 / top-5 of `classifier.logits(raw inputs) -> [n, C]` over masked batches.

  Each process scores its own rows; the counts are summed over processes.
  """
  counts = np.zeros(3, np.int64)  # top-1 correct, top-5 correct, examples
  for batch in batches:
    keep = batch['mask'] & (batch['label'] >= 0)
    if not keep.any():
      continue
    logits = np.asarray(classifier.logits(batch[input_key][keep]), np.float32)
    labels = batch['label'][keep]
    # Stable sort of -logits: ties go to the lower class index, as lax.top_k.
    ranked = np.argsort(-logits, axis=1, kind='stable')[:, :5]
    counts += [int(np.sum(ranked[:, 0] == labels)),
               int(np.sum(np.any(ranked == labels[:, None], axis=1))), int(keep.sum())]
  if jax.process_count() > 1:
    counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
  total = max(int(counts[2]), 1)
  return {'classifier_top1': float(counts[0] / total),
          'classifier_top5': float(counts[1] / total),
          'classifier_examples': int(counts[2])}


# ---------------------------------------------------------------------------
# One checkpoint.

@dataclasses.dataclass
class _Context:
  config: ml_collections.ConfigDict
  modes: tuple[str, ...]
  run_config: ml_collections.ConfigDict
  data: EvalData
  mesh: jax.sharding.Mesh
  outdir: str
  writer: metrics_io.MetricsWriter
  modality: modalities.Modality
  # Built at the first step and kept: every step of a run has the same
  # architecture, so the jitted feature extractor compiles once.
  predict: Optional[Callable[[Any, jax.Array], dict]] = None


def check_input_size(run_config: ml_collections.ConfigDict, out_size: int) -> None:
  """An encoder whose h width depends on the input (a ResNet with
  pool='flatten') only takes the pretraining input size: say so here rather
  than as a shape error deep inside flax."""
  trained = int(run_config.data.get('image_size', 0) or 0)
  if (encoders.spec(run_config.model).width(run_config.model) is None and trained
      and out_size != trained):
    raise ValueError(
        f"This run's encoder's h width depends on its input size (e.g. resnet.pool="
        f"'flatten'), so it only takes {trained} px inputs; config.data.image_size="
        f'{out_size} would change it. Evaluate at {trained} px (drop the image_size override).')


def _frozen_feature_eval(ctx: _Context, state: dict[str, Any], step: int) -> dict[str, Any]:
  config, data = ctx.config, ctx.data
  module, variables = feature_model(ctx.run_config.model, state, ctx.modality)
  if ctx.predict is None:
    if ctx.modality.name == 'image':
      check_input_size(ctx.run_config, ctx.modality.out_size)
    ctx.predict = train.make_predict_fn(module, ctx.mesh, ctx.modality)
  predict = ctx.predict
  variables = parallel.replicate(variables, ctx.mesh)

  t0 = time.monotonic()
  splits = ['train'] + (['val'] if data.has_val else []) + ['test']
  feats = {}
  for which in splits:
    x, y = extract_features(predict, variables, data.batches(which, config.batch_size),
                            config.feature, ctx.mesh, ctx.modality.input_key)
    feats[which] = _labelled(x, y, which)
  results: dict[str, Any] = {
      'feature': config.feature, 'feature_dim': int(feats['test'][0].shape[1]),
      'features_seconds': time.monotonic() - t0,
      **{f'{w}_examples': int(len(feats[w][1])) for w in splits}}
  num_classes = data.num_classes or int(max(int(f[1].max()) for f in feats.values()) + 1)

  if 'linear' in ctx.modes:
    t0 = time.monotonic()
    lin = config.linear
    results.update(probes.linear_protocol(
        feats['train'], feats.get('val'), feats['test'], num_classes=num_classes,
        base_learning_rates=tuple(lin.learning_rates), weight_decays=tuple(lin.weight_decays),
        lr_scaling=lin.lr_scaling, epochs=lin.epochs, batch_size=lin.batch_size,
        optimizer=lin.optimizer, momentum=lin.momentum, nesterov=lin.nesterov,
        schedule=lin.schedule, feature_norm=lin.feature_norm, seed=config.seed))
    results['linear_seconds'] = time.monotonic() - t0

  if 'knn' in ctx.modes:
    t0 = time.monotonic()
    # Memory bank for test: all of train (the val carve too); a feature_norm
    # choice is made on val with train as the bank; nothing is chosen on test.
    results.update(probes.knn_protocol(
        feats['train'], feats.get('val'), feats['test'], num_classes=num_classes,
        ks=tuple(config.knn.ks), temperature=config.knn.temperature,
        feature_norm=config.knn.feature_norm, chunk_size=config.knn.chunk_size))
    results['knn_seconds'] = time.monotonic() - t0

  if config.plot and jax.process_index() == 0:
    t0 = time.monotonic()
    results['plots'] = _plot(ctx, *feats['test'], step)
    results['plot_seconds'] = time.monotonic() - t0
  return results


def _plot(ctx: _Context, features: np.ndarray, labels: np.ndarray, step: int) -> list[str]:
  config = ctx.config
  pick = plots.subsample(len(features), config.plot_max_points, config.seed)
  x, y = features[pick], labels[pick]
  written = []
  for method in plot_methods(config):
    if method == 'pca':
      points = plots.pca_2d(x)
    else:
      points = plots.tsne_2d(x, seed=config.seed)
      if points is None:
        logging.warning('No t-SNE plot: scikit-learn is not installed (pip install '
                        'scikit-learn; setup.py lists it, so reinstall contrastive_jax).')
        continue
    path = os.path.join(ctx.outdir, f'embedding_{method}.png')
    title = (f'{os.path.basename(os.path.normpath(config.init_from))} step {step}: '
             f'{config.feature} of {len(x)} test examples ({method.upper()})')
    if plots.scatter_png(points, y, path, title=title) is None:
      logging.warning('No embedding plots: matplotlib is not installed (pip install '
                      'matplotlib; setup.py lists it, so reinstall contrastive_jax).')
      break
    written.append(path)
  return written


def _evaluate_step(ctx: _Context, step: int, state: dict[str, Any]
                   ) -> dict[str, Any]:
  t0 = time.monotonic()
  results: dict[str, Any] = {'step': int(step), 'init_from': ctx.config.init_from,
                             'modes': ','.join(ctx.modes)}
  if 'linear' in ctx.modes or 'knn' in ctx.modes:
    results.update(_frozen_feature_eval(ctx, state, step))
  if 'classifier' in ctx.modes:
    # From the state the loop restored: reading the checkpoint again would
    # reopen the window in which keep-K deletes it (continuous mode).
    classifier = export.classifier_from_state(ctx.run_config, state, step,
                                              ctx.config.init_from)
    results.update(classifier_accuracy(classifier,
                                       ctx.data.batches('test', ctx.config.batch_size),
                                       ctx.modality.input_key))
  results['eval_seconds'] = time.monotonic() - t0

  ctx.writer.write_json(f'step_{int(step)}.json', results)
  ctx.writer.write_json('results.json', results)
  ctx.writer.write_scalars(step, {k: v for k, v in results.items()
                                  if k != 'step' and isinstance(v, (int, float))
                                  and not isinstance(v, bool)})
  if jax.process_index() == 0:
    shown = [k for k in results if k.endswith(('_top1', '_balanced_acc'))
             and not k.startswith('linear_val')]
    print(f'eval step {step}: ' + ', '.join(f'{k} {results[k]:.4f}' for k in shown),
          flush=True)
  return results


def _is_deleted(directory: str, step: int) -> bool:
  return step not in checkpoint.checkpoint_steps(directory)


def _on_any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _on_every_process(flag: bool) -> bool:
  return not _on_any_process(not flag)


# ---------------------------------------------------------------------------
# Entry point.

def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates config.init_from's checkpoint(s); writes WORKDIR/eval/*.

  Returns the results of the last evaluated step (plus 'evaluated_steps').
  """
  # --- Set-up: validate before anything loads or compiles ----------------------
  modes = _validate(config)
  parallel.maybe_initialize_distributed(config.multihost)
  mesh = parallel.make_mesh()
  parallel.local_batch_size(config.batch_size, mesh)  # fails early if it does not divide
  outdir = os.path.join(workdir, 'eval')
  writer = metrics_io.MetricsWriter(outdir)
  writer.write_config(config)
  ckpt_dir = os.path.join(config.init_from, 'checkpoints')
  need_state = 'linear' in modes or 'knn' in modes

  # --- The first step to evaluate (waits for a running job's first checkpoint)
  if config.continuous:
    step = checkpoint.wait_for_new_checkpoint(ckpt_dir, None, config.continuous_timeout_s,
                                              poll_s=config.continuous_poll_s)
    if step is None:
      raise TimeoutError(f'No checkpoint appeared in {ckpt_dir} within '
                         f'config.continuous_timeout_s={config.continuous_timeout_s}s.')
  else:
    steps = checkpoint.checkpoint_steps(ckpt_dir)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {ckpt_dir}: is config.init_from='
                              f'{config.init_from!r} a pretrain / finetune workdir?')
    step = config.step or steps[-1]
    if step not in steps:
      raise FileNotFoundError(f'config.step={config.step} is not in {ckpt_dir}; available '
                              f'steps: {steps} (0 = the latest).')

  # --- Data: the run's config.data with this config's overrides, read once ----
  run_config = export.read_config(config.init_from)
  if 'classifier' in modes:
    export.require_classifier_run(run_config, config.init_from)
  data_cfg = resolve_data_config(run_config.data, config.get('data'))
  single_point = len(config.linear.learning_rates) * len(config.linear.weight_decays) == 1
  data = load_eval_data(data_cfg, need_train=need_state,
                        need_val='linear' in modes and not single_point,
                        val_fraction=config.val_fraction)
  if need_state and data.num_classes <= 0 and not data.streaming:
    raise ValueError(f'config.data.source={data_cfg.source!r} has no labels; linear / kNN '
                     'evaluation needs a labelled dataset.')
  ctx = _Context(config=config, modes=modes, run_config=run_config, data=data, mesh=mesh,
                 outdir=outdir, writer=writer, modality=eval_modality(run_config, data))

  # --- Loop over checkpoints (one pass unless continuous) ----------------------
  reader = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  total_steps = run_config.get('total_steps', 0) or None
  evaluated: list[int] = []
  results: dict[str, Any] = {}
  try:
    while step is not None:
      state = extra = error = None
      try:
        # Agreed before orbax, whose restore ends in a barrier: a process that
        # no longer lists the step must not skip while the others sit there.
        # (A deletion in the middle of the read itself can still stall.)
        if config.continuous and not _on_every_process(not _is_deleted(ckpt_dir, step)):
          raise FileNotFoundError(f'Checkpoint {step} is gone on some process.')
        state, extra = reader.restore(step)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      # Every process takes the same branch: one that skipped the step while
      # another evaluated it would leave the other waiting in a collective.
      if _on_any_process(error is not None):
        # keep-K may delete a step between listing and reading it; skip it then.
        deleted = config.continuous and (isinstance(error, FileNotFoundError)
                                         or _is_deleted(ckpt_dir, step))
        if not _on_every_process(deleted):
          raise error or RuntimeError(f'Another process could not restore step {step} '
                                      f'of {ckpt_dir}; see its log.')
        logging.warning('Checkpoint %d was deleted while being read (%s); skipping it.',
                        step, type(error).__name__ if error else 'on another process')
      else:
        if extra and extra.get('total_steps'):
          total_steps = int(extra['total_steps'])
        results = _evaluate_step(ctx, step, state)
        evaluated.append(step)
      if not config.continuous:
        break
      if total_steps is not None and step >= total_steps:
        logging.info('Evaluated the last step (%d) of %s; done.', step, config.init_from)
        break
      last = step
      step = checkpoint.wait_for_new_checkpoint(ckpt_dir, last, config.continuous_timeout_s,
                                                poll_s=config.continuous_poll_s)
      if step is None:
        logging.warning('No new checkpoint after step %d within %ss; stopping.', last,
                        config.continuous_timeout_s)
  finally:
    reader.close()
    writer.close()
  return dict(results, evaluated_steps=evaluated)


if __name__ == '__main__':
  loop.run_binary(evaluate)
