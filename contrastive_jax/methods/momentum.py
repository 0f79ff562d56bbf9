"""What the momentum methods share, written once: the momentum (EMA) network,
its momentum schedule, the FIFO queue of keys, and the predictor MLP.

Momentum network (MoCo, He et al. 2019; BYOL, Grill et al. 2020): a copy of
the whole online network (encoder, projection head, and whatever else the
model holds: the predictor and probe are copied too, unused) whose
parameters follow the online ones after every step,

    target = m * target + (1 - m) * online,

with the online parameters after that step's optimizer update. The update
after step k (0-based, `StepContext.step`) uses m(k):

    constant:  m(k) = m_base
    cosine:    m(k) = 1 - (1 - m_base) * (cos(pi * k / K) + 1) / 2   (K = total steps)

(BYOL's `target_ema(global_step, base_ema, max_steps)`; m(K) = 1). In MoCo's
code the key encoder is updated with the current online parameters before
the keys of step k are computed; here the update after step k - 1 uses the
same parameters (the online ones after step k - 1's update), so the keys of
step k see the same momentum parameters, and the first step's momentum
network is the online one (MoCo copies it at start; BYOL's code initialises
the target from another seed, which its authors report makes no difference).

BatchNorm statistics of the momentum network: during training it runs in
training mode and normalises with the statistics of its own batch, as in
the official code (BYOL's target network is applied with is_training=True;
MoCo's key encoder is in train mode). Its running statistics only matter when
the momentum encoder is exported (`export.load_encoder(..., network='momentum')`).
The official codes keep the ones its own forward passes accumulate; the
step's `StepContext.apply` does not return them, so here they are an EMA of
the online network's running statistics with the same m as the parameters:
the running statistics are smooth functions of the parameters, so to first
order the statistics of the averaged parameters are the average of the
statistics, and they stay frozen with the parameters when m reaches 1 (a copy
would describe the online parameters instead, up to 1 / (1 - m) steps newer).

Queue (MoCo): `size` L2-normalised keys [size, d] and a pointer; each step's
keys (the global batch's, gathered from every device: `update_extra` sees the
keys as global arrays, and the extra state is replicated, so every device
holds the same queue) replace the oldest ones, in batch order, wrapping
around. As in MoCo's code it starts as random unit vectors (seeded), the size
is a multiple of the global batch, and the keys of a step join the queue after
that step's loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax.methods.base import Method, StepContext
from contrastive_jax.models import encoders

SCHEDULES = ('constant', 'cosine')


# --- Momentum network -----------------------------------------------------------

def momentum_at(step: Any, total_steps: int, base: float, schedule: str) -> jax.Array:
  """m(step): `base` (constant) or BYOL's cosine from `base` at step 0 to 1 at
  `total_steps` (float32 scalar; steps past the end stay at 1)."""
  if schedule == 'constant' or total_steps <= 0:
    return jnp.asarray(base, jnp.float32)
  if schedule != 'cosine':
    raise ValueError(f'momentum schedule {schedule!r}; choose one of {SCHEDULES}.')
  k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps) / total_steps
  return (1.0 - (1.0 - base) * (jnp.cos(jnp.pi * k) + 1.0) / 2.0).astype(jnp.float32)


def ema(target: Any, online: Any, m: jax.Array) -> Any:
  """target * m + online * (1 - m), leaf by leaf (in each leaf's dtype)."""
  return jax.tree.map(lambda t, o: (m * t + (1.0 - m) * o).astype(t.dtype), target, online)


def init_network(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The momentum network at step 0: a copy of the online one."""
  return {'params': params, 'batch_stats': batch_stats}


def update_network(network: dict[str, Any], params: Any, batch_stats: Any,
                   m: jax.Array) -> dict[str, Any]:
  """EMA of the online parameters and (see the module docstring) BN statistics."""
  return {'params': ema(network['params'], params, m),
          'batch_stats': ema(network['batch_stats'], batch_stats, m)}


def apply_network(ctx: Any, network: dict[str, Any], view: int | None = None,
                  num_views: int = 2) -> dict[str, jax.Array]:
  """The momentum network's training-mode outputs on the step's views
  (`ctx.x`, example-major), without gradient; `view` = v: that view only
  ([N, ...] outputs), None: every view ([N, num_views, ...])."""
  x = ctx.x
  n = x.shape[0] // num_views
  if view is not None:
    x = x.reshape((n, num_views) + x.shape[1:])[:, view]
  out = ctx.apply({'params': network['params'], 'batch_stats': network['batch_stats']}, x)
  out = {k: out[k] for k in ('z', 'h') if k in out}
  if view is None:
    out = {k: v.reshape((n, num_views) + v.shape[1:]) for k, v in out.items()}
  return jax.lax.stop_gradient(out)


def validate_momentum(cfg: ml_collections.ConfigDict, section: str) -> None:
  """config.<section>.momentum in [0, 1] and momentum_schedule a known one."""
  if not 0.0 <= cfg.momentum <= 1.0:
    raise ValueError(f'config.{section}.momentum={cfg.momentum} must be in [0, 1].')
  if cfg.momentum_schedule not in SCHEDULES:
    raise ValueError(f'config.{section}.momentum_schedule={cfg.momentum_schedule!r} is not '
                     f'valid; choose one of {SCHEDULES}.')


# --- Queue of keys ----------------------------------------------------------------

def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def init_queue(size: int, dim: int, seed: int) -> dict[str, jax.Array]:
  """{'keys': [size, dim] random unit vectors, 'ptr': 0} (MoCo's start); the
  stream is `seed`'s, folded apart from the one that initialises the model."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x51ee)
  keys = jax.random.normal(rng, (size, dim), jnp.float32)
  return {'keys': l2_normalize(keys), 'ptr': jnp.zeros((), jnp.int32)}


def enqueue(queue: dict[str, jax.Array], keys: jax.Array) -> dict[str, jax.Array]:
  """The queue with `keys` [n, d] (n <= size) written from the pointer on, in
  order, wrapping around; the pointer moves by n."""
  size, n = queue['keys'].shape[0], keys.shape[0]
  if n > size:
    raise ValueError(f'{n} keys do not fit a queue of {size}.')
  rows = (queue['ptr'] + jnp.arange(n)) % size
  return {'keys': queue['keys'].at[rows].set(keys.astype(queue['keys'].dtype)),
          'ptr': ((queue['ptr'] + n) % size).astype(jnp.int32)}


def validate_queue_size(size: int, key: str, batch_size: int) -> None:
  """A queue size must be a positive multiple of the global batch (MoCo's
  `K % batch_size == 0`): every step then replaces whole batches of keys."""
  if size <= 0 or size % batch_size:
    raise ValueError(f'{key}={size} must be a positive multiple of the global batch size '
                     f'config.batch_size={batch_size} (e.g. '
                     f'{max(-(-max(size, 1) // batch_size), 1) * batch_size}).')


# --- Predictor ----------------------------------------------------------------------

class Predictor(nn.Module):
  """BYOL / MoCo v3 predictor, `(z, train) -> p`: Dense(hidden) -> BN -> ReLU ->
  Dense(out) [-> BN without shift or scale when `last_bn` (MoCo v3)].
  BYOL's has an output bias and no last BN; MoCo v3's no biases and a last BN.
  The hidden Dense has no bias in either: BYOL's has one, but the BN after it
  cancels it, so its gradient is zero up to rounding (a bias that only drifts
  on float noise)."""
  hidden_dim: int
  out_dim: int
  last_bn: bool = False
  use_bias: bool = True
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    bn = lambda name, affine: nn.BatchNorm(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, use_bias=affine, use_scale=affine,
        dtype=self.dtype, param_dtype=jnp.float32, name=name)
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype,
                 param_dtype=jnp.float32, name='dense1')(z.astype(self.dtype))
    x = nn.relu(bn('bn1', True)(x, use_running_average=not train))
    x = nn.Dense(self.out_dim, use_bias=self.use_bias, dtype=self.dtype,
                 param_dtype=jnp.float32, name='dense2')(x)
    if self.last_bn:
      x = bn('bn2', False)(x, use_running_average=not train)
    return x


def build_predictor(model_cfg: ml_collections.ConfigDict, hidden_dim: int, *,
                    last_bn: bool, use_bias: bool) -> Predictor:
  """A predictor from z (config.model.proj_dim wide) back to proj_dim units;
  hidden_dim 0 = the projection head's hidden width (proj_hidden_dim, or the
  encoder's h width when that is 0), as BYOL and MoCo v3 size both MLPs alike."""
  if not hidden_dim:
    hidden_dim = int(model_cfg.proj_hidden_dim) or _encoder_width(model_cfg)
  return Predictor(hidden_dim=int(hidden_dim), out_dim=int(model_cfg.proj_dim),
                   last_bn=last_bn, use_bias=use_bias,
                   dtype=encoders.compute_dtype(model_cfg),
                   bn_momentum=model_cfg.bn_momentum, bn_epsilon=model_cfg.bn_epsilon)


def _encoder_width(model_cfg: ml_collections.ConfigDict) -> int:
  from contrastive_jax import models  # pylint: disable=g-import-not-at-top
  try:
    return models.encoder_width(model_cfg)
  except ValueError as e:
    raise ValueError('The predictor hidden width defaults to the projection head\'s, which '
                     'is the encoder\'s h width here; that width depends on the input size: '
                     'set config.model.proj_hidden_dim or the method\'s '
                     'predictor_hidden_dim.') from e


# --- A method with a momentum network (and optionally a queue) -----------------------

class MomentumMethod(Method):
  """A method whose extra state is its momentum network and, when
  `queue_size()` > 0, a queue of keys:

    extra = {'params': ..., 'batch_stats': ...,        # the momentum network
             'queue': {'keys': [size, proj_dim], 'ptr': int32}}   # optional

  (`export.load_encoder(workdir, network='momentum')` reads extra['params'] and
  extra['batch_stats']). Its config section has `momentum` (m_base) and
  `momentum_schedule` ('constant' | 'cosine'). A subclass computes what it needs
  of the momentum network in `targets` and, with a queue, says which of those
  targets join it in `queue_keys`.
  """

  def queue_size(self) -> int:
    return 0

  def queue_keys(self, targets: Any) -> jax.Array:
    """The step's keys that join the queue: [N, proj_dim], L2-normalised."""
    raise NotImplementedError

  def validate(self) -> None:
    validate_momentum(self.cfg, self.name)

  def momentum(self, step: Any, total_steps: int) -> jax.Array:
    return momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_schedule)

  def init_extra(self, params: Any, batch_stats: Any, *, global_batch_size: int) -> Any:
    del global_batch_size
    extra: dict[str, Any] = dict(init_network(params, batch_stats))
    if self.queue_size():
      extra['queue'] = init_queue(self.queue_size(), int(self.config.model.proj_dim),
                                  seed=self.config.seed)
    return extra

  def update_extra(self, ctx: StepContext) -> Any:
    m = self.momentum(ctx.step, ctx.total_steps)
    extra = dict(ctx.extra, **update_network(ctx.extra, ctx.params, ctx.batch_stats, m))
    if 'queue' in extra:
      extra['queue'] = enqueue(extra['queue'], self.queue_keys(ctx.targets))
    return extra
