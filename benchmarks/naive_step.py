"""The naive SimCLR step: the baseline that throughput.py times the project step against.

It is the same work as contrastive_jax's pretraining step, written the obvious
way with stock Flax and optax:

  - a plain Flax linen ResNet (nn.Conv with 'SAME' padding, nn.BatchNorm), the
    same depth, width and stem as the project's network for the config;
  - a 2-layer projection head (Dense, BatchNorm, ReLU, Dense, BatchNorm);
  - NT-Xent on the full [2N, 2N] logits matrix;
  - optax.lars with no masks (weight decay and adaptation on every parameter);
  - one jax.jit on one device: no sharding, no online probe, stock XLA options.

Its input is the project's own augmentation (augment.pretrain_views) unless
`augment='none'` (the image and its horizontal flip as the two views), so by
default a ratio of step times compares everything but the augmentation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from contrastive_jax import augment


class NaiveBlock(nn.Module):
  """A ResNet block (basic or bottleneck), zero-initialised last BatchNorm scale."""
  filters: int
  strides: int
  bottleneck: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    s = (self.strides, self.strides)
    if self.bottleneck:
      out = 4 * self.filters
      y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
      y = nn.relu(norm()(conv(self.filters, (3, 3), s)(y)))
      y = norm(scale_init=nn.initializers.zeros)(conv(out, (1, 1))(y))
    else:
      out = self.filters
      y = nn.relu(norm()(conv(self.filters, (3, 3), s)(x)))
      y = norm(scale_init=nn.initializers.zeros)(conv(self.filters, (3, 3))(y))
    if x.shape != y.shape:
      x = norm()(conv(out, (1, 1), s)(x))
    return nn.relu(x + y)


class NaiveSimCLR(nn.Module):
  """ResNet encoder + projection head; returns the float32 projections."""
  stage_sizes: Sequence[int]
  bottleneck: bool
  width: int
  cifar_stem: bool
  dtype: Any = jnp.float32
  proj_dim: int = 128

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    else:
      x = nn.Conv(self.width, (7, 7), (2, 2), use_bias=False, dtype=self.dtype)(x)
      x = nn.max_pool(nn.relu(norm()(x)), (3, 3), (2, 2), padding='SAME')
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = NaiveBlock(self.width * 2 ** i, 2 if i > 0 and j == 0 else 1,
                       self.bottleneck, self.dtype)(x, train)
    h = jnp.mean(x, axis=(1, 2))
    z = nn.relu(norm()(nn.Dense(h.shape[-1], use_bias=False, dtype=self.dtype)(h)))
    z = norm()(nn.Dense(self.proj_dim, use_bias=False, dtype=self.dtype)(z))
    return z.astype(jnp.float32)


def naive_nt_xent(z1, z2, temperature: float):
  """NT-Xent of the pairs (z1[i], z2[i]) over the full [2N, 2N] logits."""
  z = jnp.concatenate([z1, z2], 0)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  n = z1.shape[0]
  logits = z @ z.T / temperature - 1e9 * jnp.eye(2 * n)
  positives = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(2 * n), positives])


def make_naive_step(config, dtype: Any, out_size: int, channels: int,
                    augment_input: str = 'project') -> tuple[Callable[..., Any], Any]:
  """(jitted step, initial state) of the naive step for a pretraining config.

  The network's shape comes from config.model (depth or stage_sizes, block,
  base_width, stem, proj_dim); the LARS rate is 0.3 x config.batch_size / 256;
  the loss uses config.simclr.temperature. `augment_input` is 'project' (the two views
  of augment.pretrain_views under config.augment and config.seed) or 'none'.
  step(state, batch) -> (state, loss) takes the batch dict of the project step
  ('image' uint8 [N, H, W, C], 'index') and donates its state.
  """
  from contrastive_jax.models import resolve_architecture  # pylint: disable=g-import-not-at-top
  stage_sizes, block = resolve_architecture(config.model.resnet)
  model = NaiveSimCLR(stage_sizes=stage_sizes, bottleneck=block == 'bottleneck',
                      width=config.model.resnet.base_width,
                      cifar_stem=config.model.resnet.stem == 'cifar',
                      dtype=dtype, proj_dim=config.model.proj_dim)
  tx = optax.lars(0.3 * config.batch_size / 256, weight_decay=1e-6, momentum=0.9)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                         jnp.zeros((2, out_size, out_size, channels)),
                                         train=False))()
  state = (jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
           tx.init(variables['params']))

  def step(state, batch):
    step_, params, batch_stats, opt_state = state
    if augment_input == 'project':
      views = augment.pretrain_views(config.seed, step_, batch['index'], batch['image'],
                                     config.augment, out_size)
      x = jnp.concatenate([views[0], views[1]], 0)
    else:
      x = augment.to_float(batch['image'])
      if x.shape[1] != out_size:
        x = jax.image.resize(x, (x.shape[0], out_size, out_size, x.shape[-1]), 'bilinear')
      x = jnp.concatenate([x, x[:, :, ::-1]], 0)  # 2 "views": identity and a flip

    def loss_fn(params):
      z, mutated = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                               train=True, mutable=['batch_stats'])
      z1, z2 = jnp.split(z, 2)
      return naive_nt_xent(z1, z2, config.simclr.temperature), mutated['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (step_ + 1, params, batch_stats, opt_state), loss

  return jax.jit(step, donate_argnums=0), state
