"""Projection head (SimCLR v1/v2) and linear classification head.

As in google-research/simclr tf2/model.py: Dense kernels start N(0, 0.01);
projection layers are Dense (no bias) + BN, ReLU on all but the last, and the
last BN has no beta (a shift before L2 normalisation would only add a constant
direction to every z).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

dense_kernel_init = nn.initializers.normal(stddev=0.01)


class ProjectionHead(nn.Module):
  """`__call__(h, train)` -> [h, out_1, ..., out_L] (L = num_layers).

  Layers 1..L-1 have `hidden_dim` units (0 = the width of h, as in SimCLR);
  layer L has `out_dim`. v2 fine-tunes from out_1, hence the whole list.
  Outputs are in the compute dtype; ContrastiveModel casts them to float32.
  `keep` = k > 0 builds only layers 1..k (same names and per-layer choices, so
  a pretrained head's first k layers restore as they are): the fine-tuning
  classifier's input (models/classifier.py).
  """
  num_layers: int = 2
  out_dim: int = 128
  hidden_dim: int = 0
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  keep: int = 0

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> list[jax.Array]:
    outputs = [h]
    x = h
    for j in range(self.keep or self.num_layers):
      last = j == self.num_layers - 1
      units = self.out_dim if last else (self.hidden_dim or h.shape[-1])
      x = nn.Dense(units, use_bias=False, kernel_init=dense_kernel_init,
                   dtype=self.dtype, param_dtype=jnp.float32, name=f'dense{j + 1}')(x)
      # use_running_average at call time: the classifier's freezing
      # interceptor overrides it.
      x = nn.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                       use_bias=not last, dtype=self.dtype, param_dtype=jnp.float32,
                       name=f'bn{j + 1}')(x, use_running_average=not train)
      if not last:
        x = nn.relu(x)
      outputs.append(x)
    return outputs


class LinearHead(nn.Module):
  """Dense with bias -> float32 logits (probe, fine-tune and eval classifier).

  zero_init=True starts from zero logits (useful when fine-tuning a head on
  top of a trained encoder); otherwise N(0, 0.01) as in TF SimCLR.
  """
  num_classes: int
  zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BN/dropout; accepted so every head is called the same way
    init = nn.initializers.zeros if self.zero_init else dense_kernel_init
    logits = nn.Dense(self.num_classes, use_bias=True, kernel_init=init,
                      dtype=self.dtype, param_dtype=jnp.float32, name='dense')(x)
    return logits.astype(jnp.float32)
