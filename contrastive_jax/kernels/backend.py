"""Which convolution class the models use: the one place it is chosen.

`conv_cls(config.kernels)` returns the class a ResNet gets as `conv_cls`:
XLA's own `nn.Conv` on accelerators (GPU/TPU convolutions are already
well tuned), and on the CPU backend oneDNN's convolution (onednn_conv.Conv)
or, where that cannot be used, the convolution with our own weight gradient
(cpu_conv.Conv). Every one of them is named `Conv` and has nn.Conv's
parameters, so the choice never changes the parameter tree or the function
a model computes (up to float rounding), and a checkpoint moves freely
between them.

This module imports cpu_conv and onednn_conv; neither imports it, and
cpu_conv imports neither of them, so the package has no import cycle.
"""

from __future__ import annotations

import functools
import logging
import operator
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections

from contrastive_jax.kernels import cpu_conv, onednn_conv

CONV_POLICIES = ('auto', 'xla', 'fast', 'onednn')


def kernels_defaults() -> ml_collections.ConfigDict:
  """The defaults of the top-level `config.kernels` section."""
  cfg = ml_collections.ConfigDict()
  # These keys are about speed only: they choose how convolutions run on CPU
  # and never change the parameters (every choice has nn.Conv's parameter
  # tree and computes the same function, up to float rounding), so a
  # checkpoint moves freely between them, and a run may be resumed or
  # evaluated under another value.
  #   conv: 'auto' = on the CPU backend, oneDNN's convolution (kernels/
  #     onednn_conv.py) with one device when it is available, else
  #     kernels/cpu_conv.py's; XLA's nn.Conv on GPU/TPU. 'xla' = always
  #     nn.Conv; 'fast' = always cpu_conv.Conv; 'onednn' = always
  #     onednn_conv.Conv (an error saying what is missing when it cannot be
  #     built).
  #   conv_xla_wgrad_below: for cpu_conv.Conv only, XLA's own weight gradient
  #     for kernels larger than 1x1 on input maps under this many px on both
  #     sides (0 = never; cpu_conv.conv_general_dilated says when it helps).
  cfg.conv = 'auto'
  cfg.conv_xla_wgrad_below = 0
  return cfg


def conv_cls_for_backend(policy: str = 'auto', backend: str | None = None,
                         xla_wgrad_below: int = 0) -> Callable[..., nn.Module]:
  """The convolution class to pass as ResNet(conv_cls=...).

  policy: 'auto' -> on the CPU backend, onednn_conv.Conv when the process has
          one device and oneDNN is available (it is faster than
          cpu_conv.Conv), else cpu_conv.Conv; nn.Conv elsewhere (GPU/TPU
          keep XLA's native, well-tuned convolution). 'xla' -> always
          nn.Conv; 'fast' -> always cpu_conv.Conv; 'onednn' -> always
          onednn_conv.Conv (an error naming what is missing when it is not
          available).
  backend: defaults to jax.default_backend().
  xla_wgrad_below: for cpu_conv.Conv, XLA's weight gradient on maps under
          this many px (see cpu_conv.conv_general_dilated); 0 = ours
          everywhere. Then a functools.partial of cpu_conv.Conv, still the
          class Conv when called, so parameter names stay 'Conv_0', ...
  """
  if policy == 'xla':
    return nn.Conv
  if policy not in CONV_POLICIES:
    raise ValueError(
        f"config.kernels.conv must be 'auto', 'xla', 'fast' or 'onednn', got {policy!r}")
  if policy == 'auto' and (backend or jax.default_backend()) != 'cpu':
    return nn.Conv
  if policy == 'onednn' or (policy == 'auto' and jax.device_count() == 1):
    # A custom call cannot be split by XLA's SPMD partitioner: with several
    # devices 'auto' keeps cpu_conv.Conv (see onednn_conv's doc).
    if onednn_conv.available():
      return onednn_conv.Conv
    if policy == 'onednn':
      raise RuntimeError(f"config.kernels.conv='onednn' but oneDNN convolutions are not "
                         f"available: {onednn_conv.unavailable_reason()}. Use "
                         f"config.kernels.conv='auto' to fall back to cpu_conv.Conv.")
    logging.getLogger(__name__).warning(
        'oneDNN convolutions unavailable, using cpu_conv.Conv (slower on CPU): %s',
        onednn_conv.unavailable_reason())
  if not xla_wgrad_below:
    return cpu_conv.Conv
  return functools.partial(cpu_conv.Conv, conv_general_dilated=functools.partial(
      cpu_conv.conv_general_dilated, xla_wgrad_below=int(xla_wgrad_below)))


def _xla_wgrad_below(value: Any) -> int:
  try:
    if isinstance(value, bool):
      raise TypeError
    below = operator.index(value)
  except TypeError:
    below = -1
  if below < 0:
    raise ValueError('config.kernels.conv_xla_wgrad_below must be an int >= 0 '
                     f'(px; 0 = never), got {value!r}')
  return below


def conv_cls(kernels_cfg: ml_collections.ConfigDict | None = None) -> Callable[..., nn.Module]:
  """The convolution class for ResNet(conv_cls=...), from `config.kernels`.

  kernels_cfg: the `config.kernels` section (keys `conv` and
  `conv_xla_wgrad_below`, see kernels_defaults()); None, or a missing key,
  means its default. Returns what conv_cls_for_backend(conv,
  xla_wgrad_below=conv_xla_wgrad_below) returns on the current backend: a
  flax Conv class, or (conv_xla_wgrad_below > 0 with cpu_conv's
  convolution) a functools.partial of one.
  """
  defaults = kernels_defaults()
  cfg = defaults if kernels_cfg is None else kernels_cfg
  policy = cfg.get('conv', defaults.conv)
  below = _xla_wgrad_below(cfg.get('conv_xla_wgrad_below', defaults.conv_xla_wgrad_below))
  return conv_cls_for_backend(policy, xla_wgrad_below=below)
