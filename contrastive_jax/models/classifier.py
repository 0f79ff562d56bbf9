"""A linear classifier on a (pretrained) encoder, for fine-tuning and distillation.

  model = build_classifier(config.model, num_classes, ft_proj_selector=1,
                           fine_tune_after_block=-1)
  logits = model.apply(variables, x, train=True, mutable=['batch_stats'])

Parameter layout mirrors `ContrastiveModel`, so a pretraining checkpoint's
subtrees drop in unchanged:
  'encoder'     the encoder config.model names
  'head'        the first k layers of the projection head (SimCLR v2 fine-tunes
                from the first one: `ft_proj_selector`), absent when k = 0
  'classifier'  LinearHead(num_classes)

Freezing (`fine_tune_after_block`, as in TF SimCLR): -1 trains everything; k
freezes the encoder's freeze groups 0..k (each encoder names its groups: for a
ResNet 0 is the stem and k stage k); the encoder's `freeze_all` value (4 for a
ResNet) freezes everything but the classifier (linear evaluation). A frozen module runs its Dropout as the identity and its BatchNorm in
inference mode (running statistics, which are then never updated) and its
output is wrapped in stop_gradient, so no gradient is computed for it. Its
parameters must also get no update from the optimizer: `frozen_labels` gives
the labels for `optax.multi_transform` (see contrastive_jax.classification).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax.models import build_encoder, build_head, encoder_width, encoders
from contrastive_jax.models.heads import LinearHead

FreezeLevel = Callable[[str], Optional[int]]
# A fine_tune_after_block value that trains only the classifier whatever the
# encoder: any value at or above the encoder's freeze_all does (4 for a ResNet).
FREEZE_ALL = 99


def freeze_all_level(model_cfg: ml_collections.ConfigDict) -> int:
  """The fine_tune_after_block value that trains only the classifier."""
  return encoders.spec(model_cfg).freeze_all


def is_frozen(names: Sequence[str], fine_tune_after_block: int,
              freeze_level: FreezeLevel, freeze_all: int) -> bool:
  """Whether the module / parameter at path `names` (from the Classifier's root,
  e.g. ('encoder', 'stage2_block1', 'conv1', 'kernel')) is frozen; the
  encoder's `freeze_level` names the group of each of its submodules."""
  if fine_tune_after_block < 0 or not names:
    return False
  top = names[0]
  if fine_tune_after_block >= freeze_all:
    return top in ('encoder', 'head')
  if top != 'encoder' or len(names) < 2:
    return False
  level = freeze_level(names[1])
  return level is not None and level <= fine_tune_after_block


def param_path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """A jax tree path (DictKey / GetAttrKey entries) as plain names."""
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def frozen_labels(params: Any, fine_tune_after_block: int,
                  model_cfg: ml_collections.ConfigDict) -> Any:
  """'frozen' / 'trained' per parameter leaf, for optax.multi_transform."""
  spec = encoders.spec(model_cfg)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'frozen' if is_frozen(param_path_names(path), fine_tune_after_block,
                                            spec.freeze_level, spec.freeze_all)
      else 'trained', params)


def _freeze_interceptor(root: tuple[str, ...], fine_tune_after_block: int,
                        freeze_level: FreezeLevel, freeze_all: int,
                        next_fun, args, kwargs, context):
  """Runs frozen modules in inference mode and cuts the gradient at their output."""
  if context.method_name != '__call__':
    return next_fun(*args, **kwargs)
  path = tuple(context.module.path)
  if path[:len(root)] != root or not is_frozen(path[len(root):], fine_tune_after_block,
                                               freeze_level, freeze_all):
    return next_fun(*args, **kwargs)
  if isinstance(context.module, nn.BatchNorm):
    if context.module.use_running_average is not None:
      raise ValueError(
          f'BatchNorm at {"/".join(path)} sets use_running_average as an attribute; '
          'freezing (config.fine_tune_after_block) needs it passed at call time.')
    args, kwargs = args[:1], dict(kwargs, use_running_average=True)
  if isinstance(context.module, nn.Dropout):
    # A frozen layer passes its input through (linear evaluation of a text
    # encoder sees the pretrained features, not dropped-out ones).
    args, kwargs = args[:1], dict(kwargs, deterministic=True)
  out = next_fun(*args, **kwargs)
  return jax.tree.map(jax.lax.stop_gradient, out)


class Classifier(nn.Module):
  """encoder -> [projection layers] -> LinearHead; `__call__(x, train)` -> logits
  [N, num_classes] float32. See the module docstring for freezing."""
  encoder: nn.Module
  head: Optional[nn.Module]
  num_classes: int
  zero_init: bool = True
  fine_tune_after_block: int = -1
  freeze_level: FreezeLevel = lambda name: None   # the encoder's (EncoderSpec.freeze_level)
  freeze_all: int = 1

  def features(self, x: jax.Array, train: bool) -> jax.Array:
    """The classifier's input: h, or the selected projection layer's output."""
    if train and self.fine_tune_after_block >= 0:
      interceptor = functools.partial(_freeze_interceptor, tuple(self.path),
                                      self.fine_tune_after_block, self.freeze_level,
                                      self.freeze_all)
      with nn.intercept_methods(interceptor):
        return self._features(x, train)
    return self._features(x, train)

  def _features(self, x: jax.Array, train: bool) -> jax.Array:
    h = self.encoder(x, train=train)
    if self.head is not None:
      h = self.head(h, train=train)[-1]  # the last kept projection layer
    return h.astype(jnp.float32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return LinearHead(self.num_classes, zero_init=self.zero_init,
                      name='classifier')(self.features(x, train))


def kept_projection_layers(model_cfg: ml_collections.ConfigDict, ft_proj_selector: int) -> int:
  """How many projection layers sit below the classifier (-1 = all of them)."""
  num_layers = int(model_cfg.num_proj_layers)
  keep = num_layers if ft_proj_selector < 0 else int(ft_proj_selector)
  if keep > num_layers:
    raise ValueError(f'config.ft_proj_selector={ft_proj_selector} exceeds the '
                     f'{num_layers} projection layers of config.model.num_proj_layers; '
                     'use 0 (from h), 1..num_proj_layers, or -1 (the last).')
  return keep


def feature_width(model_cfg: ml_collections.ConfigDict, ft_proj_selector: int,
                  image_size: int | None = None) -> int:
  """Width of the classifier's input for this model config and selector
  (image_size: needed when h's width depends on the input, see encoder_width)."""
  keep = kept_projection_layers(model_cfg, ft_proj_selector)
  if keep == model_cfg.num_proj_layers:
    return int(model_cfg.proj_dim)
  if keep > 0 and model_cfg.proj_hidden_dim:
    return int(model_cfg.proj_hidden_dim)
  return encoder_width(model_cfg, image_size)


def check_fine_tune_after_block(model_cfg: ml_collections.ConfigDict, value: int) -> None:
  top = freeze_all_level(model_cfg)
  if value < -1:
    raise ValueError(f'config.fine_tune_after_block={value}; choose -1 (train all), 0..'
                     f'{top - 1} (freeze the encoder up to that group: for a ResNet 0 is the '
                     f'stem, k the stem and stages 1..k) or {top} and above (only the '
                     'classifier).')


def build_classifier(model_cfg: ml_collections.ConfigDict, num_classes: int, *,
                     ft_proj_selector: int = 0, zero_init: bool = True,
                     fine_tune_after_block: int = -1, conv_cls: Any = None,
                     kernels_cfg: Optional[ml_collections.ConfigDict] = None) -> Classifier:
  """The Classifier for config.model (encoder + kept projection layers + head)."""
  if num_classes <= 0:
    raise ValueError(f'A classifier needs labelled data; got num_classes={num_classes}.')
  check_fine_tune_after_block(model_cfg, fine_tune_after_block)
  keep = kept_projection_layers(model_cfg, ft_proj_selector)
  spec = encoders.spec(model_cfg)
  return Classifier(encoder=build_encoder(model_cfg, conv_cls, kernels_cfg),
                    head=build_head(model_cfg, keep) if keep else None,
                    num_classes=num_classes, zero_init=zero_init,
                    fine_tune_after_block=fine_tune_after_block,
                    freeze_level=spec.freeze_level, freeze_all=spec.freeze_all)
