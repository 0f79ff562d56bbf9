"""Load a trained network from a workdir without knowing the checkpoint layout.

  import contrastive_jax
  encoder = contrastive_jax.load_encoder('/tmp/cj_smoke')      # latest checkpoint
  out = encoder(inputs)            # images: [N, H, W, C] floats in [0, 1] (or uint8)
  out['h'], out['z']               # encoder features, projection-head output

  clf = export.load_classifier('/tmp/ft')   # a finetune or distill workdir
  clf.logits(images_uint8)         # [N, num_classes]; clf.predict -> class ids

The workdir's `config.json` says how to rebuild the model; the checkpoint gives
the parameters and BatchNorm statistics. Optimizer state is never loaded, nor
a method's extra state, except a momentum network on request
(`load_encoder(workdir, network='momentum')`). The run's modality (from its
data source) prepares the inputs, so the same calls serve any modality.

As a binary, `python -m contrastive_jax.export` converts (contrastive_jax/interop):
`--workdir=RUN --to=torch|npz|jax_export --out=PATH` exports a run (PyTorch
state_dict + module, a NumPy .npz with config and BN statistics, a serialized
`jax.export` forward, polymorphic in the batch: `interop.npz.serialize_forward(
load_encoder(RUN))` -> bytes, `jax.export.deserialize(bytes).call(x)` -> h, z),
and `--from=torch|tf_simclr --src=PATH --workdir=NEW` imports PyTorch or the
official SimCLR TF checkpoints into a workdir these functions read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax import checkpoint, config_migration, files, modalities
from contrastive_jax.models import build_model
from contrastive_jax.models import classifier as classifier_lib


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a binary saved as WORKDIR/config.json, in today's
  layout (config_migration: runs written before the plug-in layout load too)."""
  path = os.path.join(workdir, 'config.json')
  if not files.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the --workdir of a '
                            'pretrain/finetune run?')
  config = config_migration.migrate(ml_collections.ConfigDict(json.loads(files.read_text(path))))
  if 'data' in config:
    modalities.attach_run_files(config, workdir)
  return config


@dataclasses.dataclass
class Pretrained:
  """A restored network: config, linen module and its variables (host arrays)."""
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  step: int


# load_encoder's choices: the trained network, or a method's momentum copy.
NETWORKS = ('online', 'momentum')


def _head_classes(params: dict[str, Any], name: str) -> int:
  """Output width of a linear head module (0 when the module is absent)."""
  if name not in params:
    return 0
  kernel = next(l for l in jax.tree.leaves(params[name]) if np.ndim(l) == 2)
  return int(kernel.shape[-1])


def _restore(workdir: str, step: Optional[int], network: str = 'online'
             ) -> tuple[Any, Any, int]:
  """(params, batch_stats, step) of a checkpoint of `workdir` (latest by default),
  read without holding a checkpoint writer; `network`: see load_encoder."""
  if network not in NETWORKS:
    raise ValueError(f'network={network!r}; choose one of {NETWORKS}.')
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints yet.')
    state, _ = ckpt.restore(step)
  finally:
    ckpt.close()
  if network == 'momentum':
    extra = state.get('extra') or {}
    if 'params' not in extra:
      raise ValueError(f'The checkpoint in {workdir} has no momentum network: its method '
                       "keeps none (use network='online').")
    return extra['params'], extra.get('batch_stats', {}), int(step)
  return state['params'], state.get('batch_stats', {}), int(step)


def load_pretrained(workdir: str, step: Optional[int] = None,
                    network: str = 'online') -> Pretrained:
  """Restores params + batch_stats of a pretraining run (latest step by default);
  `network`: see load_encoder."""
  config = read_config(workdir)
  params, batch_stats, step = _restore(workdir, step, network)
  model = build_model(config.model, num_classes=_head_classes(params, 'probe'),
                      kernels_cfg=config.get('kernels'))
  return Pretrained(config=config, model=model, step=int(step),
                    variables={'params': params, 'batch_stats': batch_stats})


class Encoder:
  """Callable feature extractor: raw inputs -> outputs.

  Images: [N, H, W, C] (or one [H, W, C]; [N, H, W] for a one-channel
  network), floats in [0, 1] used as they are, uint8 given the eval
  preprocessing (centre crop, resize to the training input size) first.
  Returns a dict with 'h' (encoder features), 'z' (projection output),
  'proj_i' (the i-th projection layer's output; proj_0 = h) and, when the run
  had an online probe, 'probe_logits'.
  """

  def __init__(self, pretrained: Pretrained):
    self.pretrained = pretrained
    self.config = pretrained.config
    self.modality = modalities.build(self.config, _input_shape(pretrained.variables))
    self._variables = jax.tree.map(jnp.asarray, pretrained.variables)
    model = pretrained.model

    @jax.jit
    def apply(variables, x):
      out = model.apply(variables, x, train=False)
      proj = out.pop('proj')
      return out | {f'proj_{i}': p for i, p in enumerate(proj)}

    self._apply = apply

  def __call__(self, inputs: Any) -> dict[str, jax.Array]:
    return self._apply(self._variables, self.modality.prepare(inputs))


def _input_shape(variables: dict[str, Any]) -> Optional[tuple[int, ...]]:
  """What the checkpoint says of the input: the channel count, the fewest
  input channels of the encoder's convolution kernels [kh, kw, C_in, C_out]
  (the first convolution's), as (None, None, C); None without convolutions."""
  kernels = [l for l in jax.tree.leaves(variables.get('params', {}).get('encoder', {}))
             if np.ndim(l) == 4]
  if not kernels:
    return None
  return (None, None, min(int(np.shape(k)[-2]) for k in kernels))


def load_encoder(workdir: str, step: Optional[int] = None,
                 network: str = 'online') -> Encoder:
  """The trained encoder of a pretraining workdir, ready to call on images.

  network: 'online' (the trained network) or 'momentum': the momentum (EMA)
  network of a method that keeps one (BYOL, MoCo, SimCLR with memory; its
  TrainState.extra['params'] and ['batch_stats'], methods/momentum.py).
  """
  return Encoder(load_pretrained(workdir, step, network))


class Classifier:
  """A fine-tuned (or distilled) classifier, ready to call on raw inputs.

    clf = load_classifier('/tmp/ft')
    clf.logits(images_uint8)     # [N, num_classes] float32 (numpy)
    clf.predict(images_uint8)    # [N] int class ids

  Inputs are prepared by the run's modality (images: uint8 [N, H, W, C] get
  the eval preprocessing, centre crop when the input side is above 32 px and
  resize to the training input size; floats in [0, 1] are used as they are).
  Evaluated in chunks of `batch_size` examples.
  """

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module,
               variables: dict[str, Any], step: int, batch_size: int = 512):
    self.config = config
    self.model = model
    self.step = int(step)
    self.variables = jax.tree.map(jnp.asarray, variables)
    self.num_classes = int(model.num_classes)
    self.modality = modalities.build(config, _input_shape(variables))
    self.batch_size = batch_size
    self._apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def preprocess(self, inputs: Any) -> jax.Array:
    return self.modality.prepare(inputs)

  def apply(self, x: jax.Array) -> jax.Array:
    """Eval-mode logits of already preprocessed float images (jittable inside)."""
    return self._apply(self.variables, x)

  def logits(self, inputs: Any) -> np.ndarray:
    x = self.preprocess(inputs)
    chunks = [np.asarray(self.apply(x[i:i + self.batch_size]))
              for i in range(0, len(x), self.batch_size)]
    return (np.concatenate(chunks) if chunks
            else np.zeros((0, self.num_classes), np.float32))

  def predict(self, images: Any) -> np.ndarray:
    return self.logits(images).argmax(-1)

  __call__ = logits


def require_classifier_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError unless `config` (a run's config.json) is a fine-tune /
  distill run's, i.e. its checkpoints hold a classifier."""
  if 'ft_proj_selector' not in config:
    raise ValueError(f'{workdir} is not a fine-tune or distill workdir (its config.json has '
                     'no ft_proj_selector); use load_encoder for pretraining runs.')


def classifier_from_state(config: ml_collections.ConfigDict, state: dict[str, Any],
                          step: int, workdir: str = '') -> Classifier:
  """The Classifier of an already restored checkpoint: `state` as
  `Checkpointer.restore` returns it, `config` the run's config.json."""
  require_classifier_run(config, workdir)
  params = state['params']
  num_classes = _head_classes(params, 'classifier')
  if num_classes <= 0:
    raise ValueError(f'The checkpoint in {workdir} has no classifier parameters.')
  model = classifier_lib.build_classifier(
      config.model, num_classes, ft_proj_selector=config.ft_proj_selector,
      zero_init=config.get('zero_init', True), kernels_cfg=config.get('kernels'))
  return Classifier(config=config, model=model, step=int(step),
                    variables={'params': params,
                               'batch_stats': state.get('batch_stats', {})})


def load_classifier(workdir: str, step: Optional[int] = None) -> Classifier:
  """The classifier of a fine-tune or distill workdir (latest checkpoint by default)."""
  config = read_config(workdir)
  require_classifier_run(config, workdir)  # before reading any checkpoint
  params, batch_stats, step = _restore(workdir, step)
  return classifier_from_state(config, {'params': params, 'batch_stats': batch_stats},
                               step, workdir)


if __name__ == '__main__':
  from contrastive_jax.interop import cli  # `python -m contrastive_jax.export --to=... | --from=...`
  cli.main()
