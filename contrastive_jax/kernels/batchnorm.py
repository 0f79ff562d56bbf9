"""BatchNorm whose training-mode gradient needs only sums over x and dy.

Same module, parameters, statistics and forward function as `flax.linen
.BatchNorm` with its defaults (fast variance E[x^2] - E[x]^2, clipped at 0;
float32 statistics; running averages with `momentum`), so checkpoints and
models/classifier.py's frozen-BN handling are unchanged. Only the backward pass
of the batch-statistics path differs in how it is written.

Why: autodiff of flax's `(x - mean) * rsqrt(var + eps) * scale + bias`
keeps `x - mean` as a residual. On XLA:CPU (jaxlib >= 0.10) the batch
reductions run as YNNPACK fusions, which fuse an elementwise multiply into
a reduction but not a broadcast, so that residual is written out as a
full-size tensor in the forward pass and read again in the backward pass
(and a second such tensor, dy * scale * rstd, in the backward pass). In a
ResNet that is dozens of extra passes over activation-sized tensors per
step, and more temporary memory to page-fault in every step. Written
with the sums S(dy) and S(dy * x), every reduction is a plain or
multiply-reduce over x and dy, and dx is one elementwise pass:

  x_hat = (x - mean) * rstd,  a = scale * rstd
  dscale = S(dy * x_hat) = rstd * (S(dy * x) - mean * S(dy)),  dbias = S(dy)
  dx = a * dy - a/n * (dbias + x_hat * dscale)   (+ the terms of the mean
       and var outputs' own cotangents, so the function is exact as a whole)

The cancellation in S(dy * x) - mean * S(dy) is the same one the forward's
fast variance already accepts.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes
from flax.linen import module as flax_module


def _sum(x: jax.Array) -> jax.Array:
  """Sum over every axis but the last (the feature axis)."""
  return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch-statistics BN over all axes but the last.

  -> (y, mean, var) in float32 (float64 for a float64 x); mean and var are
  [C], var the biased batch variance that flax's running average uses.
  """
  return _forward(x, scale, bias, epsilon)[0]


def _compute_dtype(x: jax.Array) -> Any:
  # As flax: statistics and arithmetic in at least float32.
  return jnp.promote_types(x.dtype, jnp.float32)


def _forward(x, scale, bias, epsilon):
  xf = x.astype(_compute_dtype(x))
  n = x.size // x.shape[-1]
  mean = _sum(xf) / n
  var = jnp.maximum(0.0, _sum(xf * xf) / n - mean * mean)
  rstd = jax.lax.rsqrt(var + epsilon)
  a = scale.astype(xf.dtype) * rstd
  y = xf * a + (bias.astype(xf.dtype) - mean * a)
  return (y, mean, var), (x, mean, rstd, scale, bias)


def _bwd(epsilon, res, cotangents):
  del epsilon
  x, mean, rstd, scale, bias = res   # bias only for its dtype
  g, g_mean, g_var = cotangents
  xf = x.astype(_compute_dtype(x))
  g = g.astype(xf.dtype)
  a = scale.astype(xf.dtype) * rstd
  n = x.size // x.shape[-1]
  sum_g = _sum(g)
  sum_g_xhat = rstd * (_sum(g * xf) - mean * sum_g)
  # dx = a*g + c*x + d, with c and d per channel.
  c = 2.0 * g_var / n - a * rstd * sum_g_xhat / n
  d = g_mean / n - a * sum_g / n - c * mean
  dx = (g * a + xf * c + d).astype(x.dtype)
  return dx, sum_g_xhat.astype(scale.dtype), sum_g.astype(bias.dtype)


batch_norm_train.defvjp(_forward, _bwd)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` with the sum-based training gradient of `batch_norm_train`.

  Takes the batch-statistics path only in its common case (feature axis
  last, no mask, no `axis_name`, fast variance, float32 reductions); any
  other setting, and the running-average path, is flax's own code.
  """

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    use_running_average = flax_module.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    axis = self.axis if isinstance(self.axis, int) else None
    if (use_running_average or mask is not None or self.axis_name is not None
        or axis not in (-1, x.ndim - 1) or not self.use_fast_variance
        or not self.force_float32_reductions):
      # flax merges the flag itself and refuses it twice.
      at_call = use_running_average if self.use_running_average is None else None
      return super().__call__(x, at_call, mask=mask)

    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = self.variable('batch_stats', 'var',
                           lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = (self.param('scale', self.scale_init, (features,), self.param_dtype)
             if self.use_scale else jnp.ones((features,), jnp.float32))
    bias = (self.param('bias', self.bias_init, (features,), self.param_dtype)
            if self.use_bias else jnp.zeros((features,), jnp.float32))
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    # flax's output dtype: `dtype`, else what x and the parameters promote to.
    args: list[Any] = [x] + ([scale] if self.use_scale else []) + (
        [bias] if self.use_bias else [])
    return y.astype(flax_dtypes.canonicalize_dtype(*args, dtype=self.dtype))
