"""The encoder registry: `config.model.name` -> how to build that encoder.

An encoder plug-in gives:
  - `defaults()`: its config section, `config.model.<name>` (architecture keys
    only; the keys every encoder shares sit in `config.model` itself: dtype,
    BatchNorm momentum / epsilon, the projection head);
  - `build(model_cfg, conv_cls)`: a linen module `__call__(x, train) -> h [N, D]`;
  - `freeze_level(module_name)`: the freeze group of one of its top-level
    submodules for `fine_tune_after_block` (0 = the input layers, k = the
    k-th stage / layer; None = never frozen below `freeze_all`);
    `freeze_all`: the value that freezes the whole encoder and the head;
  - `arch_keys`: the keys of its section that define the parameters (a
    fine-tune copies them from the pretraining run; the others, such as
    speed choices, stay the fine-tune's own);
  - `validate(section)`: raises ValueError naming the key at fault.

Registering a new one (a module of its own, imported before the binary runs):
  ENCODERS.register(EncoderSpec(name='mine', defaults=..., build=..., ...))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from contrastive_jax.registry import Registry

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  name: str
  defaults: Callable[[], ml_collections.ConfigDict]
  build: Callable[[ml_collections.ConfigDict, Any], nn.Module]
  freeze_level: Callable[[str], Optional[int]] = lambda name: None
  freeze_all: int = 1
  arch_keys: tuple[str, ...] = ()
  validate: Callable[[ml_collections.ConfigDict], None] = lambda section: None
  # h's width from the config alone, or None when it needs the input (then a
  # trace of the encoder on the modality's dummy input answers).
  width: Callable[[ml_collections.ConfigDict], Optional[int]] = lambda model_cfg: None


ENCODERS: Registry[EncoderSpec] = Registry('encoder', 'config.model.name')


def spec(model_cfg: ml_collections.ConfigDict) -> EncoderSpec:
  return ENCODERS.get(model_cfg.get('name', 'resnet'))


def section(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model.<name>: the encoder's own keys (its defaults when absent)."""
  s = spec(model_cfg)
  stray = [k for k in s.arch_keys if k in model_cfg]
  if stray:
    raise ValueError(f'config.model.{stray[0]} is a key of the {s.name!r} encoder: set '
                     f'config.model.{s.name}.{stray[0]} (config_migration.migrate moves '
                     'keys of the older flat layout for you).')
  found = model_cfg.get(s.name)
  return found if found is not None else s.defaults()


def compute_dtype(model_cfg: ml_collections.ConfigDict) -> Any:
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f'config.model.dtype={model_cfg.dtype!r}; choose one of '
                     f'{tuple(DTYPES)}.')
  return DTYPES[model_cfg.dtype]
