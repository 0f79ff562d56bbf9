"""The jitted steps every binary shares: state, pretraining step, prediction.

Layout over the mesh: parameters, BN statistics, optimizer state and the
method's extra state are replicated; the batch is split over the 'data' axis.
BatchNorm therefore normalises over the global batch (every view of every
example on every device: SimCLR's global BN), and the method's loss runs under
`jax.shard_map` so its all-gather of projections is explicit. Augmentation
keys come from (seed, step, example index, view), so a run is the same on 1
device, 8 devices or 2 hosts.

Nothing here names a method or a modality: the run's `methods.Method` gives
the views count, the loss and the extra state; its `modalities.Modality` the
views, the dummy input and the eval preprocessing.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec as P

from contrastive_jax import losses, parallel
from contrastive_jax.methods import Method, StepContext
from contrastive_jax.modalities import Modality

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any = struct.field(default_factory=dict)   # the method's (EMA, queue, ...)


def init_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
               dummy_input: jax.Array, mesh: Mesh,
               init_extra: Callable[[Any, Any], Any] = lambda params, stats: {}
               ) -> TrainState:
  """Initialises the state directly on the mesh, replicated."""
  def init():
    variables = model.init(jax.random.PRNGKey(seed), dummy_input, train=False)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params),
                      extra=init_extra(params, batch_stats))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def with_params(state: TrainState, params: Any, mesh: Mesh) -> TrainState:
  """`state` with new parameter values (same shapes), replicated on the mesh;
  the optimizer state is kept (it is still the fresh one: values, not shapes,
  changed)."""
  if params is state.params:
    return state
  return state.replace(params=jax.device_put(params, parallel.replicated(mesh)))


def guard_nonfinite(old: TrainState, new: TrainState, metrics: Metrics,
                    nan_policy: str) -> tuple[TrainState, Metrics]:
  """Adds metrics['nonfinite'] (1.0 when the loss, the gradient norm or the new
  parameters' norm is NaN or infinite); with nan_policy='skip_step' such a
  step keeps `old` (the batch is dropped) and only the step count advances.
  With 'stop' the loop stops the run at that step (loop.run_steps)."""
  finite = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
            & jnp.isfinite(metrics['param_norm']))
  metrics = dict(metrics, nonfinite=(~finite).astype(jnp.float32))
  if nan_policy == 'skip_step':
    kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new.replace(step=old.step), old)
    new = kept.replace(step=new.step)
  return new, metrics


def example_major(views: jax.Array) -> jax.Array:
  """[V, N, ...] -> [N * V, ...] with the views of an example side by side, so
  they stay on the example's device."""
  v, n = views.shape[:2]
  return jnp.swapaxes(views, 0, 1).reshape((n * v,) + views.shape[2:])


def make_pretrain_step(model: nn.Module, tx: optax.GradientTransformation,
                       schedule: optax.Schedule, method: Method, modality: Modality,
                       mesh: Mesh, total_steps: int = 0, nan_policy: str = 'stop'
                       ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns a jitted `step(state, batch) -> (state, metrics)`; the state is donated.

  `batch` holds the modality's raw inputs (batch[modality.input_key]), int
  'label' [N] (-1 = unknown; used by label-using methods and the online probe
  only) and int 'index' [N], the global example id that seeds its views.
  """
  data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
  axis = parallel.DATA_AXIS
  num_views = method.num_views

  def sharded_loss(outputs, labels, targets, extra):
    fn = lambda z_, y_, t_, e_: method.loss(z_, y_, t_, e_, axis_name=axis)
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P()),
                         out_specs=P())(outputs, labels, targets, extra)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    views = modality.train_views(state.step, batch, num_views)       # [V, N, ...]
    n = views.shape[1]
    x = jax.lax.with_sharding_constraint(example_major(views), data)
    labels = batch['label'].astype(jnp.int32)
    rngs = modality.rngs(state.step)
    apply = lambda variables, x_: model.apply(variables, x_, train=True, rngs=rngs,
                                              mutable=['batch_stats'])[0]
    ctx = StepContext(apply=apply, x=x, params=state.params, batch_stats=state.batch_stats,
                      extra=state.extra, step=state.step, total_steps=total_steps)
    targets = jax.lax.stop_gradient(method.targets(ctx))

    def loss_fn(params):
      out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                 train=True, rngs=rngs, mutable=['batch_stats'])
      per_view = {k: out[k].reshape((n, num_views) + out[k].shape[1:])
                  for k in ('z', 'h', 'p') if k in out}
      loss, metrics = sharded_loss(per_view, labels, targets, state.extra)
      total = loss
      if 'probe_logits' in out:
        # stop_gradient(h) inside the model: this loss trains the probe only.
        probe_loss, probe_acc = losses.softmax_cross_entropy(
            out['probe_logits'], jnp.repeat(labels, num_views))
        total = total + probe_loss
        metrics = dict(metrics, probe_loss=probe_loss, probe_acc=probe_acc)
      return total, (mutated['batch_stats'], out, dict(metrics, loss=loss))

    grads, (batch_stats, out, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = method.update_extra(StepContext(
        apply=apply, x=x, params=params, batch_stats=batch_stats, extra=state.extra,
        step=state.step, total_steps=total_steps,
        outputs=jax.lax.stop_gradient(out), targets=targets))
    metrics.update(learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return guard_nonfinite(state, TrainState(step=state.step + 1, params=params,
                                             batch_stats=batch_stats, opt_state=opt_state,
                                             extra=extra), metrics, nan_policy)

  return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep),
                 donate_argnums=0)


def make_view_fn(modality: Modality, num_views: int) -> Callable[[Any, Batch], jax.Array]:
  """Jitted (step, batch) -> the views [V, N, ...] of a batch, for summaries."""
  return jax.jit(lambda step, batch: modality.train_views(step, batch, num_views))


def make_predict_fn(model: nn.Module, mesh: Mesh, modality: Modality
                    ) -> Callable[[Any, jax.Array], dict]:
  """Jitted (variables, raw inputs) -> model outputs in eval mode, after the
  modality's eval preprocessing; 'proj' comes back as proj_0 (= h) .. proj_L."""
  data = parallel.data_sharding(mesh)

  @functools.partial(jax.jit, in_shardings=(parallel.replicated(mesh), data),
                     out_shardings=data)
  def predict(variables, raw):
    out = model.apply(variables, modality.eval_inputs(raw), train=False)
    return {k: v for k, v in out.items() if k != 'proj'} | {
        f'proj_{i}': p for i, p in enumerate(out['proj'])}

  return predict
