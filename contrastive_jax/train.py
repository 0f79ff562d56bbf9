"""The jitted steps every binary shares: state, pretraining step, feature extraction.

Layout over the mesh: parameters, BN statistics and optimizer state are
replicated; the batch is split over the 'data' axis. BatchNorm therefore
normalises over the global batch (both views of every image on every device:
SimCLR's global BN), and the contrastive loss runs under `jax.shard_map` so its
all-gather of projections is explicit. Augmentation keys come from (seed, step,
example index, view), so a run is the same on 1 device, 8 devices or 2 hosts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec as P

from contrastive_jax import augment, losses, parallel

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
               image_shape: tuple[int, int, int], mesh: Mesh) -> TrainState:
  """Initialises the state directly on the mesh, replicated."""
  def init():
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2,) + image_shape),
                           train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(params))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _contrastive_loss(z: jax.Array, labels: jax.Array, config: ml_collections.ConfigDict,
                      mesh: Mesh) -> tuple[jax.Array, Metrics]:
  """z: [N, V, d] sharded over 'data'. The loss all-gathers over the mesh."""
  axis = parallel.DATA_AXIS
  if config.mode == 'simclr':
    fn = lambda z_, _: losses.nt_xent(z_[:, 0], z_[:, 1], temperature=config.temperature,
                                      axis_name=axis, block_size=config.loss_block_size)
  else:
    fn = lambda z_, y_: losses.supcon(z_, y_, temperature=config.temperature,
                                      base_temperature=config.base_temperature or None,
                                      axis_name=axis)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=P())
  return sharded(z, labels)


def make_pretrain_step(model: nn.Module, tx: optax.GradientTransformation,
                       schedule: optax.Schedule, config: ml_collections.ConfigDict,
                       mesh: Mesh, out_size: int) -> Callable[[TrainState, Batch],
                                                              tuple[TrainState, Metrics]]:
  """Returns a jitted `step(state, batch) -> (state, metrics)`; the state is donated.

  `batch` holds uint8 'image' [N, H, W, C], int 'label' [N] (-1 = unknown;
  used by SupCon and the online probe only), int 'index' [N], the global
  example id that seeds the example's augmentation, and for letterboxed
  streams int 'extent' [N, 2] (the crop is drawn inside it).
  """
  data = parallel.data_sharding(mesh)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    views = batch_views(config, out_size, state.step, batch)          # [2, N, h, w, c]
    n = views.shape[1]
    # Example-major order keeps both views of an example on its device.
    x = jnp.swapaxes(views, 0, 1).reshape((2 * n,) + views.shape[2:])
    x = jax.lax.with_sharding_constraint(x, data)
    labels = batch['label'].astype(jnp.int32)

    def loss_fn(params):
      out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                 train=True, mutable=['batch_stats'])
      z = out['z'].reshape(n, 2, -1)
      loss, metrics = _contrastive_loss(z, labels, config, mesh)
      total = loss
      if 'probe_logits' in out:
        # stop_gradient(h) inside the model: this loss trains the probe only.
        probe_loss, probe_acc = losses.softmax_cross_entropy(
            out['probe_logits'], jnp.repeat(labels, 2))
        total = total + probe_loss
        metrics = dict(metrics, probe_loss=probe_loss, probe_acc=probe_acc)
      return total, (mutated['batch_stats'], dict(metrics, loss=loss))

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                      opt_state=opt_state), metrics

  return jax.jit(step, in_shardings=(parallel.replicated(mesh), data),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=0)


def batch_views(config: ml_collections.ConfigDict, out_size: int, step: jax.Array | int,
                batch: Batch) -> jax.Array:
  """The two augmented views [2, N, h, w, c] of a batch at `step`; crops of
  letterboxed images stay inside batch['extent'] when the batch has one."""
  return augment.pretrain_views(config.seed, step, batch['index'], batch['image'],
                                config.augment, out_size, extents=batch.get('extent'))


def make_view_fn(config: ml_collections.ConfigDict, out_size: int) -> Callable[[jax.Array, Batch], jax.Array]:
  """Jitted (step, batch) -> batch_views, for summaries."""
  return jax.jit(functools.partial(batch_views, config, out_size))


def make_predict_fn(model: nn.Module, mesh: Mesh, out_size: int,
                    crop_fraction: float = 0.875) -> Callable[[Any, jax.Array], dict]:
  """Jitted (variables, uint8 images) -> model outputs in eval mode.

  Images get the eval preprocessing (centre crop, resize to `out_size`).
  """
  data = parallel.data_sharding(mesh)

  @functools.partial(jax.jit, in_shardings=(parallel.replicated(mesh), data),
                     out_shardings=data)
  def predict(variables, images):
    x = augment.eval_preprocess(images, out_size, crop_fraction)
    out = model.apply(variables, x, train=False)
    return {k: v for k, v in out.items() if k != 'proj'} | {
        f'proj_{i}': p for i, p in enumerate(out['proj'])}

  return predict
