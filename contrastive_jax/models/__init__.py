"""Models: ResNet encoders, projection/linear heads, and the SimCLR model.

`build_model(config.model, num_classes)` is the one entry point the binaries
use; it reads only keys declared in `contrastive_jax.config_defaults`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrastive_jax import config_defaults
from contrastive_jax.models.heads import LinearHead, ProjectionHead
from contrastive_jax.models.resnet import DEPTHS, ResNet, feature_width

__all__ = [
    'ContrastiveModel', 'DEPTHS', 'LinearHead', 'ProjectionHead', 'ResNet',
    'build_encoder', 'build_model', 'count_params', 'encoder_width',
    'resolve_architecture', 'tiny_model_config',
]

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ContrastiveModel(nn.Module):
  """Encoder + projection head (+ online linear probe on stop_gradient(h)).

  `__call__(x, train)` -> dict(h, z, proj, [probe_logits]), all float32:
  h = encoder output, proj = the head's list [h, out_1, ..., out_L],
  z = proj[-1] (not normalised; the loss normalises). The probe sees
  stop_gradient(h) so its loss trains only the probe (SimCLR v2's
  "linear eval while pretraining").
  """
  encoder: nn.Module
  head: nn.Module
  num_classes: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, Any]:
    h = self.encoder(x, train=train)
    proj = [p.astype(jnp.float32) for p in self.head(h, train=train)]
    out = dict(h=h.astype(jnp.float32), z=proj[-1], proj=proj)
    if self.num_classes > 0:
      out['probe_logits'] = LinearHead(self.num_classes, name='probe')(
          jax.lax.stop_gradient(out['h']))
    return out


def resolve_architecture(
    model_cfg: ml_collections.ConfigDict) -> tuple[tuple[int, ...], str]:
  """(stage_sizes, block) from depth / stage_sizes / block (see config_defaults)."""
  depth, block = model_cfg.depth, model_cfg.block
  stage_sizes = tuple(int(n) for n in model_cfg.stage_sizes)
  if depth and depth not in DEPTHS:
    raise ValueError(f'config.model.depth={depth} is not valid; choose one of '
                     f'{[0] + sorted(DEPTHS)}.')
  if not stage_sizes:
    if not depth:
      raise ValueError('config.model.depth=0 needs config.model.stage_sizes, '
                       'e.g. --config.model.stage_sizes="(1, 1)".')
    stage_sizes = DEPTHS[depth][0]
  if not block:
    if not depth:
      raise ValueError("config.model.depth=0 needs config.model.block "
                       "('basic' | 'bottleneck').")
    block = DEPTHS[depth][1]
  if block not in ('basic', 'bottleneck'):
    raise ValueError(f"config.model.block={block!r}; choose 'basic' or 'bottleneck'.")
  return stage_sizes, block


def _dtype(model_cfg: ml_collections.ConfigDict) -> Any:
  if model_cfg.dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={model_cfg.dtype!r}; choose one of '
                     f'{tuple(_DTYPES)}.')
  return _DTYPES[model_cfg.dtype]


def _conv_cls(model_cfg: ml_collections.ConfigDict, conv_cls: Any) -> Any:
  """An explicit conv class wins; else config.model.conv (default 'auto')."""
  if conv_cls is not None:
    return conv_cls
  from contrastive_jax.models import cpu_conv  # pylint: disable=g-import-not-at-top
  return cpu_conv.conv_cls_for_backend(model_cfg.get('conv', 'auto'),
                                       xla_wgrad_below=model_cfg.get('conv_xla_wgrad_below', 0))


def build_encoder(model_cfg: ml_collections.ConfigDict,
                  conv_cls: Any = None) -> ResNet:
  """The ResNet described by config.model (float32 params, cfg.dtype compute).

  The convolution is XLA's on accelerators; on CPU (config.model.conv='auto')
  it is cpu_conv.Conv, whose weight gradient avoids XLA:CPU's slow lowering.
  Parameters are identical either way, so checkpoints move freely.
  """
  conv_cls = _conv_cls(model_cfg, conv_cls)
  stage_sizes, block = resolve_architecture(model_cfg)
  return ResNet(
      stage_sizes=stage_sizes, block=block, base_width=model_cfg.base_width,
      width_multiplier=model_cfg.width_multiplier, stem=model_cfg.stem,
      stem_stride=model_cfg.get('stem_stride', 1), sk_ratio=model_cfg.sk_ratio,
      pool=model_cfg.get('pool', 'avg'), dtype=_dtype(model_cfg),
      bn_momentum=model_cfg.bn_momentum, bn_epsilon=model_cfg.bn_epsilon,
      conv_cls=conv_cls)


def encoder_width(model_cfg: ml_collections.ConfigDict, image_size: int | None = None) -> int:
  """Width of h for config.model (2048 for ResNet-50 1x).

  With pool='flatten' h is the whole last feature map, so its width depends
  on the input side: pass `image_size`.
  """
  if model_cfg.get('pool', 'avg') == 'avg':
    stage_sizes, block = resolve_architecture(model_cfg)
    return feature_width(stage_sizes, block, model_cfg.base_width,
                         model_cfg.width_multiplier)
  if not image_size:
    raise ValueError(f"config.model.pool={model_cfg.pool!r} makes h's width depend on the "
                     'input size; pass image_size (config.data.image_size).')
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  h, _ = jax.eval_shape(lambda x: build_encoder(model_cfg).init_with_output(
      jax.random.PRNGKey(0), x, train=False), x)
  return int(h.shape[-1])


def build_model(model_cfg: ml_collections.ConfigDict, num_classes: int,
                conv_cls: Any = None) -> ContrastiveModel:
  """Encoder + projection head from config.model; num_classes > 0 adds the probe."""
  head = ProjectionHead(
      num_layers=model_cfg.num_proj_layers, out_dim=model_cfg.proj_dim,
      hidden_dim=model_cfg.proj_hidden_dim, dtype=_dtype(model_cfg),
      bn_momentum=model_cfg.bn_momentum, bn_epsilon=model_cfg.bn_epsilon)
  return ContrastiveModel(encoder=build_encoder(model_cfg, conv_cls), head=head,
                          num_classes=num_classes)


def tiny_model_config() -> ml_collections.ConfigDict:
  """A two-stage 8-wide ResNet for tests and CPU demos (h width 16)."""
  cfg = config_defaults.model_defaults()
  cfg.update(dict(depth=0, stage_sizes=(1, 1), block='basic', base_width=8,
                  stem='cifar', num_proj_layers=2, proj_dim=16))
  return cfg


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree (arrays or jax.ShapeDtypeStruct leaves)."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))
