"""Models: encoders (a registry keyed by config.model.name), projection/linear
heads, and the contrastive model that pretraining trains.

`build_model(config.model, num_classes)` is the one entry point the binaries
use; `build_encoder(config.model)` gives the encoder alone. The convolution
implementation (a speed choice, never a parameter change) comes from the
run's `config.kernels` (`contrastive_jax.kernels.backend`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax.models import encoders
from contrastive_jax.models.encoders import ENCODERS, EncoderSpec
from contrastive_jax.models.heads import LinearHead, ProjectionHead
from contrastive_jax.models.resnet import DEPTHS, ResNet, resolve_architecture
from contrastive_jax.models import rnn  # registers 'rnn' (config.model.rnn)  # noqa: F401

__all__ = [
    'ContrastiveModel', 'DEPTHS', 'ENCODERS', 'EncoderSpec', 'LinearHead', 'ProjectionHead',
    'ResNet', 'build_encoder', 'build_head', 'build_model', 'count_params', 'encoder_width',
    'model_defaults', 'resolve_architecture', 'tiny_model_config',
]


class ContrastiveModel(nn.Module):
  """Encoder + projection head (+ online linear probe on stop_gradient(h)).

  `__call__(x, train)` -> dict(h, z, proj, [p], [probe_logits]), all float32:
  h = encoder output, proj = the head's list [h, out_1, ..., out_L],
  z = proj[-1] (not normalised; the loss normalises), p = the method's
  predictor on z (BYOL, MoCo v3) when it has one. The probe sees
  stop_gradient(h) so its loss trains only the probe (SimCLR v2's
  "linear eval while pretraining").
  """
  encoder: nn.Module
  head: nn.Module
  num_classes: int = 0
  predictor: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, Any]:
    h = self.encoder(x, train=train)
    proj = [p.astype(jnp.float32) for p in self.head(h, train=train)]
    out = dict(h=h.astype(jnp.float32), z=proj[-1], proj=proj)
    if self.predictor is not None:
      out['p'] = self.predictor(out['z'], train=train).astype(jnp.float32)
    if self.num_classes > 0:
      out['probe_logits'] = LinearHead(self.num_classes, name='probe')(
          jax.lax.stop_gradient(out['h']))
    return out


def model_defaults() -> ml_collections.ConfigDict:
  """config.model: the encoder's name and section (one per registered encoder),
  then what every encoder shares (head, dtype, BatchNorm)."""
  cfg = ml_collections.ConfigDict()
  cfg.name = 'resnet'              # the encoder: a name in models.ENCODERS
  for name in ENCODERS.names():
    cfg[name] = ENCODERS.get(name).defaults()
  cfg.num_proj_layers = 2          # 2 (v1) | 3 (v2)
  cfg.proj_dim = 128
  cfg.proj_hidden_dim = 0          # 0 = encoder output width
  cfg.dtype = 'float32'            # compute dtype: 'float32' | 'bfloat16'
  cfg.bn_momentum = 0.9
  cfg.bn_epsilon = 1e-5
  cfg.embedding_init = ''          # text encoders: a word2vec workdir whose vectors start
                                   # the token embedding (contrastive_jax.word2vec)
  return cfg


# config.model keys (beside the encoder's own arch_keys) that define the parameters.
HEAD_ARCH_KEYS = ('num_proj_layers', 'proj_dim', 'proj_hidden_dim')


def validate(model_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key of config.model at fault."""
  spec = encoders.spec(model_cfg)
  spec.validate(encoders.section(model_cfg))
  encoders.compute_dtype(model_cfg)
  if model_cfg.num_proj_layers < 1:
    raise ValueError(f'config.model.num_proj_layers={model_cfg.num_proj_layers} must be >= 1.')


def build_encoder(model_cfg: ml_collections.ConfigDict, conv_cls: Any = None,
                  kernels_cfg: Optional[ml_collections.ConfigDict] = None) -> nn.Module:
  """The encoder config.model names (float32 params, config.model.dtype compute).

  The convolution class is `conv_cls` when given, else the one
  `config.kernels` picks for this backend (XLA's on accelerators; on CPU the
  faster kernels of contrastive_jax.kernels). Parameters are identical
  either way, so checkpoints move freely.
  """
  if conv_cls is None:
    from contrastive_jax.kernels import backend  # pylint: disable=g-import-not-at-top
    conv_cls = backend.conv_cls(kernels_cfg)
  return encoders.spec(model_cfg).build(model_cfg, conv_cls)


def encoder_width(model_cfg: ml_collections.ConfigDict, image_size: int | None = None,
                  channels: int = 3) -> int:
  """Width of h for config.model (2048 for ResNet-50 1x).

  When it depends on the input (a ResNet with pool='flatten'), pass
  `image_size` (config.data.image_size).
  """
  width = encoders.spec(model_cfg).width(model_cfg)
  if width is not None:
    return int(width)
  if not image_size:
    raise ValueError("This encoder's h width depends on the input size "
                     f"(config.model: {model_cfg.name}, e.g. resnet.pool='flatten'); pass "
                     'image_size (config.data.image_size).')
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  h, _ = jax.eval_shape(lambda x: build_encoder(model_cfg, conv_cls=nn.Conv).init_with_output(
      jax.random.PRNGKey(0), x, train=False), x)
  return int(h.shape[-1])


def build_head(model_cfg: ml_collections.ConfigDict, keep: int = 0) -> ProjectionHead:
  """config.model's projection head (`keep` > 0: only its first `keep` layers)."""
  return ProjectionHead(
      num_layers=int(model_cfg.num_proj_layers), keep=keep, out_dim=model_cfg.proj_dim,
      hidden_dim=model_cfg.proj_hidden_dim, dtype=encoders.compute_dtype(model_cfg),
      bn_momentum=model_cfg.bn_momentum, bn_epsilon=model_cfg.bn_epsilon)


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int,
                conv_cls: Any = None,
                kernels_cfg: Optional[ml_collections.ConfigDict] = None,
                predictor: Optional[nn.Module] = None) -> ContrastiveModel:
  """Encoder + projection head from config.model; num_classes > 0 adds the
  probe; `predictor` (a method's, on z) adds output 'p'."""
  return ContrastiveModel(encoder=build_encoder(model_cfg, conv_cls, kernels_cfg),
                          head=build_head(model_cfg), num_classes=num_classes,
                          predictor=predictor)


def tiny_model_config() -> ml_collections.ConfigDict:
  """A two-stage 8-wide ResNet for tests and CPU demos (h width 16)."""
  cfg = model_defaults()
  cfg.resnet.update(dict(depth=0, stage_sizes=(1, 1), block='basic', base_width=8,
                         stem='cifar'))
  cfg.update(dict(num_proj_layers=2, proj_dim=16))
  return cfg


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree (arrays or jax.ShapeDtypeStruct leaves)."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))
