"""Skip-gram / CBOW with negative sampling: the loss and the jitted update.

SGNS (Mikolov et al. 2013) is a contrastive loss with sampled negatives: for an
input word vector u (skip-gram: one context word; CBOW: the mean of the
context words' vectors), its true output word o and K noise words n_k drawn
from the unigram distribution raised to ns_exponent,

  loss = -log sigma(u . v_o) - sum_k log sigma(-u . v_{n_k}).

The update differentiates the loss with respect to the gathered rows only
(u and the 1 + K output rows of each example), takes plain SGD steps with
the linearly decaying rate, and scatter-adds them into the two tables, which
are donated: no V x D gradient and no optimiser state exist. Examples of one
step update the tables together (summed, rows repeated within a step add up),
where the C word2vec and gensim update after every pair (Hogwild); the
batch's gradient is what they would apply if no row occurred twice in it.
With `substeps` S > 1 a step's examples are S consecutive blocks (pairs.py
lays out one block per sub-chunk of the step's words) updated in turn, each
at the tables the one before left: S smaller SGD steps, closer to the
sequential algorithm, for the cost of one dispatch.
As there, a noise word equal to the example's output word is skipped, and
CBOW adds the error of the mean to every context word undivided (cbow_mean=1).
The tables are replicated over the devices and the examples split over them;
the negatives come from the step's key (threefry, partitionable), so 1 and
8 devices draw the same ones. The step's examples come from the batch's
kept words by pairs.expand, in the jitted step. On the CPU with one device
everything after that (the uniforms, drawn as jax.random.uniform draws them,
and the noise words included) runs as one fused FFI call
(kernels/sgns_update.py), which computes the same function faster than
XLA:CPU's row gathers and scatters.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from contrastive_jax import parallel
from contrastive_jax.kernels import sgns_update as sgns_kernel
from contrastive_jax.word2vec import pairs


def sgns_loss(u: jax.Array, v: jax.Array, weight: jax.Array) -> jax.Array:
  """Summed SGNS loss. u: [P, D] inputs; v: [P, 1 + K, D] output rows (the true
  word first, then K noise words); weight: [P, 1 + K] 0/1 (padding, skipped noise)."""
  logits = jnp.einsum('pd,pkd->pk', u, v)
  sign = jnp.concatenate([jnp.ones((1,), logits.dtype), -jnp.ones((v.shape[1] - 1,), logits.dtype)])
  return -jnp.sum(weight * jax.nn.log_sigmoid(sign * logits))


def learning_rate(step: jax.Array, total_steps: int, alpha: float, min_alpha: float) -> jax.Array:
  """Linear decay from alpha to min_alpha over the run (gensim: by words processed)."""
  frac = jnp.minimum(step.astype(jnp.float32) / max(total_steps, 1), 1.0)
  return alpha - (alpha - min_alpha) * frac


def sample_negatives(key: jax.Array, cum: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Word ids with P(i) = cum[i] - cum[i - 1] (cum: the noise distribution's
  cumulative sum, float32 [V], last entry 1), by inverse CDF: the first index
  with cum[index] > u for u = jax.random.uniform(key, shape) (the fused kernel
  draws the same u and the same way)."""
  u = jax.random.uniform(key, shape, jnp.float32)
  return jnp.minimum(jnp.searchsorted(cum, u, side='right'), cum.shape[0] - 1).astype(jnp.int32)


def init_tables(num_words: int, dim: int, seed: int, mesh: Mesh) -> dict[str, jax.Array]:
  """Input vectors U(-0.5, 0.5) / dim, output vectors 0 (the C word2vec and gensim)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  w_in = (jax.random.uniform(key, (num_words, dim), jnp.float32) - 0.5) / dim
  return parallel.replicate({'w_in': np.asarray(w_in),
                             'w_out': np.zeros((num_words, dim), np.float32),
                             'step': np.zeros((), np.int32)}, mesh)


def row_scale(indices: jax.Array, weight: jax.Array, num_rows: int, cap: float) -> jax.Array:
  """Per-entry factor min(1, cap / n) where n counts the (weighted) entries of
  `indices` that hit the same row: a row updated more than `cap` times in a
  step moves as if by `cap` of its updates (cap <= 0: 1 everywhere, the sum)."""
  if cap <= 0:
    return jnp.ones(indices.shape, jnp.float32)
  counts = jnp.zeros((num_rows,), jnp.float32).at[indices].add(weight, mode='promise_in_bounds')
  return jnp.minimum(1.0, cap / jnp.maximum(counts[indices], 1.0))


KERNELS = ('auto', 'xla', 'cpu')


def use_cpu_kernel(kernel: str, skip_nonfinite: bool = False) -> bool:
  """Whether make_update(kernel=...) runs the fused CPU kernel
  (kernels/sgns_update.py): 'cpu' always (an error saying why when it cannot
  be built), 'auto' on the CPU backend with one device when it builds and no
  step may need undoing (nan_policy='skip_step' keeps the XLA update, which
  can drop a step's result; the kernel writes the tables in place), 'xla'
  never."""
  if kernel not in KERNELS:
    raise ValueError(f'config.update_kernel={kernel!r}; choose one of {KERNELS}.')
  if kernel == 'xla':
    return False
  if kernel == 'cpu':
    if not sgns_kernel.available():
      raise RuntimeError("config.update_kernel='cpu' but the fused kernel cannot be built: "
                         f"{sgns_kernel.unavailable_reason()}. Use 'auto' or 'xla'.")
    if skip_nonfinite:
      raise ValueError("config.update_kernel='cpu' updates the tables in place and cannot "
                       "skip a step: use nan_policy='stop' or update_kernel='xla'.")
    return True
  return (jax.default_backend() == 'cpu' and jax.device_count() == 1 and not skip_nonfinite
          and sgns_kernel.available())


def make_update(*, sg: bool, negative: int, noise: np.ndarray, alpha: float, min_alpha: float,
                total_steps: int, seed: int, mesh: Mesh, skip_nonfinite: bool = False,
                row_update_cap: float = 0.0, kernel: str = 'auto', threads: int = 0,
                window: int = 0, substeps: int = 1) -> Callable[[Any, dict], tuple[Any, dict]]:
  """The jitted `state, metrics = update(state, batch)` (state: init_tables' dict,
  donated; batch split over the mesh's 'data' axis: a PairStream batch, which
  pairs.expand turns into the examples with `window`, or the examples
  themselves, as pairs.expand returns them).
  row_update_cap: see row_scale (the tables' rows of frequent words are hit
  hundreds of times in one step, where Hogwild SGD would see each update
  before the next). kernel: see use_cpu_kernel; threads: the fused kernel's
  (0: the cores this process may use). substeps: the examples as that many
  consecutive blocks of equal size, applied one after the other with the
  step's learning rate (the module docstring; PairStream(substeps=...)
  builds its batches for it)."""
  cum_np = np.cumsum(noise).astype(np.float32)
  fused = use_cpu_kernel(kernel, skip_nonfinite)
  cum = parallel.replicate(cum_np, mesh)
  cum_index = parallel.replicate(sgns_kernel.noise_index(cum_np) if fused else np.zeros(1, np.int32),
                                 mesh)
  base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)

  def update(state, batch, cum, cum_index):
    w_in, w_out, t = state['w_in'], state['w_out'], state['step']
    lr = learning_rate(t, total_steps, alpha, min_alpha)
    if 'ids' in batch:
      if window < 1:
        raise ValueError(f'make_update(window={window}) got a PairStream batch: pass the '
                         "stream's window (config.window) to expand its examples.")
      words = (batch['ids'] >= 0).sum()
      batch = pairs.expand(batch['ids'], batch['left'], batch['right'], window=window, sg=sg,
                           xp=jnp)
    else:
      words = jnp.zeros((), jnp.int32)
    out, mask = batch['out'], batch['mask']
    key = jax.random.fold_in(base_key, t)
    if out.shape[0] % substeps:
      raise ValueError(f'{out.shape[0]} examples do not split into substeps={substeps} equal '
                       'blocks: build the batches with PairStream(substeps=...).')
    if sg:
      ctx, ctx_mask = batch['inp'][:, None], mask[:, None]
    else:   # a masked example's context counts for nothing (row_scale's counts included)
      ctx, ctx_mask = batch['ctx'], batch['ctx_mask'] * mask[:, None]
    if fused:   # the kernel draws jax.random.uniform(key, (P, negative)) itself
      new_in, new_out, loss = sgns_kernel.sgns_update(
          w_in, w_out, ctx, ctx_mask, out, mask, key, cum, cum_index, lr, cap=row_update_cap,
          threads=threads, negative=negative, substeps=substeps)
    else:
      neg = sample_negatives(key, cum, (out.shape[0], negative))
      targets = jnp.concatenate([out[:, None], neg], axis=1)
      weight = mask[:, None] * jnp.concatenate(
          [jnp.ones_like(mask)[:, None], (neg != out[:, None]).astype(mask.dtype)], axis=1)
      blocks = lambda x: x.reshape(substeps, x.shape[0] // substeps, *x.shape[1:])

      def substep(tables, block):
        new_in, new_out, loss = _xla_update(*tables, *block, lr, sg=sg, cap=row_update_cap)
        return (new_in, new_out), loss

      (new_in, new_out), losses = jax.lax.scan(
          substep, (w_in, w_out), tuple(map(blocks, (ctx, ctx_mask, targets, weight))))
      loss = losses.sum()
    examples = jnp.maximum(mask.sum(), 1.0)
    nonfinite = ~jnp.isfinite(loss)
    if skip_nonfinite:
      new_in = jnp.where(nonfinite, w_in, new_in)
      new_out = jnp.where(nonfinite, w_out, new_out)
    metrics = {'loss': loss / examples, 'lr': lr, 'examples': mask.sum(),
               'effective_words': words, 'nonfinite': nonfinite.astype(jnp.float32)}
    return {'w_in': new_in, 'w_out': new_out, 'step': t + 1}, metrics

  rep = parallel.replicated(mesh)
  jitted = jax.jit(update, donate_argnums=0,
                   out_shardings=({'w_in': rep, 'w_out': rep, 'step': rep}, rep))
  return lambda state, batch: jitted(state, batch, cum, cum_index)


def _xla_update(w_in, w_out, ctx, ctx_mask, targets, weight, lr, *, sg: bool, cap: float):
  """The step in XLA ops (any backend, any number of devices): gradients with
  respect to the gathered rows, scatter-added. Returns (w_in, w_out, loss)."""
  num_rows = w_in.shape[0]
  v = w_out.at[targets].get(mode='promise_in_bounds')
  if sg:
    inp, mask = ctx[:, 0], ctx_mask[:, 0]
    u = w_in.at[inp].get(mode='promise_in_bounds')
    loss, (g_u, g_v) = jax.value_and_grad(sgns_loss, argnums=(0, 1))(u, v, weight)
    scale_in = row_scale(inp, mask, num_rows, cap)
    new_in = w_in.at[inp].add((-lr * scale_in)[:, None] * g_u, mode='promise_in_bounds')
  else:
    count = jnp.maximum(ctx_mask.sum(1, keepdims=True), 1.0)
    u = jnp.einsum('pc,pcd->pd', ctx_mask, w_in.at[ctx].get(mode='promise_in_bounds')) / count
    loss, (g_u, g_v) = jax.value_and_grad(sgns_loss, argnums=(0, 1))(u, v, weight)
    scale_in = row_scale(ctx, ctx_mask, num_rows, cap) * ctx_mask
    new_in = w_in.at[ctx].add((-lr * scale_in)[..., None] * g_u[:, None, :],
                              mode='promise_in_bounds')
  scale_out = row_scale(targets, weight, num_rows, cap)
  new_out = w_out.at[targets].add((-lr * scale_out)[..., None] * g_v, mode='promise_in_bounds')
  return new_in, new_out, loss
