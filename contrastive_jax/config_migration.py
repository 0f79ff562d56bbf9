"""Configs and workdirs written before the plug-in layout keep working.

Earlier versions had `config.mode` where there is now `config.method`, the
method's keys at the top (`temperature`, `base_temperature`,
`loss_block_size`), the ResNet's keys directly in `config.model`
(`config.model.depth`, ...) and the CPU convolution choice in
`config.model.conv`. `migrate(config)` returns a copy in today's layout,
whether the old keys come from a workdir's config.json, a user's own config
file built on today's defaults, or a test; every binary and `read_config`
call it, so an old run resumes, evaluates, fine-tunes and loads unchanged.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging

from contrastive_jax import methods, models
from contrastive_jax.kernels import backend as kernels_backend

# Old top-level keys of the method, now in config.<method>.
_METHOD_KEYS = ('temperature', 'base_temperature', 'loss_block_size')
# Old config.model keys, now in config.kernels.
_KERNEL_KEYS = ('conv', 'conv_xla_wgrad_below')
_OLD_ENCODER = 'resnet'   # every config.model was a ResNet before the encoder registry


def renamed(key: str) -> str | None:
  """Where an old dotted key (as in --config.KEY=...) lives now, or None."""
  if key == 'mode':
    return 'method'
  if key in _METHOD_KEYS:
    return f'<method>.{key} (e.g. simclr.{key})'
  head, _, leaf = key.partition('.')
  if head == 'model' and leaf in models.ENCODERS.get(_OLD_ENCODER).arch_keys:
    return f'model.{_OLD_ENCODER}.{leaf}'
  if head == 'model' and leaf in _KERNEL_KEYS:
    return f'kernels.{leaf}'
  return None


def migrate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` in today's layout (unchanged when already so)."""
  d = config.to_dict()
  moved: list[str] = []

  if 'mode' in d:
    d['method'] = d.pop('mode')
    moved.append('mode -> method')
  if 'method' in d:
    name = d['method']
    cls = methods.METHODS.get(name)
    section = dict(cls.defaults().to_dict(), **d.get(name, {}))
    for key in _METHOD_KEYS:
      if key in d:
        value = d.pop(key)
        if key in section:
          section[key] = value
          moved.append(f'{key} -> {name}.{key}')
    d[name] = section

  model = d.get('model')
  if isinstance(model, dict):
    resnet_keys = models.ENCODERS.get(_OLD_ENCODER).arch_keys
    if any(k in model for k in resnet_keys):
      model.setdefault('name', _OLD_ENCODER)
      section = dict(models.ENCODERS.get(_OLD_ENCODER).defaults().to_dict(),
                     **model.get(_OLD_ENCODER, {}))
      for key in resnet_keys:
        if key in model:
          section[key] = model.pop(key)
          moved.append(f'model.{key} -> model.{_OLD_ENCODER}.{key}')
      model[_OLD_ENCODER] = section
    model.setdefault('name', _OLD_ENCODER)
    kernels = dict(kernels_backend.kernels_defaults().to_dict(), **d.get('kernels', {}))
    for key in _KERNEL_KEYS:
      if key in model:
        kernels[key] = model.pop(key)
        moved.append(f'model.{key} -> kernels.{key}')
    if 'kernels' in d or moved:
      d['kernels'] = kernels

  if not moved:
    return ml_collections.ConfigDict(config.to_dict())
  logging.info('Config keys moved to the current layout: %s.', ', '.join(moved))
  return ml_collections.ConfigDict(_tuples(d))


def _tuples(d: Any) -> Any:
  """JSON lists back to tuples (stage_sizes)."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(d)
  return d
