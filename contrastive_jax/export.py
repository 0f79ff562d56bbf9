"""Load a trained network from a workdir without knowing the checkpoint layout.

  import contrastive_jax
  encoder = contrastive_jax.load_encoder('/tmp/cj_smoke')      # latest checkpoint
  out = encoder(images)            # images: [N, H, W, C] floats in [0, 1] (or uint8)
  out['h'], out['z']               # encoder features, projection-head output

The workdir's `config.json` says how to rebuild the model; the checkpoint gives
the parameters and BatchNorm statistics. Optimizer state is never loaded.
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

from contrastive_jax import augment, checkpoint
from contrastive_jax.models import build_model


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a binary saved as WORKDIR/config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the --workdir of a '
                            'pretrain/finetune run?')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


@dataclasses.dataclass
class Pretrained:
  """A restored network: config, linen module and its variables (host arrays)."""
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  step: int


def _head_classes(params: dict[str, Any], name: str) -> int:
  """Output width of a linear head module (0 when the module is absent)."""
  if name not in params:
    return 0
  kernel = next(l for l in jax.tree.leaves(params[name]) if np.ndim(l) == 2)
  return int(kernel.shape[-1])


def load_pretrained(workdir: str, step: Optional[int] = None) -> Pretrained:
  """Restores params + batch_stats of a pretraining run (latest step by default)."""
  config = read_config(workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints yet.')
    state, _ = ckpt.restore(step)
  finally:
    ckpt.close()
  params, batch_stats = state['params'], state.get('batch_stats', {})
  model = build_model(config.model, num_classes=_head_classes(params, 'probe'))
  return Pretrained(config=config, model=model, step=int(step),
                    variables={'params': params, 'batch_stats': batch_stats})


class Encoder:
  """Callable feature extractor: images [N, H, W, C] in [0, 1] (or uint8) -> outputs.

  Returns a dict with 'h' (encoder features), 'z' (projection output),
  'proj_i' (the i-th projection layer's output; proj_0 = h) and, when the run
  had an online probe, 'probe_logits'. uint8 inputs get the eval preprocessing
  (centre crop, resize to the training input size) first.
  """

  def __init__(self, pretrained: Pretrained):
    self.pretrained = pretrained
    self.config = pretrained.config
    self.image_size = int(self.config.data.image_size) or None
    self._variables = jax.tree.map(jnp.asarray, pretrained.variables)
    model = pretrained.model

    @jax.jit
    def apply(variables, x):
      out = model.apply(variables, x, train=False)
      proj = out.pop('proj')
      return out | {f'proj_{i}': p for i, p in enumerate(proj)}

    self._apply = apply

  def __call__(self, images: Any) -> dict[str, jax.Array]:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    if images.dtype == np.uint8:
      size = self.image_size or images.shape[1]
      x = augment.eval_preprocess(jnp.asarray(images), size)
    else:
      x = jnp.asarray(images, jnp.float32)
    return self._apply(self._variables, x)


def load_encoder(workdir: str, step: Optional[int] = None) -> Encoder:
  """The trained encoder of a pretraining workdir, ready to call on images."""
  return Encoder(load_pretrained(workdir, step))
